"""The cycle model against the RTL, to the cycle, on programs that exercise every path."""

import random

import pytest

from firmware.cycles import cycle_report
from rtl.isa import Geometry, Instruction, Opcode, Flags, encode
from rtl.top import Accelerator
from tests.rtl.streams import run_stream
from firmware.program import payload_bytes, reply_bytes


def random_program(g: Geometry, seed: int, length: int = 14):
    rnd = random.Random(seed)
    steps = []
    sp, acc = g.sp_depth, g.acc_depth

    def add(instruction):
        payload = bytes(rnd.randrange(256) for _ in range(payload_bytes(g, instruction)))
        steps.append((instruction, payload))

    add(Instruction(Opcode.SET_BIAS))
    add(Instruction(Opcode.LOAD_SP, addr0=0, count0=rnd.randint(1, 6)))
    for _ in range(length):
        kind = rnd.choice(["mm", "mm", "mm", "mmrun", "store", "requant", "store_sp", "sync", "load"])
        if kind in ("mm", "mmrun"):
            for _ in range(rnd.randint(2, 5) if kind == "mmrun" else 1):
                if g.dataflow == "ws":
                    m, k = rnd.choice([0, 1, 2, 3, 9, 20]), rnd.randint(0, g.rows)
                else:
                    m, k = rnd.randint(0, g.rows), rnd.choice([0, 1, 2, 5, 2 * g.rows + g.cols + 2])
                add(Instruction(Opcode.MATMUL, flags=rnd.choice([0, Flags.ACCUMULATE]),
                                addr0=rnd.randrange(sp - 30), addr1=rnd.randrange(sp - 30),
                                addr2=rnd.randrange(acc - 30), count0=m, count1=k))
        elif kind == "store":
            add(Instruction(Opcode.STORE, addr0=rnd.randrange(acc - 8), count0=rnd.randint(0, 4),
                            flags=rnd.choice([0, Flags.BIAS, Flags.REQUANT, Flags.REQUANT | Flags.BIAS]),
                            mult=rnd.randrange(1 << 16), shift=rnd.randrange(40)))
        elif kind == "requant":
            add(Instruction(Opcode.REQUANT, addr0=rnd.randrange(acc - 8), addr1=rnd.randrange(sp - 8),
                            count0=rnd.randint(0, 3), mult=100, shift=10))
        elif kind == "store_sp":
            add(Instruction(Opcode.STORE_SP, addr0=rnd.randrange(sp - 8), count0=rnd.randint(0, 3)))
        elif kind == "sync":
            add(Instruction(Opcode.SYNC, tag=rnd.randrange(256)))
        else:
            add(Instruction(Opcode.LOAD_SP, addr0=rnd.randrange(sp - 8), count0=rnd.randint(0, 3)))
    add(Instruction(Opcode.SYNC, tag=0xA5))
    return steps


@pytest.mark.parametrize("rows,cols,dataflow,seed", [
    (2, 2, "ws", 1), (2, 3, "ws", 2), (3, 2, "os", 3), (2, 2, "os", 4), (4, 4, "ws", 5), (4, 4, "os", 6),
    (1, 1, "ws", 7), (1, 3, "os", 8), (3, 5, "ws", 9), (5, 3, "os", 10),
])
def test_cycle_model_matches_rtl(rows, cols, dataflow, seed):
    g = Geometry(rows=rows, cols=cols, dataflow=dataflow, scratchpad_kib=0.5, accumulator_kib=1,
                 banks=2)
    steps = random_program(g, seed)
    program = b"".join(encode(i) + p for i, p in steps)
    n_reply = sum(reply_bytes(g, i) for i, _ in steps)
    reply, cycles = run_stream(Accelerator(g), program, n_reply)
    assert reply[-1] == 0xA5
    assert cycle_report([i for i, _ in steps], g).total_cycles == cycles


@pytest.mark.parametrize("dataflow,size", [("ws", 4), ("os", 4), ("ws", 8)])
def test_cycle_model_matches_rtl_on_back_to_back_tiles(dataflow, size):
    """Runs of MATMULs whose timing is set by the weight guard (WS) or the result chain (OS).

    At 8x8 the WS guard (rows + cols cycles) outlasts an instruction fetch, so it binds."""
    g = Geometry(rows=size, cols=size, dataflow=dataflow, scratchpad_kib=1, accumulator_kib=2,
                 banks=2)
    steps = [(Instruction(Opcode.LOAD_SP, addr0=0, count0=8), bytes(range(8 * g.sp_row_bytes)))]
    for n, size in enumerate([12, 5, 9, 16, 3, 10, 11, 7, 30, 1]):
        m, k = (size, 1 + n % g.rows) if dataflow == "ws" else (1 + n % g.rows, size)
        steps.append((Instruction(Opcode.MATMUL, flags=n % 2, addr0=n, addr1=2 * n, addr2=3 * n,
                                  count0=m, count1=k), b""))
    steps.append((Instruction(Opcode.STORE, addr0=0, count0=2), b""))
    steps.append((Instruction(Opcode.SYNC, tag=7), b""))
    program = b"".join(encode(i) + p for i, p in steps)
    n_reply = sum(reply_bytes(g, i) for i, _ in steps)
    _, cycles = run_stream(Accelerator(g), program, n_reply)
    assert cycle_report([i for i, _ in steps], g).total_cycles == cycles
