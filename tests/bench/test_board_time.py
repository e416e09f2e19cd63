"""The programs behind bench/resident.py and bench/board_time.py compute the GEMM they time.

The goal figures of docs/performance.md (GEMV >= 50%, prefill >= 80% on chip) are the
cycle model's count of bench.resident's program; here that program runs on the ISA
interpreter with its operands laid out as the bench says, and the int8 results it leaves in
the scratchpad must equal numpy's A @ B requantized.
"""

import numpy as np
import pytest

from bench import board_time
from bench.resident import program
from firmware.cycles import run_cycles
from firmware.functional import FunctionalMachine
from gen.config import load_config
from rtl.isa import Instruction, Opcode, encode

DEFAULT = load_config("configs/default.toml").accelerator.geometry


@pytest.mark.parametrize("M,K,N", [(1, 64, 64), (16, 64, 32), (128, 32, 64)])
def test_resident_program_computes_the_gemm(M, K, N):
    g, R, C = DEFAULT, DEFAULT.rows, DEFAULT.cols
    rng = np.random.default_rng(M * 1000 + K + N)
    a = rng.integers(-128, 128, (M, K))
    b = rng.integers(-128, 128, (K, N))
    machine = FunctionalMachine(g)
    tiles = N // C
    for t in range(tiles):                      # B: a block of K rows per column tile
        machine.sp[t * K:(t + 1) * K, :C] = b[:, t * C:(t + 1) * C]
    a_base = tiles * K
    for r in range(K // R):                     # A: a piece of M rows, R lanes, per K step
        machine.sp[a_base + r * M:a_base + (r + 1) * M, :R] = a[:, r * R:(r + 1) * R]
    words = program(g, M, K, N)
    for i, w in enumerate(words):
        machine.program[i] = encode(w)
    machine.execute(Instruction(Opcode.RUN, addr0=0, count0=1, count1=0), bytes(2))
    assert not machine.failed, machine.error
    # Results: each batch's VEC REQ writes its tiles' rows over the B blocks already used.
    c = a @ b
    q = np.clip((c * (1 << 14) + (1 << 19)) >> 20, -128, 127)     # mult 2**14, shift 20
    batch = max(1, g.acc_depth // M)
    out_base, out_step = (0, K) if M <= K else (a_base + (K // R) * M, M)
    for first in range(0, tiles, batch):
        ts = range(first, min(tiles, first + batch))
        base = out_base + first * out_step
        got = machine.sp[base:base + len(ts) * M, :C]
        want = np.concatenate([q[:, t * C:(t + 1) * C] for t in ts])
        np.testing.assert_array_equal(got, want)
    assert run_cycles(words, 0, 1, 0, g) > M * K * N // (R * C)


def test_board_time_prints_every_case(capsys):
    assert board_time.main(["--shape", "1,64,64", "--shape", "16,64,32", "--mhz", "25"]) == 0
    out = capsys.readouterr().out
    assert out.count(": resident ") == 4 and "with the link" in out and "at 25 MHz" in out
    assert board_time.main(["--shape", "1,60,64"]) == 2
