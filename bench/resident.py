"""On-chip utilization of a GEMV and a prefill GEMM with resident operands
(``python -m bench.resident``).

What a board does when the model lives on it: the operands are already in the
scratchpad (WS layout: B as N / cols column blocks of K rows; A as K / rows
pieces of M rows, k lanes each), the program is in program memory, and one RUN
(P = 1, N = 0) executes it: for each batch of N tiles that the accumulator
holds, the MATMULs (K loops, ``firmware.compiler.k_loop``; ``--no-k-loop``
emits one word a K piece instead), then one ``VEC REQ`` that requantizes the
batch's results to int8 into the scratchpad (over B blocks already used), then
HALT. Counted: the whole RUN by the cycle model (``firmware.cycles.run_cycles``,
equal to the RTL's cycles by ``tests/firmware/test_cycles.py``): its 16-byte
word and 2-byte token from the host (21 cycles), every program fetch, weight
load, beat, drain and the requantization, up to HALT. Utilization = M·K·N /
(cycles · rows · cols).
"""

import argparse
import sys

from gen.config import load_config, ConfigError
from firmware.cycles import run_cycles
from rtl.isa import Instruction, Opcode, VecOp, Flags

SHAPES = [(1, 256, 256), (128, 256, 256)]


def program(g, M, K, N, *, k_loop=True):
    """Program words for C = A @ B with resident operands (see the module docstring)."""
    from firmware.compiler import k_loop as loops    # the K loop (absent before it existed)
    R, C = g.rows, g.cols
    tiles = N // C
    b_base, a_base = 0, tiles * K
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
        words.append(Instruction(Opcode.VEC, tag=VecOp.REQ, addr0=0, addr2=b_base + first * K,
                                 count0=n, mult=1 << 14, shift=20))
    words.append(Instruction(Opcode.HALT))
    return words


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.resident",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default.toml")
    parser.add_argument("--no-k-loop", action="store_true", help="one MATMUL word per K piece")
    args = parser.parse_args(argv)
    try:
        g = load_config(args.config).accelerator.geometry
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{'shape':<12} {'words':>6} {'cycles':>8} {'util':>6}")
    for M, K, N in SHAPES:
        words = program(g, M, K, N, k_loop=not args.no_k_loop)
        if len(words) > g.program_words:
            print(f"{M}x{K}x{N}: {len(words)} words do not fit {g.program_words}")
            continue
        cycles = run_cycles(words, 0, 1, 0, g)
        print(f"{M}x{K}x{N:<6} {len(words):>6} {cycles:>8} {M * K * N / (cycles * g.rows * g.cols):6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
