"""bench/overlap.py's decoupled-machine bound, on programs whose timing is worked out by hand.

The bound sizes work that is not built (docs/performance.md, "Overlap: what it would buy"),
so these tests pin its rules: a word issues every PROGRAM_FETCH_CYCLES + 1 cycles, waits
for its unit and for earlier words whose rows it reads or writes, and the engine keeps the
cycle model's tile timing.
"""

from bench.overlap import decoupled_cycles, main, reads_writes, vector_busy
from firmware.cycles import VEC_DISPATCH_CYCLES, straight_line_cycles
from gen.config import load_config
from rtl.isa import Instruction, Opcode, VecOp, PROGRAM_FETCH_CYCLES, vector_op_cycles

G = load_config("configs/default.toml").accelerator.geometry
ISSUE = PROGRAM_FETCH_CYCLES + 1


def add(dst, src, n=64):
    return Instruction(Opcode.VEC, tag=VecOp.ADD, addr0=dst, addr1=src, count0=n, mult=1)


def matmul(a, b, c, m=4, k=8):
    return Instruction(Opcode.MATMUL, addr0=a, addr1=b, addr2=c, count0=m, count1=k)


def vec_len(ins):
    return VEC_DISPATCH_CYCLES + vector_op_cycles(ins, G)


def test_reads_and_writes():
    r, w = reads_writes(add(10, 40, 16), G, 0)
    assert w == [("acc", 10, 2)] and ("acc", 40, 2) in r and ("acc", 10, 2) in r
    r, w = reads_writes(matmul(0, 100, 200), G, 0)
    assert w == [("acc", 200, 4)] and ("sp", 0, 4) in r and ("sp", 100, 8) in r


def test_independent_vectors_queue_on_the_unit():
    a, b = add(0, 100), add(200, 300)
    # The second issues at ISSUE, but the unit is busy until the first is done.
    assert decoupled_cycles([a, b], G) == vec_len(a) + vec_len(b)
    # The RTL's front end runs ahead of the vector unit too: the same cycles.
    assert decoupled_cycles([a, b], G) == straight_line_cycles([a, b], G)


def test_a_vector_waits_for_the_matmul_it_reads_and_not_for_others():
    mm = matmul(0, 100, 500)
    alone = decoupled_cycles([mm], G)               # the matmul's results are written
    reader = add(600, 500, 32)                      # reads acc rows 500..503
    other = add(700, 800, 32)
    assert decoupled_cycles([mm, reader], G) == alone + vec_len(reader)
    assert decoupled_cycles([mm, other], G) == max(alone, ISSUE + vec_len(other))
    # With fetch_only a VEC waits for everything, as today, but fetch still runs ahead.
    assert decoupled_cycles([mm, other], G, fetch_only=True) == alone + vec_len(other)


def test_bounds_of_the_shipped_model(capsys):
    assert main(["--lanes", "4"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 4
    for lanes, _, serial, fetch, bound, _, busy, _, words in rows:
        serial, fetch, bound, busy = int(serial), int(fetch), int(bound), int(busy)
        # No machine with these units beats the vector unit's own busy time; the bound
        # never loses to today's serial order, and the full scoreboard beats fetch alone.
        assert busy <= bound <= fetch <= serial
        assert bound >= int(words)


def test_vector_busy_counts_dispatch_and_latency():
    a, b = add(0, 100), add(200, 300, 8)
    assert vector_busy([a, matmul(0, 1, 2), b], G) == vec_len(a) + vec_len(b)
