"""``python -m gen.demo --config configs/default.toml`` (what ``make demo`` runs).

Takes a config as far as Tandem goes, one step after another:

1. ``verilog``   elaborate the Accelerator and write ``build/NAME/top.v`` (gen.build)
2. ``simulate``  run a random int8 matmul on the simulated RTL (the fastest backend,
                 or ``--backend``/``TANDEM_SIM``), check it against torch exactly, and
                 print cycles and array utilization (and the cycle model's count), and the
                 board time: on chip at the clock and over the UART host link
3. ``generate``  load the shipped quantized Transformer (``firmware/data/``) onto the
                 simulated accelerator once, generate a continuation of a prompt on chip,
                 check every position's logits against the integer reference, and print
                 the board's tokens/s on chip and with the link (``python -m
                 firmware.generate``); skipped for a config without the vector units
4. ``bitstream`` synthesis, place and route and the bitstream for the config's board
                 (gen.build), then its report: resources, Fmax, peak GOPS
                 (``--no-bitstream`` stops before it; a place and route that does not
                 finish within ``--pnr-minutes`` is reported, not an error)

More steps go in with :func:`add_step`; each is ``fn(ctx: DemoContext) -> None``, runs after the ones
before it, reads and writes ``ctx.outputs`` and raises :class:`DemoError` with one
line to stop the demo. A user error is one line on stderr and exit 2; a wrong
result is exit 1.
"""

import argparse
from dataclasses import dataclass, field
import pathlib
import sys
import time

import numpy as np

from .config import ConfigError, load_config, Config

__all__ = ["DemoContext", "DemoError", "STEPS", "add_step", "main"]

REPO = pathlib.Path(__file__).resolve().parent.parent


class DemoError(RuntimeError):
    """Stops the demo; the message is one line for the user, ``code`` the exit status
    (2: something the user can change; 1: a wrong result or a failed build)."""

    def __init__(self, message, code=2):
        super().__init__(message)
        self.code = code


@dataclass
class DemoContext:
    config: Config
    out: pathlib.Path                 # build/NAME: every step's outputs go here
    args: argparse.Namespace
    outputs: dict = field(default_factory=dict)   # step name -> whatever it produced


STEPS: list = []   # [(name, fn)] in order


def add_step(name: str, fn, *, after: str | None = None) -> None:
    """Register a demo step; at the end, or right after the step named ``after``."""
    if any(n == name for n, _ in STEPS):
        raise ValueError(f"demo step {name!r} already exists")
    index = len(STEPS)
    if after is not None:
        names = [n for n, _ in STEPS]
        if after not in names:
            raise ValueError(f"no demo step {after!r}; steps: {', '.join(names)}")
        index = names.index(after) + 1
    STEPS.insert(index, (name, fn))


def _say(step: str, message: str):
    print(f"[{step}] {message}", flush=True)


def step_verilog(ctx: DemoContext):
    # Through gen.build, so its stage keys stay in the manifest and the bitstream step
    # finds the later stages up to date.
    from .build import build, BuildError
    start = time.monotonic()
    try:
        path = build(ctx.config, ctx.out, stage="verilog").out / "top.v"
    except BuildError as e:
        raise DemoError(str(e), code=e.code) from None
    seconds = time.monotonic() - start
    ctx.outputs["verilog"] = path
    _say("verilog", f"{path} ({path.stat().st_size // 1024} KiB) in {seconds:.1f} s")


def step_simulate(ctx: DemoContext):
    import torch
    from firmware import Device, sim
    from firmware.cycles import cycle_report

    g = ctx.config.accelerator.geometry
    M, K, N = ctx.args.shape
    try:
        device = Device.simulated(ctx.config, ctx.args.backend)
    except sim.SimToolMissing as e:
        raise DemoError(str(e)) from None
    _say("simulate", f"{g.rows}x{g.cols} {g.dataflow.upper()} array, {g.input_width}-bit inputs, "
                     f"backend {device.backend_name}")
    rng = np.random.default_rng(ctx.args.seed)
    low, high = -(1 << (g.input_width - 1)), (1 << (g.input_width - 1)) - 1
    dtype = np.int8 if g.input_width <= 8 else np.int16
    a = rng.integers(low, high + 1, (M, K)).astype(dtype)
    b = rng.integers(low, high + 1, (K, N)).astype(dtype)
    start = time.monotonic()
    c = device.matmul(a, b)
    seconds = time.monotonic() - start
    golden = torch.matmul(torch.from_numpy(a.astype(np.int64)), torch.from_numpy(b.astype(np.int64)))
    golden = golden.to(torch.int32).numpy()   # int64 -> int32 wraps, as the accumulator does
    wrong = int((c != golden).sum())
    if wrong:
        raise DemoError(f"{wrong} of {c.size} results differ from torch; the RTL is wrong", code=1)
    report = cycle_report(device.program, g)
    macs = M * K * N
    cycles = device.cycles if device.cycles is not None else report.total_cycles
    util = macs / (cycles * g.rows * g.cols)
    util_compute = report.utilization(macs, g.rows, g.cols, compute_only=True)
    clock = ctx.config.target.clock_mhz
    _say("simulate", f"{M}x{K} @ {K}x{N} matches torch exactly ({c.size} int32 results, "
                     f"{seconds:.1f} s of simulation)")
    _say("simulate", f"{cycles} cycles end to end ({cycles / clock:.0f} us at {clock:g} MHz), "
                     f"cycle model {report.total_cycles}; compute phase {report.compute_cycles} "
                     f"cycles")
    _say("simulate", f"array utilization {util:.1%} end to end (the simulation feeds a byte "
                     f"a clock), {util_compute:.1%} in the compute phase")
    link = _link_seconds(ctx.config, len(device.program), device.program.reply_bytes)
    chip_s = cycles / (clock * 1e6)
    _say("simulate", f"board time: {chip_s * 1e3:.2f} ms on chip at {clock:g} MHz; "
                     f"{(chip_s + link['seconds']) * 1e3:.0f} ms with the host link, which "
                     f"carries the operands, the instructions and the int32 results "
                     f"({link['frames']} frames at {link['baud'] / 1e6:g} Mbaud, a turnaround "
                     f"each)")
    ctx.outputs["simulate"] = {"cycles": cycles, "utilization": util,
                               "compute_utilization": util_compute, "chip_s": chip_s,
                               "link_s": link["seconds"]}


def _link_seconds(config, in_bytes, out_bytes) -> dict:
    from boards import BOARDS
    from firmware.cycles import link_seconds
    baud = BOARDS[config.target.board].baud if config.target.board else 1_000_000
    t = link_seconds(in_bytes, out_bytes, baud=baud)
    return {"baud": baud, "seconds": t.seconds, "frames": t.frames}


def step_generate(ctx: DemoContext):
    """The shipped Transformer on the simulated accelerator: text, bit-exact check, tokens/s."""
    from firmware import generate, sim
    g = ctx.config.accelerator.geometry
    if not g.units or not g.program_words:
        _say("generate", "skipped: the config has no vector units or program memory "
                         "(a GEMM-only target)")
        return
    backend = ctx.args.backend or ("verilator" if _has_verilator(sim) else "icarus")
    if backend not in ("functional", "verilator", "icarus", "amaranth"):
        raise DemoError(f"--backend {backend!r} cannot run the Transformer here")
    argv = ["--config", ctx.config.source, "--prompt", ctx.args.prompt,
            "--tokens", str(ctx.args.tokens), "--check", "--backend", backend]
    _say("generate", "python -m firmware.generate " + " ".join(
        repr(a) if " " in a else a for a in argv))
    code = generate.main(argv)
    if code:
        raise DemoError("the Transformer on the simulated accelerator did not match its "
                        "integer reference", code=code)
    ctx.outputs["generate"] = True


def _has_verilator(sim) -> bool:
    try:
        sim.VerilatorBackend.check()
        return True
    except sim.SimToolMissing:
        return False


def step_bitstream(ctx: DemoContext):
    """Synthesis, place and route and the bitstream for the config's board, with its report."""
    import json
    from .build import build, BuildError
    if ctx.args.no_bitstream:
        _say("bitstream", "skipped (--no-bitstream)")
        return
    if ctx.config.target.board is None:
        _say("bitstream", "skipped: [target] names a device, not a board")
        return
    start = time.monotonic()
    limit_s = ctx.args.pnr_minutes * 60
    try:
        # A missed clock is a figure to report, not a reason to stop: the bitstream is
        # written and the miss is said (gen.build alone stops unless --allow-timing-fail).
        result = build(ctx.config, ctx.out, stage="bitstream", allow_timing_fail=True,
                       timeouts={"nextpnr": limit_s} if limit_s else None)
    except BuildError as e:
        if e.status != "timeout" or not limit_s or "nextpnr" not in str(e):
            raise DemoError(str(e), code=e.code) from None
        # Place and route that does not finish within the demo's limit is, like a missed
        # clock, where this design stands (the default: docs/fpga.md), not a broken demo;
        # the synthesis results and the build record stay in the output directory.
        _say("bitstream", f"NOT PRODUCED: place and route did not finish within "
                          f"{ctx.args.pnr_minutes:g} min ({e}); the synthesis results and "
                          f"record.json are in {ctx.out}; more time: --pnr-minutes M (0: gen.build's "
                          f"own limit)")
        return
    resources = json.loads((ctx.out / "resources.json").read_text())
    clock = ctx.config.target.clock_mhz
    peak_gops = 2 * ctx.config.accelerator.rows * ctx.config.accelerator.cols * \
        min(resources["fmax_mhz"], clock) / 1000
    _say("bitstream", f"{result.bitstream} for {ctx.config.target.board} "
                      f"({resources['device']}) in {time.monotonic() - start:.0f} s")
    missed = "" if resources["fmax_mhz"] >= clock else \
        " (MISSED: the bitstream will not run reliably at the clock; lower [target] clock_mhz)"
    _say("bitstream", f"Fmax {resources['fmax_mhz']:.1f} MHz for a {clock:g} MHz clock{missed}; "
                      f"peak {peak_gops:.2f} int8 GOPS at the clock; report "
                      f"{ctx.out / 'resources.json'}")
    ctx.outputs["bitstream"] = result.bitstream


add_step("verilog", step_verilog)
add_step("simulate", step_simulate)
add_step("generate", step_generate)
add_step("bitstream", step_bitstream)


def shape_type(limit: int = 4096):
    """An argparse type for ``M,K,N``, each from 1 to ``limit`` (the benches use it too)."""
    def shape(text):
        try:
            shape = tuple(int(x) for x in text.split(","))
            if len(shape) == 3 and all(1 <= x <= limit for x in shape):
                return shape
        except ValueError:
            pass
        raise argparse.ArgumentTypeError(f"must be M,K,N with each from 1 to {limit}, "
                                         f"not {text!r}")
    return shape


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gen.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default.toml", help="accelerator config (TOML)")
    parser.add_argument("--out", type=pathlib.Path, help="output directory (default: build/NAME)")
    parser.add_argument("--backend", help="simulation backend (default: TANDEM_SIM or the fastest)")
    parser.add_argument("--shape", type=shape_type(), default=(96, 200, 72), help="M,K,N of the matmul")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", default="ROMEO:", help="prompt of the generate step")
    parser.add_argument("--tokens", type=int, default=24, help="tokens the generate step makes")
    parser.add_argument("--no-bitstream", action="store_true",
                        help="stop after the simulation (the 8x8 default takes minutes to place and route)")
    parser.add_argument("--pnr-minutes", type=float, default=45.0,
                        help="the bitstream step's time limit for place and route, in minutes; "
                             "past it the demo says so and ends (0: gen.build's own limit)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.pnr_minutes < 0:
        print(f"error: --pnr-minutes must be 0 (no limit of the demo's own) or more, "
              f"not {args.pnr_minutes:g}", file=sys.stderr)
        return 2
    ctx = DemoContext(config, args.out or REPO / "build" / config.name, args)
    ctx.out.mkdir(parents=True, exist_ok=True)
    for name, fn in STEPS:
        try:
            fn(ctx)
        except DemoError as e:
            print(f"error: [{name}] {e}", file=sys.stderr)
            return e.code
        except ValueError as e:  # bad arguments a user gave (backend name, shapes)
            print(f"error: [{name}] {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
