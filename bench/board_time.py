"""Board time of a GEMM and a GEMV: operands resident on chip, or streamed over the link
(``python -m bench.board_time``).

Three ways a board can run C = A @ B, each timed from the cycle model (equal to the RTL
to the cycle, ``tests/firmware/test_cycles.py``) at the config's clock and at any
``--mhz`` given (e.g. the placement estimate of the design, ``docs/fpga.md``):

* **resident**: the operands already in the scratchpad and the program in program
  memory (``bench/resident.py``'s program: K-loop MATMULs, a ``VEC REQ`` to int8 per
  batch of results, HALT); one RUN word and one token cross the link. Time on chip only.
* **streamed, on chip**: the host program of ``firmware.compiler.compile_matmul``
  (operands, instruction words and int32 results through the byte stream), with the
  stream never waiting: one byte a clock in and out. A bound, not a board: no UART
  delivers a byte a clock.
* **streamed, with the link**: the same program over the board's UART at its baud rate,
  framed, with a 1 ms turnaround a frame (``firmware.cycles.link_seconds``), plus the
  on-chip time. This is what a board does today with a matrix it has not seen.

A 256x256x256 GEMM's operands (128 KiB) do not fit the default's 96 KiB scratchpad;
``--scratchpad-kib`` (checked against the device's block RAM like a config) gives the
resident case room: 160 KiB is the most the ECP5-85F holds beside the default's other
memories (``bench/memory_capacity.py``).
"""

import argparse
import sys

import numpy as np

from boards import BOARDS
from gen.config import ConfigError, parse_config, read_toml
from firmware.compiler import compile_matmul
from firmware.cycles import cycle_report, link_seconds, run_cycles

from gen.demo import shape_type

from .resident import program as resident_program, scratchpad_rows

SHAPES = [(1, 256, 256), (256, 256, 256)]


def _config(path, scratchpad_kib=None):
    document = read_toml(path)
    if scratchpad_kib is not None:
        document.setdefault("accelerator", {})["scratchpad_kib"] = scratchpad_kib
    return parse_config(document, name=str(path))


def resident_cycles(g, M, K, N):
    """Cycles of the resident RUN, or None when the operands or program do not fit."""
    if scratchpad_rows(g, M, K, N) > g.sp_depth:
        return None
    words = resident_program(g, M, K, N)
    if len(words) > g.program_words:
        return None
    return run_cycles(words, 0, 1, 0, g)


def streamed(g, M, K, N, baud, seed=0):
    """(cycles a byte a clock, link seconds, frames) of the host program for random operands."""
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, (M, K), dtype=np.int64)
    b = rng.integers(-128, 128, (K, N), dtype=np.int64)
    prog = compile_matmul(g, a, b)
    link = link_seconds(len(prog.to_bytes()), prog.reply_bytes, baud=baud)
    return cycle_report(prog, g).total_cycles, link.seconds, link.frames


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.board_time",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default.toml")
    parser.add_argument("--shape", type=shape_type(65535), action="append",
                        help="M,K,N (repeatable; default 1,256,256 and 256,256,256)")
    parser.add_argument("--scratchpad-kib", type=int, default=160,
                        help="scratchpad of the resident case (default 160; 0: the config's)")
    parser.add_argument("--mhz", type=float, action="append", default=[],
                        help="also at this clock (repeatable)")
    args = parser.parse_args(argv)
    try:
        config = _config(args.config)
        big = _config(args.config, args.scratchpad_kib or None)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    g, g_big = config.accelerator.geometry, big.accelerator.geometry
    if g.dataflow != "ws":
        print("error: the resident program is written for WS configs; use a WS config",
              file=sys.stderr)
        return 2
    baud = BOARDS[config.target.board].baud if config.target.board else 1_000_000
    clocks = [config.target.clock_mhz, *args.mhz]
    print(f"config {args.config}: {g.rows}x{g.cols}, resident case with a "
          f"{g_big.sp_depth * g.sp_row_bytes // 1024} KiB scratchpad; link {baud / 1e6:g} Mbaud")
    for M, K, N in args.shape or SHAPES:
        if K % g.rows or N % g.cols:
            print(f"error: --shape {M},{K},{N}: K and N must be multiples of {g.rows} and "
                  f"{g.cols}", file=sys.stderr)
            return 2
        macs = M * K * N
        res = resident_cycles(g_big, M, K, N)
        cyc, link_s, frames = streamed(g, M, K, N, baud)
        print(f"{M}x{K}x{N}:")
        for mhz in clocks:
            if res is None:
                resident = "operands or program do not fit"
            else:
                resident = (f"{res / mhz:,.1f} us ({res} cycles, {macs / (res * g.rows * g.cols):.1%}"
                            f" of the array)")
            on_chip = cyc / (mhz * 1e6)
            print(f"  at {mhz:g} MHz: resident {resident}; streamed {on_chip * 1e6:,.1f} us a byte "
                  f"a clock ({cyc} cycles), {(on_chip + link_s) * 1e3:,.1f} ms with the link "
                  f"({frames} frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
