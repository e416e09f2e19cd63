"""On-chip utilization of a GEMV and a prefill GEMM with resident operands
(``python -m bench.resident``).

What a board does when the model lives on it: the operands are already in the
scratchpad (WS layout: B as N / cols column blocks of K rows; A as K / rows
pieces of M rows, k lanes each), the program is in program memory, and one RUN
(P = 1, N = 0) executes it: for each batch of N tiles that the accumulator
holds, the MATMULs (K loops, ``firmware.compiler.k_loop``; ``--no-k-loop``
emits one word a K piece instead), then one ``VEC REQ`` that requantizes the
batch's results to int8 into the scratchpad (over B blocks already used; when
M > K, into rows of their own after A), then HALT. Counted: the whole RUN by the
cycle model (``firmware.cycles.run_cycles``, equal to the RTL's cycles by
``tests/firmware/test_cycles.py``): its 16-byte word and 2-byte token from the
host (21 cycles), every program fetch, weight
load, beat, drain and the requantization, up to HALT. Utilization = M·K·N /
(cycles · rows · cols).
"""

import argparse
import sys

from gen.config import ConfigError, parse_config, read_toml
from gen.demo import shape_type
from firmware.cycles import run_cycles
from rtl.isa import Instruction, Opcode, VecOp, Flags

SHAPES = [(1, 256, 256), (128, 256, 256)]


def scratchpad_rows(g, M, K, N) -> int:
    """Scratchpad rows :func:`program` uses: B's blocks, A's pieces and, when the int8
    results of a tile (M rows) would not fit over its B block (K rows), a results area."""
    tiles = N // g.cols
    return tiles * K + (K // g.rows) * M + (tiles * M if M > K else 0)


def program(g, M, K, N, *, k_loop=True):
    """Program words for C = A @ B with resident operands (see the module docstring)."""
    from firmware.compiler import k_loop as loops    # the K loop (absent before it existed)
    R, C = g.rows, g.cols
    tiles = N // C
    b_base, a_base = 0, tiles * K
    # The int8 results go over the B blocks already used, unless M > K, when they need rows
    # of their own after A (the same cycles: a VEC's time does not depend on its addresses).
    out_base = b_base if M <= K else a_base + (K // R) * M
    out_step = K if M <= K else M
    batch = max(1, g.acc_depth // M)
    words = []
    for first in range(0, tiles, batch):
        ts = range(first, min(tiles, first + batch))
        for slot, t in enumerate(ts):
            for ins in loops(g, a_row=a_base, a_step=M, b_row=b_base + t * K, acc_row=slot * M,
                             m=M, K=K):
                if k_loop:
                    words.append(ins)
                    continue
                for r in range(ins.tag + 1):
                    words.append(Instruction(
                        Opcode.MATMUL, flags=ins.flags | (Flags.ACCUMULATE if r else 0),
                        addr0=ins.addr0 + r * ins.mult, addr1=ins.addr1 + r * ins.count1,
                        addr2=ins.addr2, count0=M, count1=ins.count1))
        n = len(ts) * M * C
        words.append(Instruction(Opcode.VEC, tag=VecOp.REQ, addr0=0, addr2=out_base + first * out_step,
                                 count0=n, mult=1 << 14, shift=20))
    words.append(Instruction(Opcode.HALT))
    return words


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.resident",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default.toml")
    parser.add_argument("--no-k-loop", action="store_true", help="one MATMUL word per K piece")
    parser.add_argument("--shape", type=shape_type(65535), action="append",
                        help="M,K,N (repeatable; default: 1,256,256 and 128,256,256); K and N "
                             "multiples of the array's rows and cols")
    parser.add_argument("--scratchpad-kib", type=int,
                        help="override [accelerator] scratchpad_kib (checked against the "
                             "device's block RAM like any config), e.g. to hold a 256^3 GEMM")
    parser.add_argument("--mhz", type=float, action="append", default=[],
                        help="also give board time at this clock (repeatable; the config's "
                             "clock always)")
    args = parser.parse_args(argv)
    try:
        document = read_toml(args.config)
        if args.scratchpad_kib is not None:
            document.setdefault("accelerator", {})["scratchpad_kib"] = args.scratchpad_kib
        config = parse_config(document, name=args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    g = config.accelerator.geometry
    clocks = [config.target.clock_mhz, *args.mhz]
    print(f"{'shape':<12} {'words':>6} {'cycles':>8} {'util':>6}  board time on chip (no link)")
    for M, K, N in args.shape or SHAPES:
        if K % g.rows or N % g.cols:
            print(f"error: --shape {M},{K},{N}: K and N must be multiples of {g.rows} and "
                  f"{g.cols}", file=sys.stderr)
            return 2
        operand_rows = scratchpad_rows(g, M, K, N)
        if operand_rows > g.sp_depth:
            print(f"{M}x{K}x{N}: its operands ({operand_rows} scratchpad rows) do not fit "
                  f"{g.sp_depth} rows; --scratchpad-kib gives it more")
            continue
        words = program(g, M, K, N, k_loop=not args.no_k_loop)
        if len(words) > g.program_words:
            print(f"{M}x{K}x{N}: {len(words)} words do not fit {g.program_words}")
            continue
        cycles = run_cycles(words, 0, 1, 0, g)
        times = ", ".join(f"{cycles / mhz:,.1f} us at {mhz:g} MHz" for mhz in clocks)
        print(f"{M}x{K}x{N:<6} {len(words):>6} {cycles:>8} "
              f"{M * K * N / (cycles * g.rows * g.cols):6.1%}  {times}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
