"""Compiler + functional backend (numpy ISA interpreter) against the torch golden."""

import dataclasses

import numpy as np
import pytest

from rtl.isa import Geometry, Opcode, Flags, decode, encode, INSTRUCTION_BYTES
from firmware.compiler import compile_matmul, plan_matmul
from firmware.functional import FunctionalMachine, IsaError
from firmware.program import payload_bytes
from tests import golden

GEOMETRIES = {
    "2x2ws-tiny": Geometry(2, 2, "ws", scratchpad_kib=1, accumulator_kib=1),
    "2x2os-tiny": Geometry(2, 2, "os", scratchpad_kib=0.25, accumulator_kib=0.25),
    "4x4os": Geometry(4, 4, "os", scratchpad_kib=1, accumulator_kib=1, banks=2),
    "4x8ws": Geometry(4, 8, "ws", scratchpad_kib=2, accumulator_kib=2, banks=2),
    "8x4os": Geometry(8, 4, "os", scratchpad_kib=2, accumulator_kib=2),
    "8x8ws": Geometry(8, 8, "ws", banks=2),
    "8x8os": Geometry(8, 8, "os", banks=2),
    "3x5ws": Geometry(3, 5, "ws", scratchpad_kib=1, accumulator_kib=1),
    "4x4ws-i16": Geometry(4, 4, "ws", input_width=16, scratchpad_kib=2, accumulator_kib=2),
    "4x4os-i4": Geometry(4, 4, "os", input_width=4, scratchpad_kib=1, accumulator_kib=1),
    "4x4ws-acc64": Geometry(4, 4, "ws", acc_width=64, scratchpad_kib=1, accumulator_kib=2),
}

SHAPES = [(1, 1, 1), (1, 256, 256), (3, 5, 7), (17, 33, 9), (64, 64, 64), (100, 300, 50),
          (37, 1, 70), (129, 20, 3)]


def random_operands(g, M, K, N, seed, kind="random"):
    rng = np.random.default_rng(seed)
    low, high = -(1 << (g.input_width - 1)), (1 << (g.input_width - 1)) - 1
    if kind == "min":
        return np.full((M, K), low), np.full((K, N), low)
    if kind == "max":
        return np.full((M, K), high), np.full((K, N), high)
    if kind == "mixed":
        return np.full((M, K), low), np.full((K, N), high)
    return rng.integers(low, high + 1, (M, K)), rng.integers(low, high + 1, (K, N))


def run(g, program):
    reply = FunctionalMachine(g).run(program.to_bytes())
    assert len(reply) == program.reply_bytes
    assert reply[-1] == 0xA5
    return program.decode(reply)


@pytest.mark.parametrize("name", GEOMETRIES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_raw_matmul_matches_torch(name, shape):
    g = GEOMETRIES[name]
    a, b = random_operands(g, *shape, seed=hash((name, shape)) % 2**32)
    result = run(g, compile_matmul(g, a, b))
    assert (result == golden.matmul(a, b, acc_width=g.acc_width).numpy()).all()


@pytest.mark.parametrize("name", ["2x2ws-tiny", "4x4os", "8x8ws", "8x8os", "4x4ws-i16"])
@pytest.mark.parametrize("kind", ["min", "max", "mixed"])
def test_extremes_and_long_k(name, kind):
    g = GEOMETRIES[name]
    a, b = random_operands(g, 5, 700, 6, seed=0, kind=kind)
    result = run(g, compile_matmul(g, a, b))
    assert (result == golden.matmul(a, b, acc_width=g.acc_width).numpy()).all()


def test_accumulator_wraps_like_int32():
    g = Geometry(2, 2, "ws", input_width=16, scratchpad_kib=1, accumulator_kib=1)
    a, b = random_operands(g, 3, 9, 2, seed=0, kind="min")  # 9 * 2**30 passes 2**31
    result = run(g, compile_matmul(g, a, b))
    expected = golden.matmul(a, b, acc_width=32).numpy()
    assert (result == expected).all() and (expected != a.astype(np.int64) @ b).any()


@pytest.mark.parametrize("name", GEOMETRIES)
@pytest.mark.parametrize("mult,shift", [(1, 0), (37, 7), (65535, 20), (12345, 63), (3, 1)])
def test_requantized_with_bias_matches_torch(name, mult, shift):
    g = GEOMETRIES[name]
    rng = np.random.default_rng(mult + shift)
    a, b = random_operands(g, 19, 23, 11, seed=shift)
    bias = rng.integers(-(1 << 20), 1 << 20, 11)
    result = run(g, compile_matmul(g, a, b, bias=bias, mult_shift=(mult, shift)))
    expected = golden.requantize(a, b, bias, mult, shift, input_width=g.input_width,
                                 acc_width=g.acc_width).numpy()
    assert (result == expected).all()


@pytest.mark.parametrize("name", ["2x2ws-tiny", "4x8ws", "8x8os"])
def test_raw_bias_wraps_and_requant_without_bias(name):
    g = GEOMETRIES[name]
    a, b = random_operands(g, 9, 14, 13, seed=3)
    bias = np.array([2**31 - 1, -2**31] * 6 + [7])
    result = run(g, compile_matmul(g, a, b, bias=bias))
    assert (result == golden.matmul(a, b, bias, acc_width=32).numpy()).all()
    result = run(g, compile_matmul(g, a, b, mult_shift=(1000, 12)))
    assert (result == golden.requantize(a, b, None, 1000, 12).numpy()).all()


def test_program_bytes_are_rtl_isa_encodings_and_end_with_sync():
    g = GEOMETRIES["4x4os"]
    a, b = random_operands(g, 6, 10, 7, seed=1)
    program = compile_matmul(g, a, b, bias=np.arange(7), mult_shift=(5, 3), tag=0x3C)
    data, pos = program.to_bytes(), 0
    for instruction, payload in program.steps:
        assert decode(data[pos:pos + INSTRUCTION_BYTES]) == instruction
        assert data[pos:pos + INSTRUCTION_BYTES] == encode(instruction)
        pos += INSTRUCTION_BYTES + payload_bytes(g, instruction)
    assert pos == len(data) == len(program)
    last = program.instructions[-1]
    assert last.opcode == Opcode.SYNC and last.tag == 0x3C
    stores = [i for i in program.instructions if i.opcode == Opcode.STORE]
    assert all(i.flags == Flags.BIAS | Flags.REQUANT and (i.mult, i.shift) == (5, 3) for i in stores)


def test_ws_accumulates_across_k_tiles_and_uses_large_m():
    g = GEOMETRIES["8x8ws"]
    a, b = random_operands(g, 200, 40, 8, seed=2)
    program = compile_matmul(g, a, b)
    matmuls = [i for i in program.instructions if i.opcode == Opcode.MATMUL]
    # One K loop over the five K pieces (rtl/isa.py: tag = 4 more tiles, A step = m's rows).
    first = matmuls[0]
    assert (first.tag, first.mult, first.flags & Flags.ACCUMULATE) == (4, first.count0, 0)
    assert max(i.count0 for i in matmuls) == 200 and all(i.count1 <= g.rows for i in matmuls)


def test_operands_are_loaded_once_when_they_fit():
    g = GEOMETRIES["8x8ws"]
    a, b = random_operands(g, 64, 64, 64, seed=3)
    program = compile_matmul(g, a, b)
    loaded_rows = sum(i.count0 for i in program.instructions if i.opcode == Opcode.LOAD_SP)
    assert loaded_rows == 64 * 8 + 64 * 8  # A: 64 rows x 8 K tiles; B: 8 N tiles x 64 rows


def test_os_takes_all_of_k_in_one_matmul_when_it_fits():
    g = GEOMETRIES["8x8os"]
    a, b = random_operands(g, 8, 500, 8, seed=4)
    matmuls = [i for i in compile_matmul(g, a, b).instructions if i.opcode == Opcode.MATMUL]
    assert [(i.count0, i.count1) for i in matmuls] == [(8, 500)]


def test_streaming_plan_when_k_is_longer_than_the_scratchpad():
    g = GEOMETRIES["2x2os-tiny"]
    assert plan_matmul(g, 3, 2000, 3).streaming
    a, b = random_operands(g, 3, 2000, 3, seed=5)
    assert (run(g, compile_matmul(g, a, b)) == golden.matmul(a, b).numpy()).all()


def test_every_matmul_stays_in_the_memories():
    # FunctionalMachine raises IsaError on any row beyond the scratchpad or accumulator.
    for name, g in GEOMETRIES.items():
        small = dataclasses.replace(g)
        a, b = random_operands(small, 33, 129, 17, seed=6)
        run(small, compile_matmul(small, a, b))


def test_functional_machine_refuses_rows_beyond_memory():
    from rtl.isa import Instruction
    g = GEOMETRIES["4x4os"]
    machine = FunctionalMachine(g)
    with pytest.raises(IsaError, match="scratchpad rows"):
        machine.execute(Instruction(Opcode.STORE_SP, addr0=g.sp_depth - 1, count0=2), b"")
    with pytest.raises(IsaError, match="m <= rows"):
        machine.execute(Instruction(Opcode.MATMUL, count0=5, count1=1), b"")


@pytest.mark.parametrize("bad,match", [
    (dict(a=np.zeros((2, 3, 1), int)), "2-D"),
    (dict(a=np.zeros((2, 3))), "integers"),
    (dict(b=np.zeros((4, 2), int)), "b must have 3 rows"),
    (dict(a=np.full((2, 3), 128)), "8-bit"),
    (dict(bias=np.zeros(5, int)), "bias"),
    (dict(mult_shift=(70000, 1)), "mult"),
])
def test_compile_refuses_bad_operands(bad, match):
    g = GEOMETRIES["4x4os"]
    args = dict(a=np.zeros((2, 3), int), b=np.zeros((3, 2), int), bias=None, mult_shift=None)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        compile_matmul(g, args["a"], args["b"], bias=args["bias"], mult_shift=args["mult_shift"])
