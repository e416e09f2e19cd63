"""The cycle model against the RTL, to the cycle, on programs that exercise every path."""

import random

import pytest

from firmware.cycles import cycle_report, run_cycles, link_seconds
from firmware.functional import FunctionalMachine
from rtl.isa import Geometry, Instruction, Opcode, Flags, Branch, VecOp, VEC_UNIT, UNITS, encode
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
                reps = step = 0
                if g.dataflow == "ws":
                    m, k = rnd.choice([0, 1, 2, 3, 9, 20]), rnd.randint(0, g.rows)
                    if kind == "mmrun" and rnd.random() < 0.5:     # a K loop inside the memories
                        reps, step = rnd.randint(1, 4), rnd.randint(0, 2)
                        m, k = rnd.choice([0, 1, 2, 9]), min(k, 30 // (reps + 1))
                else:
                    m, k = rnd.randint(0, g.rows), rnd.choice([0, 1, 2, 5, 2 * g.rows + g.cols + 2])
                add(Instruction(Opcode.MATMUL, flags=rnd.choice([0, Flags.ACCUMULATE]),
                                addr0=rnd.randrange(sp - 30), addr1=rnd.randrange(sp - 30),
                                addr2=rnd.randrange(acc - 30), count0=m, count1=k, tag=reps,
                                mult=step))
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


@pytest.mark.parametrize("dataflow,size,sp_banks", [
    ("ws", 4, 1), ("ws", 4, 2), ("ws", 8, 4), ("ws", 8, 8), ("os", 4, 2)])
def test_cycle_model_matches_rtl_on_back_to_back_tiles(dataflow, size, sp_banks):
    """Runs of MATMULs whose timing is set by the weight reads (WS: tiles of few beats, k up
    to rows, unaligned weight rows) or the result chain (OS): cycles as the model's,
    results as the ISA interpreter's. The words come from program memory, one every
    three cycles, so WS tiles start as close as the array allows (a tile's weights just
    behind the previous tile's swap); the weights are random and every result row is
    stored, so a weight that lands a cycle early or late (the array's row or column
    delays) changes the reply."""
    g = Geometry(rows=size, cols=size, dataflow=dataflow, scratchpad_kib=1, accumulator_kib=2,
                 banks=2, scratchpad_banks=sp_banks, program_kib=1, tokens=2)
    rnd = random.Random(size * 10 + sp_banks)
    sizes = [1, 2, 1, 1, 3, 12, 1, 2, 5, 1, 1, 30, 1] if dataflow == "ws" else \
        [12, 5, 9, 16, 3, 10, 11, 7, 30, 1]
    words, acc_row = [], 0
    for n, size in enumerate(sizes):
        m, k = (size, g.rows - n % 3) if dataflow == "ws" else (1 + n % g.rows, size)
        words.append(Instruction(Opcode.MATMUL, flags=n % 2, addr0=n, addr1=3 * n + 1,
                                 addr2=acc_row, count0=m, count1=k))
        acc_row += m
    if dataflow == "ws":        # a K loop: tiles one cycle apart when the beats allow
        words.append(Instruction(Opcode.MATMUL, addr0=3, addr1=5, addr2=acc_row, count0=1,
                                 count1=g.rows, tag=3, mult=1))
        acc_row += 1
    words.append(Instruction(Opcode.HALT))
    steps = [(Instruction(Opcode.LOAD_SP, addr0=0, count0=48),
              bytes(rnd.randrange(256) for _ in range(48 * g.sp_row_bytes))),
             (Instruction(Opcode.LOAD_PROG, addr0=0, count0=len(words)),
              b"".join(encode(w) for w in words)),
             (Instruction(Opcode.RUN, addr0=0, count0=1, count1=0), bytes(2)),
             (Instruction(Opcode.STORE, addr0=0, count0=acc_row), b""),
             (Instruction(Opcode.SYNC, tag=7), b"")]
    check_v1_stream(g, steps, lambda s, n: run_stream(Accelerator(g), s, n))


@pytest.mark.parametrize("sp_banks", [1, 2, 4, 8])
def test_wide_weight_path_gemv_k_loop(sp_banks):
    """WS on 8 rows with a scratchpad of 1, 2, 4 or 8 banks: a GEMV K loop (M = 1, every
    tile accumulating into one accumulator row, the weights from an unaligned row), a
    tile of k < rows, one of 2 beats: data as the interpreter's, cycles as the model's.
    On the RTL itself, one tile more in the K loop costs max(1, ceil(k / banks)) cycles."""
    g = Geometry(rows=8, cols=2, scratchpad_kib=2, accumulator_kib=0.25, banks=2,
                 scratchpad_banks=sp_banks)
    rnd = random.Random(sp_banks)
    load = (Instruction(Opcode.LOAD_SP, addr0=0, count0=240),
            bytes(rnd.randrange(256) for _ in range(240 * g.sp_row_bytes)))

    def steps(reps):
        # The K loop last, long enough that the engine, not the next word's fetch, sets
        # when the STORE starts.
        return [load,
                (Instruction(Opcode.MATMUL, addr0=201, addr1=13, addr2=1, count0=1, count1=5), b""),
                (Instruction(Opcode.MATMUL, addr0=202, addr1=21, addr2=2, count0=2, count1=3,
                             tag=1, mult=2), b""),
                (Instruction(Opcode.MATMUL, flags=Flags.ACCUMULATE, addr0=210, addr1=27, addr2=1,
                             count0=1, count1=8, tag=reps, mult=1), b""),
                (Instruction(Opcode.STORE, addr0=0, count0=4), b""),
                (Instruction(Opcode.SYNC, tag=7), b"")]

    cycles = [_check_against_interpreter_and_model(g, steps(reps)) for reps in (20, 21)]
    assert cycles[1] - cycles[0] == max(1, -(-8 // sp_banks))


def _dependent_matmuls(g, rnd, length):
    """Program words: K loops and single tiles of few beats that accumulate into the same
    few accumulator rows, read weights from unaligned rows that a REQUANT or VEC just
    wrote, with a REQUANT, VEC or STORE-like read of the results right after."""
    words = []
    for _ in range(length):
        kind = rnd.choice(["mm"] * 6 + ["requant", "vec"])
        if kind == "mm":
            reps = rnd.choice([0, 0, 1, 2, 5])
            words.append(Instruction(
                Opcode.MATMUL, flags=rnd.choice([0, Flags.ACCUMULATE]),
                addr0=rnd.randrange(16), addr1=rnd.randrange(12),
                addr2=rnd.randrange(3), count0=rnd.choice([0, 1, 1, 1, 2, 3]),
                count1=rnd.randint(0, g.rows), tag=reps, mult=rnd.randrange(3)))
        elif kind == "requant":
            words.append(Instruction(Opcode.REQUANT, addr0=rnd.randrange(3),
                                     addr1=rnd.randrange(12), count0=rnd.randint(1, 2),
                                     mult=rnd.randrange(1 << 16), shift=rnd.randrange(8, 20)))
        else:
            op = rnd.choice([VecOp.REQ, VecOp.ADD])
            words.append(Instruction(Opcode.VEC, tag=op, addr0=rnd.randrange(3),
                                     addr1=rnd.randrange(3, 6), addr2=rnd.randrange(12),
                                     count0=rnd.randint(1, 2 * g.cols),
                                     mult=rnd.randrange(1 << 15), shift=rnd.randrange(8, 20)))
    return words


@pytest.mark.parametrize("rows,sp_banks,seed", [(4, 1, 21), (4, 2, 22), (4, 4, 23), (3, 4, 24),
                                                (8, 8, 25)])
def test_dependent_matmuls_match_interpreter_and_model(rows, sp_banks, seed):
    """Random back-to-back dependent MATMULs, from program memory (a word every few cycles)
    and from the host stream: the reply as the ISA interpreter's, cycles as the model's."""
    g = Geometry(rows=rows, cols=2, scratchpad_kib=0.5, accumulator_kib=0.25, banks=2,
                 scratchpad_banks=sp_banks, program_kib=1, tokens=4, units=("elementwise",))
    rnd = random.Random(seed)
    words = _dependent_matmuls(g, rnd, 24) + [Instruction(Opcode.HALT)]
    steps = [(Instruction(Opcode.SET_BIAS), bytes(rnd.randrange(256) for _ in range(8))),
             (Instruction(Opcode.LOAD_SP, addr0=0, count0=24),
              bytes(rnd.randrange(256) for _ in range(24 * g.sp_row_bytes))),
             (Instruction(Opcode.LOAD_PROG, addr0=0, count0=len(words)),
              b"".join(encode(w) for w in words)),
             (Instruction(Opcode.RUN, addr0=0, count0=1, count1=0), bytes(2))]
    for word in _dependent_matmuls(g, rnd, 8):
        steps.append((word, b""))
        if rnd.random() < 0.3:
            steps.append((Instruction(Opcode.STORE, addr0=0, count0=3,
                                      flags=rnd.choice([0, Flags.REQUANT | Flags.BIAS]),
                                      mult=1 << 12, shift=14), b""))
    steps += [(Instruction(Opcode.STORE, addr0=0, count0=6), b""),
              (Instruction(Opcode.STORE_SP, addr0=0, count0=16), b""),
              (Instruction(Opcode.SYNC, tag=0xA5), b"")]
    reply = check_v1_stream(g, steps, lambda s, n: run_stream(Accelerator(g), s, n))
    assert reply[-1] == 0xA5
    assert cycle_report(steps, g).error == 0


@pytest.mark.parametrize("size,m", [(4, 1), (8, 1), (4, 3)])
def test_k_loops_match_interpreter_and_model(size, m):
    """WS K loops (tag, A step mult) back to back, each accumulating onto the rows the one
    before wrote, then a plain MATMUL onto the same rows: data as the ISA interpreter's,
    cycles as the model's."""
    g = Geometry(rows=size, cols=size, scratchpad_kib=1, accumulator_kib=2, banks=2)
    rnd = random.Random(size + m)
    steps = [(Instruction(Opcode.LOAD_SP, addr0=0, count0=40),
              bytes(rnd.randrange(256) for _ in range(40 * g.sp_row_bytes)))]
    for n, (reps, step) in enumerate([(3, m), (0, 5), (5, 1), (1, 0), (2, m)]):
        steps.append((Instruction(Opcode.MATMUL, flags=n % 2, addr0=n, addr1=2 * n, addr2=m * (n % 2),
                                  count0=m, count1=size - n % 2, tag=reps, mult=step), b""))
    steps.append((Instruction(Opcode.MATMUL, flags=Flags.ACCUMULATE, addr0=7, addr1=1, count0=m,
                              count1=size, tag=2, mult=1), b""))
    steps.append((Instruction(Opcode.STORE, addr0=0, count0=2 * m), b""))
    steps.append((Instruction(Opcode.SYNC, tag=7), b""))
    _check_against_interpreter_and_model(g, steps)


# --- ISA v1: programs in program memory, RUN, errors -------------------------------------------

def v1_geometry(rows, cols, dataflow, **kw):
    return Geometry(rows=rows, cols=cols, dataflow=dataflow, scratchpad_kib=0.5, accumulator_kib=1,
                    banks=2, program_kib=0.5, tokens=12, **kw)


def random_matmul(g, rnd):
    """A MATMUL inside the memories; in WS a third of them K loops (tag, A step mult) that
    stay inside too, in OS a few K loops, which are illegal."""
    reps = step = 0
    if g.dataflow == "ws":
        m, k = rnd.choice([0, 1, 3, 9]), rnd.randint(0, g.rows)
        if rnd.random() < 1 / 3:
            m, reps, step = rnd.choice([0, 1, 3]), rnd.randint(1, 3), rnd.randint(0, 2)
            k = rnd.randint(0, min(g.rows, 12 // (reps + 1)))
    else:
        m, k = rnd.randint(0, g.rows), rnd.choice([0, 1, 5, 2 * g.rows + g.cols + 1])
        if rnd.random() < 0.05:
            reps = 1
    return Instruction(Opcode.MATMUL, flags=rnd.choice([0, Flags.ACCUMULATE]),
                       addr0=rnd.randrange(g.sp_depth - 12), addr1=rnd.randrange(g.sp_depth - 12),
                       addr2=rnd.randrange(g.acc_depth - 12), count0=m, count1=k, tag=reps,
                       mult=step)


def random_vec(g, rnd, op=None):
    """A VEC of a unit the geometry has, its rows in the lower half of each memory (legal for
    the short vectors here, at every POS and for token ids below 4 * cols)."""
    if op is None:
        op = rnd.choice([v for v in VecOp if g.has_unit(VEC_UNIT[v])])
    flags = 0
    if op in (VecOp.REQ, VecOp.ADD):
        flags = rnd.choice([0, Flags.PERCHAN])
    elif op in (VecOp.SOFTMAX, VecOp.COPY_SP):
        flags = rnd.choice([0, Flags.POS])
    count1 = {VecOp.SOFTMAX: rnd.randint(0, 2 * g.cols), VecOp.LAYERNORM: rnd.randrange(32),
              VecOp.EMBED: rnd.randrange(4), VecOp.COPY_SP: rnd.randrange(3)}.get(op, 0)
    half = min(g.sp_depth, g.acc_depth) // 2
    n = rnd.randint(0, 2 * g.cols)
    addr = [rnd.randrange(half) for _ in range(3)]
    if op in (VecOp.COPY_ACC, VecOp.COPY_SP):
        # Overlapping copies are undefined (rtl/isa.py): the destination goes above the
        # source, past any POS offset.
        dst = 1 if op == VecOp.COPY_SP else 2
        addr[dst] = addr[0] + n + rnd.randrange(half // 2)
    return Instruction(Opcode.VEC, tag=op, flags=flags, count0=n, count1=count1,
                       addr0=addr[0], addr1=addr[1], addr2=addr[2], mult=rnd.randrange(1 << 16),
                       shift=rnd.randrange(32))


def random_body(g, rnd, length):
    """Straight-line instructions that a program and the host stream may both carry
    (VECs when the geometry has vector units)."""
    body = []
    for _ in range(length):
        kind = rnd.choice(["mm", "mm", "mm", "requant", "setp", "nop"] + ["vec"] * 4 * bool(g.units))
        if kind == "vec":
            body.append(random_vec(g, rnd))
        elif kind == "mm":
            body.append(random_matmul(g, rnd))
        elif kind == "requant":
            body.append(Instruction(Opcode.REQUANT, addr0=rnd.randrange(g.acc_depth - 4),
                                    addr1=rnd.randrange(g.sp_depth - 4), count0=rnd.randint(0, 2),
                                    mult=rnd.randrange(1 << 16), shift=rnd.randrange(24)))
        elif kind == "setp":
            body.append(Instruction(Opcode.SETP, tag=rnd.randrange(8), addr0=rnd.randrange(1 << 16),
                                    addr1=rnd.randrange(1 << 16)))
        else:
            body.append(Instruction(Opcode.NOP))
    return body


def random_model_program(g, rnd, *, fault=False):
    """A decoder-shaped program: per position a body, EMIT past the prompt, LOOP, HALT.
    ``fault``: one illegal word somewhere in the loop (the RUN stops there)."""
    words = []
    if rnd.random() < 0.5:        # a forward ALWAYS over a word that would fail
        words += [Instruction(Opcode.BRANCH, tag=Branch.ALWAYS, addr0=2), Instruction(Opcode.STORE)]
    top = len(words)
    words += random_body(g, rnd, rnd.randint(1, 4))
    skip = len(words) + 2
    words += [Instruction(Opcode.BRANCH, tag=Branch.PROMPT, addr0=skip), Instruction(Opcode.EMIT)]
    words += random_body(g, rnd, rnd.randint(0, 2))
    words += [Instruction(Opcode.BRANCH, tag=Branch.LOOP, addr0=top), Instruction(Opcode.HALT)]
    if fault:
        bad = rnd.choice([Instruction(Opcode.SYNC, tag=1), Instruction(Opcode.RUN),
                          Instruction(Opcode.MATMUL, addr2=g.acc_depth - 1, count0=2, count1=1),
                          Instruction(Opcode.BRANCH, tag=Branch.ALWAYS, addr0=g.program_words),
                          Instruction(Opcode.VEC, tag=0)])
        words.insert(rnd.randrange(top, len(words) - 1), bad)
    return words


def random_v1_stream(g, seed, *, runs=2, fault=None, vec_ops=()):
    """A host stream over every instruction of ISA v1 that a config without vector units runs:
    loads, a program, RUNs with prompts, MATMULs, stores, STATUS; with ``fault`` ("host" or
    "program") one illegal instruction, the skipped ones after it, STATUS, RESET, and more;
    ``vec_ops``: a VEC of each of these on the host stream before the first RUN."""
    rnd = random.Random(seed)
    steps = []

    def add(instruction, payload=None):
        if payload is None:
            payload = bytes(rnd.randrange(256) for _ in range(payload_bytes(g, instruction)))
        steps.append((instruction, payload))

    add(Instruction(Opcode.SET_BIAS))
    add(Instruction(Opcode.LOAD_SP, addr0=0, count0=8))
    add(Instruction(Opcode.LOAD_ACC, addr0=rnd.randrange(g.acc_depth - 4), count0=rnd.randint(1, 3)))
    words = random_model_program(g, rnd, fault=fault == "program")
    entry = rnd.randrange(4)
    add(Instruction(Opcode.LOAD_PROG, addr0=entry, count0=len(words)),
        b"".join(encode(_relocate(w, entry)) for w in words))
    for op in vec_ops:
        add(random_vec(g, rnd, op))

    def host_op():
        kind = rnd.choice(["mm", "store", "store_sp", "sync", "load", "status", "setp", "requant"])
        if kind == "mm":
            add(random_matmul(g, rnd))
        elif kind == "store":
            add(Instruction(Opcode.STORE, addr0=rnd.randrange(g.acc_depth - 4), count0=rnd.randint(0, 2),
                            flags=rnd.choice([0, Flags.BIAS, Flags.REQUANT | Flags.BIAS]),
                            mult=rnd.randrange(1 << 16), shift=rnd.randrange(30)))
        elif kind == "store_sp":
            add(Instruction(Opcode.STORE_SP, addr0=rnd.randrange(g.sp_depth - 4), count0=rnd.randint(0, 2)))
        elif kind == "sync":
            add(Instruction(Opcode.SYNC, tag=rnd.randrange(256)))
        elif kind == "load":
            add(Instruction(Opcode.LOAD_ACC if rnd.random() < 0.5 else Opcode.LOAD_SP,
                            addr0=rnd.randrange(8, 16), count0=rnd.randint(0, 2)))
        elif kind == "status":
            add(Instruction(Opcode.STATUS))
        else:
            add(*[(i, None) for i in random_body(g, rnd, 1)][0])

    def run():
        prompt = rnd.randint(1, 4)
        generate = rnd.randint(0, g.tokens - prompt)
        ids = [rnd.randrange(4 * g.cols if g.units else 1 << 16) for _ in range(prompt)]
        add(Instruction(Opcode.RUN, addr0=entry, count0=prompt, count1=generate),
            b"".join(i.to_bytes(2, "little") for i in ids))

    for r in range(runs):
        for _ in range(rnd.randint(1, 4)):
            host_op()
        run()
    if fault == "host":
        add(rnd.choice([Instruction(Opcode.EMIT), Instruction(Opcode.RUN, count0=0, count1=3),
                        Instruction(Opcode.LOAD_SP, addr0=g.sp_depth - 1, count0=2),
                        Instruction(Opcode.STORE, addr0=g.acc_depth, count0=1),
                        Instruction(Opcode.VEC, tag=VecOp.GELU),
                        Instruction(Opcode.MATMUL, count0=g.rows + 1, count1=g.rows + 1)]))
    if fault:
        for _ in range(3):
            host_op()
        run()
        add(Instruction(Opcode.SYNC, tag=0x11))
        add(Instruction(Opcode.STATUS))
        add(Instruction(Opcode.RESET))
        host_op()
        run()
    add(Instruction(Opcode.STORE_SP, addr0=0, count0=8))
    add(Instruction(Opcode.SYNC, tag=0xA5))
    return steps


def _relocate(word, entry):
    """Branch targets of a program written from word 0, loaded at ``entry``."""
    if word.opcode == Opcode.BRANCH:
        return Instruction(Opcode.BRANCH, tag=word.tag, addr0=word.addr0 + entry)
    return word


def check_v1_stream(g, steps, run):
    """Reply (the ISA interpreter's, to the byte) and cycles (the model's) of a stream on the
    RTL; ``run(stream, reply_bytes) -> (reply, cycles)``."""
    from firmware.functional import FunctionalBackend
    stream = b"".join(encode(i) + p for i, p in steps)
    n_reply = sum(reply_bytes(g, i) for i, _ in steps)
    expected, _ = FunctionalBackend(g).run(stream, n_reply)
    reply, cycles = run(stream, n_reply)
    assert reply == expected
    assert cycle_report(steps, g).total_cycles == cycles
    assert cycle_report(stream, g).total_cycles == cycles
    return reply


@pytest.mark.parametrize("rows,cols,dataflow,seed,fault", [
    (2, 2, "ws", 1, None), (3, 2, "os", 2, None), (2, 3, "ws", 3, "program"), (2, 2, "os", 4, "host"),
])
def test_programs_match_interpreter_and_cycle_model(rows, cols, dataflow, seed, fault):
    g = v1_geometry(rows, cols, dataflow)
    steps = random_v1_stream(g, seed, fault=fault)
    reply = check_v1_stream(g, steps, lambda s, n: run_stream(Accelerator(g), s, n))
    if fault != "program":       # a bad program word fails every RUN of it, after a RESET too
        assert reply[-1] == 0xA5
    assert (cycle_report(steps, g).error != 0) == (fault == "program")


def test_run_cycles_is_a_run_on_the_host_stream():
    g = v1_geometry(2, 2, "ws")
    rnd = random.Random(5)
    words = random_model_program(g, rnd)
    stream_steps = [(Instruction(Opcode.LOAD_PROG, addr0=0, count0=len(words)),
                     b"".join(encode(w) for w in words)),
                    (Instruction(Opcode.RUN, addr0=0, count0=3, count1=4), bytes(6))]
    whole = cycle_report(stream_steps, g).total_cycles
    load = cycle_report(stream_steps[:1], g).total_cycles
    assert run_cycles(words, 0, 3, 4, g) == whole - load


def test_link_seconds_counts_frames_bytes_and_turnarounds():
    link = link_seconds(600, 300, baud=1_000_000, turnaround_s=1e-3)
    assert link.frames == 3 + 2
    assert link.to_board_bytes == 600 + 5 * 5 and link.to_host_bytes == 300 + 6 * 5
    assert link.seconds == pytest.approx((625 + 330) * 10e-6 + 5e-3)
    assert link_seconds(0, 0).seconds == 0


@pytest.mark.parametrize("rows,cols,dataflow,seed,lanes", [
    (2, 2, "ws", 11, 1), (2, 4, "os", 12, 2), (3, 3, "ws", 13, 3),
])
def test_vec_programs_match_interpreter_and_cycle_model(rows, cols, dataflow, seed, lanes):
    """Programs with every VecOp among the MATMULs, on the RTL with its vector unit."""
    g = v1_geometry(rows, cols, dataflow, units=UNITS, vector_lanes=lanes)
    steps = random_v1_stream(g, seed, vec_ops=list(VecOp) * 2)
    reply = check_v1_stream(g, steps, lambda s, n: run_stream(Accelerator(g), s, n))
    assert reply[-1] == 0xA5


def _check_against_interpreter_and_model(g, steps):
    """Run (instruction, payload) ``steps`` on the RTL: the reply as the ISA interpreter's,
    the cycles as the model's."""
    program = b"".join(encode(i) + p for i, p in steps)
    n_reply = sum(reply_bytes(g, i) for i, _ in steps)
    reply, cycles = run_stream(Accelerator(g), program, n_reply)
    assert reply == FunctionalMachine(g).run(program)
    assert cycle_report([i for i, _ in steps], g).total_cycles == cycles
    return cycles


@pytest.mark.parametrize("dataflow,seed", [("ws", 21), ("os", 22)])
def test_the_dispatch_check_at_the_memory_ends(dataflow, seed):
    """Words whose rows end near or past the ends of the memories, every VecOp among them,
    each followed by STATUS and RESET: the error the RTL's two-step check gives (and what
    a legal word then does) is the ISA interpreter's, and the cycles the model's."""
    g = v1_geometry(2, 4, dataflow, units=UNITS, vector_lanes=2)
    rnd = random.Random(seed)
    ends = {"sp": g.sp_depth, "acc": g.acc_depth}

    def addr():
        if rnd.random() < 0.25:
            return rnd.randint(0, 3)
        return max(0, ends[rnd.choice(["sp", "acc"])] - rnd.randint(0, 6))

    ops = [Opcode.MATMUL, Opcode.REQUANT, Opcode.STORE, Opcode.STORE_SP] + [Opcode.VEC] * 12
    steps = []
    for _ in range(48):
        op = rnd.choice(ops)
        tag = rnd.choice(list(VecOp)) if op == Opcode.VEC else \
            rnd.randint(0, 2) if op == Opcode.MATMUL and dataflow == "ws" else 0
        word = Instruction(op, tag=tag, flags=rnd.choice([0, Flags.POS, Flags.PERCHAN]),
                           addr0=addr(), addr1=addr(), addr2=addr(),
                           count0=rnd.choice([0, 1, 2, g.cols, g.cols + 1, 2 * g.cols + 1, 13]),
                           count1=rnd.randint(0, 3), mult=rnd.randint(0, 3), shift=rnd.randint(0, 9))
        steps += [(word, b""), (Instruction(Opcode.STATUS), b""), (Instruction(Opcode.RESET), b"")]
    steps.append((Instruction(Opcode.SYNC, tag=0xA5), b""))
    reply = check_v1_stream(g, steps, lambda s, n: run_stream(Accelerator(g), s, n))
    codes = [cycle_report(steps[:3 * k + 1], g).error for k in range(48)]
    assert 8 <= sum(code != 0 for code in codes) <= 40     # both kinds are exercised
    assert reply[-1] == 0xA5
