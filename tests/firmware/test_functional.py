"""The ISA interpreter (firmware/functional.py): every ISA v1 instruction, the vector ops against
docs/intmath.md written out in plain Python integers here, and the sticky error semantics."""

import math

import numpy as np
import pytest

from rtl.isa import (Geometry, Instruction, Opcode, Flags, VecOp, Branch, ErrorCode, Param, UNITS,
                     encode)
from firmware.functional import FunctionalMachine, IsaError, HOST_WORD
from firmware.packing import pack_rows, pack_acc_lanes
from firmware.program import payload_bytes, reply_bytes

G = Geometry(4, 4, "ws", scratchpad_kib=1, accumulator_kib=1, program_kib=1, tokens=16,
             units=UNITS)


# --- docs/intmath.md in Python integers -------------------------------------------------------

def rq(x, m, s, lo, hi):
    y = x * m if s == 0 else (x * m + (1 << (s - 1))) >> s
    return min(max(y, lo), hi)


def rq8(x, m, s):
    return rq(x, m, s, -128, 127)


def rq32(x, m, s):
    return rq(x, m, s, -2**31, 2**31 - 1)


def sat32(x):
    return min(max(x, -2**31), 2**31 - 1)


def sat16(x):
    return min(max(x, -2**15), 2**15 - 1)


def iexp(d):
    t = -d
    z = (t * 1477) >> 20
    r = t - z * 710
    L = (1385 - r) ** 2 + 1006157
    return L >> z if z < 32 else 0


def softmax(x, n, total, mult, shift):
    if n == 0:
        return [0] * total
    xs = [rq32(x[i], mult, shift) for i in range(n)]
    mx = max(xs)
    e = [iexp(max(v - mx, -32768)) for v in xs]
    f = (1 << 40) // sum(e)
    return [min((ei * f + (1 << 32)) >> 33, 127) for ei in e] + [0] * (total - n)


def gelu(q, B, C, ONE, mult, shift):
    a = min(abs(q), -B)
    sign = (q > 0) - (q < 0)
    y = sat32(sign * (C - (a + B) ** 2))
    g = sat32(q * (y + ONE))
    return rq8(g, mult, shift)


def layernorm(x, G_, Bt, SH, mult, shift):
    n = len(x)
    mean = sum(x) // n
    ys = [sat16((xi - mean) >> SH) for xi in x]
    var = sum(v * v for v in ys) // n
    std = max(math.isqrt(var), 1)
    inv = (1 << 31) // std
    z = [(v * inv) >> 16 for v in ys]
    return [rq8(sat32(zi * G_[i] + Bt[i]), mult, shift) for i, zi in enumerate(z)]


# --- helpers ----------------------------------------------------------------------------------

def stream(*steps):
    """Bytes of (Instruction, payload) pairs (or bare Instructions)."""
    out = bytearray()
    for step in steps:
        ins, payload = step if isinstance(step, tuple) else (step, b"")
        assert len(payload) == payload_bytes(G, ins)
        out += encode(ins) + payload
    return bytes(out)


def vec(op, **fields):
    return Instruction(Opcode.VEC, tag=op, **fields)


def load_sp_vector(machine, base, values):
    rows = -(-len(values) // G.cols)
    flat = np.zeros(rows * G.cols, np.int64)
    flat[:len(values)] = values
    machine.sp[base:base + rows] = 0
    machine.sp[base:base + rows, :G.cols] = flat.reshape(rows, G.cols)


def load_acc_vector(machine, base, values):
    rows = -(-len(values) // G.cols)
    flat = np.zeros(rows * G.cols, np.int64)
    flat[:len(values)] = values
    machine.acc[base:base + rows] = flat.reshape(rows, G.cols)


def sp_vector(machine, base, n):
    return [int(v) for v in machine.sp[base:base + -(-n // G.cols), :G.cols].reshape(-1)[:n]]


def acc_vector(machine, base, n):
    return [int(v) for v in machine.acc[base:base + -(-n // G.cols)].reshape(-1)[:n]]


def status(machine):
    reply = machine.run(encode(Instruction(Opcode.STATUS)))
    return ErrorCode(reply[0]), reply[1], int.from_bytes(reply[2:4], "little")


def machine(strict=False, geometry=G):
    return FunctionalMachine(geometry, strict=strict)


rng = np.random.default_rng(0)


# --- vector ops -------------------------------------------------------------------------------

@pytest.mark.parametrize("perchan", [False, True])
def test_req_and_add(perchan):
    m = machine()
    n = 10
    a = [int(v) for v in rng.integers(-2**31, 2**31, n)]
    o = [int(v) for v in rng.integers(-2**31, 2**31, n)]
    mults = [int(v) for v in rng.integers(0, 2**32, n)]      # only the low 16 bits count
    load_acc_vector(m, 0, a)
    load_acc_vector(m, 4, o)
    load_acc_vector(m, 8, [v - 2**32 if v >= 2**31 else v for v in mults])
    m.sp[20:23] = 99
    flags = Flags.PERCHAN if perchan else 0
    M = [v & 0xFFFF for v in mults] if perchan else [40000] * n
    m.run(stream(vec(VecOp.REQ, flags=flags, addr0=0, addr1=8, addr2=20, count0=n,
                     mult=40000, shift=20)))
    assert sp_vector(m, 20, 12) == [rq8(a[i], M[i], 20) for i in range(n)] + [0, 0]
    m.run(stream(vec(VecOp.ADD, flags=flags, addr0=0, addr1=4, addr2=8, count0=n,
                     mult=40000, shift=3)))
    assert acc_vector(m, 0, 12)[:n] == [sat32(a[i] + rq32(o[i], M[i], 3)) for i in range(n)]
    assert acc_vector(m, 0, 12)[n:] == [0, 0]
    assert not m.failed


def test_mul_and_gelu():
    m = machine()
    n = 256
    a = list(range(-128, 128))
    b = [int(v) for v in rng.integers(-128, 128, n)]
    load_sp_vector(m, 0, a)
    load_sp_vector(m, 64, b)
    m.run(stream(vec(VecOp.MUL, addr0=0, addr1=64, addr2=128, count0=n, mult=3000, shift=14)))
    assert sp_vector(m, 128, n) == [rq8(x * y, 3000, 14) for x, y in zip(a, b)]
    B, C = -31, 961
    m.run(stream(Instruction(Opcode.SETP, tag=Param.GELU_B, addr0=B & 0xFFFF, addr1=0xFFFF),
                 Instruction(Opcode.SETP, tag=Param.GELU_C, addr0=C),
                 Instruction(Opcode.SETP, tag=Param.GELU_ONE, addr0=C),
                 vec(VecOp.GELU, addr0=0, addr2=128, count0=n, mult=700, shift=16)))
    assert m.params[:3] == [B, C, C]
    assert sp_vector(m, 128, n) == [gelu(q, B, C, C, 700, 16) for q in a]


@pytest.mark.parametrize("use_pos", [False, True])
def test_softmax_with_causal_length(use_pos):
    m = machine()
    x = [int(v) for v in rng.integers(-2**20, 2**20, 12)]
    load_acc_vector(m, 0, x)
    m.sp[40:44] = 55
    m.pos = 5
    flags = Flags.POS if use_pos else 0
    m.run(stream(vec(VecOp.SOFTMAX, flags=flags, addr0=0, addr2=40, count0=2, count1=12,
                     mult=3, shift=6)))
    n = 2 + (5 if use_pos else 0)
    assert sp_vector(m, 40, 12) == softmax(x, n, 12, 3, 6)
    # A fully masked row, and a total shorter than n.
    m.run(stream(vec(VecOp.SOFTMAX, addr0=0, addr2=40, count0=0, count1=3, mult=1)))
    assert sp_vector(m, 40, 4) == [0, 0, 0, 0]
    m.run(stream(vec(VecOp.SOFTMAX, addr0=0, addr2=40, count0=6, count1=1, mult=1)))
    assert sp_vector(m, 40, 8) == softmax(x, 6, 6, 1, 0) + [0, 0]


def test_softmax_of_extremes():
    m = machine()
    x = [2**31 - 1, -2**31, 0, 2**31 - 1]
    load_acc_vector(m, 0, x)
    m.run(stream(vec(VecOp.SOFTMAX, addr0=0, addr2=8, count0=4, mult=65535, shift=0)))
    assert sp_vector(m, 8, 4) == softmax(x, 4, 4, 65535, 0)


def test_iexp_stays_exact_over_its_domain():
    from firmware.functional import _iexp
    d = np.arange(-32768, 1)
    assert _iexp(d).tolist() == [iexp(int(v)) for v in d]


def test_layernorm():
    m = machine()
    n = 9
    x = [int(v) for v in rng.integers(-2**24, 2**24, n)]
    g = [int(v) for v in rng.integers(-2**11, 2**11, n)]
    bt = [int(v) for v in rng.integers(-2**20, 2**20, n)]
    load_acc_vector(m, 0, x)
    load_acc_vector(m, 10, g)
    load_acc_vector(m, 13, bt)
    m.run(stream(vec(VecOp.LAYERNORM, addr0=0, addr1=10, addr2=30, count0=n, count1=9 + 32,
                     mult=9000, shift=24)))
    assert sp_vector(m, 30, 12) == layernorm(x, g, bt, 9, 9000, 24) + [0, 0, 0]


def test_embed_argmax_put_col_copy():
    m = machine()
    n = 5                           # elements per table entry
    wte = rng.integers(-128, 128, (10, n))
    wpe = rng.integers(-128, 128, (6, n))
    for base, table in ((0, wte), (20, wpe)):
        for v, entry in enumerate(table):
            for i, e in enumerate(entry):
                m.sp[base + (v // G.cols) * n + i, v % G.cols] = e
    m.tok[:4] = [7, 1, 2, 3]
    m.pos = 0
    m.run(stream(vec(VecOp.EMBED, addr0=0, addr1=20, addr2=2, count0=n, mult=300, count1=7)))
    assert acc_vector(m, 2, n) == [int(wte[7, i]) * 300 + int(wpe[0, i]) * 7 for i in range(n)]
    m.pos = 5
    m.tok[5] = 9
    m.run(stream(vec(VecOp.EMBED, addr0=0, addr1=20, addr2=2, count0=n, mult=65535, count1=1)))
    assert acc_vector(m, 2, n) == [int(wte[9, i]) * 65535 + int(wpe[5, i]) for i in range(n)]
    load_acc_vector(m, 0, [3, 9, -1, 9, 2])
    m.run(stream(vec(VecOp.ARGMAX, addr0=0, count0=5)))
    assert m.tok[6] == 1
    m.run(stream(vec(VecOp.ARGMAX, addr0=0, count0=0)))
    assert m.tok[6] == 0
    # PUT_COL: element i of a vector into lane POS % cols of row addr1 + (POS // cols) * n + i.
    load_sp_vector(m, 40, [11, 12, 13, 14, 15])
    before = m.sp.copy()
    m.run(stream(vec(VecOp.PUT_COL, addr0=40, addr1=50, count0=n)))
    changed = np.argwhere(m.sp != before)
    assert [tuple(c) for c in changed] == [(50 + n + i, 1) for i in range(n)]
    assert m.sp[50 + n:50 + 2 * n, 1].tolist() == [11, 12, 13, 14, 15]
    # COPY_SP with POS: rows addr1 + r*count1 + POS; COPY_ACC: rows.
    m.run(stream(vec(VecOp.COPY_SP, flags=Flags.POS, addr0=40, addr1=60, count0=2, count1=8)))
    assert (m.sp[65] == m.sp[40]).all() and (m.sp[73] == m.sp[41]).all()
    m.run(stream(vec(VecOp.COPY_ACC, addr0=0, addr2=30, count0=2)))
    assert (m.acc[30:32] == m.acc[0:2]).all()


def test_load_acc_store_round_trip():
    m = machine()
    rows = rng.integers(-2**31, 2**31, (3, G.cols))
    reply = m.run(stream((Instruction(Opcode.LOAD_ACC, addr0=5, count0=3),
                          pack_acc_lanes(rows, 32)),
                         Instruction(Opcode.STORE, addr0=5, count0=3)))
    assert reply == pack_acc_lanes(rows, 32)


def test_os_matmul_without_beats_writes_nothing():
    g = Geometry(4, 4, "os", scratchpad_kib=1, accumulator_kib=1)
    m = machine(geometry=g)
    m.acc[0] = 7
    m.run(encode(Instruction(Opcode.MATMUL, count0=4, count1=0)))
    assert (m.acc[0] == 7).all()


# --- programs ---------------------------------------------------------------------------------

def load_program(words):
    payload = b"".join(encode(w) for w in words)
    return (Instruction(Opcode.LOAD_PROG, addr0=0, count0=len(words)), payload)


def counting_program():
    """The control flow of a generator, without a model (ARGMAX over one element is 0)."""
    return [
        vec(VecOp.EMBED, addr0=0, addr1=8, addr2=0, count0=1, mult=1),      # 0: acc0 = T[tok]
        Instruction(Opcode.BRANCH, tag=Branch.PROMPT, addr0=4),             # 1
        vec(VecOp.ARGMAX, addr0=0, count0=1),                                # 2: TOK[POS+1] = 0
        Instruction(Opcode.EMIT),                                            # 3
        Instruction(Opcode.BRANCH, tag=Branch.LOOP, addr0=0),               # 4
        Instruction(Opcode.HALT),                                            # 5
    ]


def run_ins(p, n, tokens=None):
    tokens = list(range(1, p + 1)) if tokens is None else tokens
    payload = b"".join(t.to_bytes(2, "little") for t in tokens)
    return (Instruction(Opcode.RUN, addr0=0, count0=p, count1=n), payload)


def test_run_loops_over_prompt_and_generation():
    m = machine()
    reply = m.run(stream(load_program(counting_program()), run_ins(3, 4)))
    assert len(reply) == 8 == reply_bytes(G, run_ins(3, 4)[0])
    assert reply == b"\x00\x00" * 4
    assert m.pos == 3 + 4 - 1 and m.emitted == 4
    # Positions 0, 1 skip ARGMAX/EMIT (the next token is a prompt token); 2..5 predict and
    # emit; then the LOOP falls through to HALT.
    assert m.steps == 2 * 3 + 4 * 5 + 1
    assert not m.failed
    # N = 0: the prompt only, no reply.
    assert m.run(stream(run_ins(2, 0))) == b""
    assert m.pos == 2


def test_emit_sends_argmax_and_pads_at_halt():
    m = machine()
    load_acc_vector(m, 0, [0, 0, 5, 1])
    words = [vec(VecOp.ARGMAX, addr0=0, count0=4), Instruction(Opcode.EMIT),
             Instruction(Opcode.EMIT), Instruction(Opcode.HALT)]
    reply = m.run(stream(load_program(words), run_ins(1, 3)))
    assert reply == b"\x02\x00\x02\x00\xff\xff"
    words = [vec(VecOp.ARGMAX, addr0=0, count0=4)] + [Instruction(Opcode.EMIT)] * 3 + \
        [Instruction(Opcode.HALT)]
    reply = m.run(stream(load_program(words), run_ins(1, 2)))
    assert reply == b"\x02\x00\x02\x00"        # EMIT past N sends nothing


# --- errors -----------------------------------------------------------------------------------

def test_sticky_error_skips_until_reset():
    m = machine()
    m.acc[0] = 1
    bad = Instruction(Opcode.STORE, addr0=G.acc_depth - 1, count0=2)
    reply = m.run(stream(bad, Instruction(Opcode.SYNC, tag=5),
                         (Instruction(Opcode.LOAD_SP, addr0=0, count0=1),
                          pack_rows([[1, 2, 3, 4]], 8, 4)),
                         run_ins(2, 3)))
    assert reply == b"\xff" * (2 * G.acc_row_bytes + 1 + 6)
    assert (m.sp[0] == 0).all()     # skipped, its payload consumed
    assert status(m) == (ErrorCode.OUT_OF_RANGE, Opcode.STORE.value, HOST_WORD)
    m.run(encode(Instruction(Opcode.RESET)))
    assert status(m) == (ErrorCode.OK, 0, 0)
    assert m.run(stream(Instruction(Opcode.SYNC, tag=5))) == b"\x05"


@pytest.mark.parametrize("ins,code", [
    (Instruction(Opcode.MATMUL, count0=1, count1=5), ErrorCode.DATAFLOW_LIMIT),
    (Instruction(Opcode.MATMUL, addr0=G.sp_depth, count0=1, count1=1), ErrorCode.OUT_OF_RANGE),
    (Instruction(Opcode.VEC, tag=11), ErrorCode.ILLEGAL_OPCODE),
    (Instruction(Opcode.BRANCH, tag=3), ErrorCode.ILLEGAL_OPCODE),
    (Instruction(Opcode.LOAD_PROG, addr0=G.program_words, count0=0), ErrorCode.OK),
    (Instruction(Opcode.RUN, count0=0, count1=1), ErrorCode.BAD_RUN),
    (Instruction(Opcode.RUN, count0=10, count1=7), ErrorCode.BAD_RUN),
    (vec(VecOp.REQ, addr0=G.acc_depth - 1, count0=5), ErrorCode.OUT_OF_RANGE),
    (vec(VecOp.SOFTMAX, addr2=G.sp_depth - 1, count0=1, count1=5), ErrorCode.OUT_OF_RANGE),
    (Instruction(Opcode.RUN, addr0=G.program_words, count0=1), ErrorCode.BAD_RUN),
    (Instruction(Opcode.EMIT), ErrorCode.ILLEGAL_OPCODE),       # program-only
    (Instruction(Opcode.HALT), ErrorCode.ILLEGAL_OPCODE),
    # Several errors: the smallest code wins.
    (Instruction(Opcode.MATMUL, addr2=G.acc_depth, count0=1, count1=5), ErrorCode.OUT_OF_RANGE),
])
def test_illegal_host_instructions(ins, code):
    m = machine()
    size = payload_bytes(G, ins)
    reply = m.run(encode(ins) + bytes(size))
    assert reply == b"\xff" * reply_bytes(G, ins)
    assert status(m) == ((code, ins.opcode.value, HOST_WORD) if code else (ErrorCode.OK, 0, 0))


def test_missing_unit_and_missing_program_memory():
    g = Geometry(4, 4, "ws", scratchpad_kib=1, accumulator_kib=1, units=("elementwise",))
    m = machine(geometry=g)
    m.run(encode(vec(VecOp.GELU, count0=1)))
    assert status(m)[0] == ErrorCode.NO_UNIT
    m.run(encode(Instruction(Opcode.RESET)))
    reply = m.run(encode(Instruction(Opcode.RUN, count0=1, count1=2)) + bytes(2))
    assert reply == b"\xff" * 4 and status(m)[0] == ErrorCode.BAD_RUN


def test_reserved_opcode_on_the_host_stream():
    m = machine()
    word = bytearray(16)
    word[0] = 31        # opcode 31 is reserved
    m.run(bytes(word))
    assert status(m) == (ErrorCode.ILLEGAL_OPCODE, 31, HOST_WORD)


@pytest.mark.parametrize("words,code,word", [
    ([Instruction(Opcode.EMIT), Instruction(Opcode.STORE, count0=1)], ErrorCode.ILLEGAL_OPCODE, 1),
    ([Instruction(Opcode.SYNC)], ErrorCode.ILLEGAL_OPCODE, 0),
    ([Instruction(Opcode.BRANCH, addr0=G.program_words)], ErrorCode.OUT_OF_RANGE, 0),
    ([Instruction(Opcode.NOP)] * 3, None, 3),                  # runs off the end: no HALT
    ([vec(VecOp.ARGMAX, addr0=0, count0=1), Instruction(Opcode.EMIT),
      Instruction(Opcode.BRANCH, tag=Branch.LOOP, addr0=0), vec(VecOp.ARGMAX, count0=1)],
     ErrorCode.OUT_OF_RANGE, 3),                               # TOK[POS+1] beyond the buffer
])
def test_a_failing_run_pads_its_reply_and_names_the_word(words, code, word):
    m = machine()
    m.run(stream(load_program(words)))
    opcode = words[word].opcode.value if code is not None else 0xFF
    if code is None:        # the rest of program memory is NOP words, then its end
        code, word = ErrorCode.OUT_OF_RANGE, G.program_words
    p, n = (14, 2) if word == 3 else (1, 2)
    reply = m.run(stream(run_ins(p, n)))
    assert len(reply) == 2 * n
    assert status(m) == (code, opcode, word)


def test_strict_mode_raises_with_the_reason():
    m = FunctionalMachine(G)
    with pytest.raises(IsaError, match="OUT_OF_RANGE: STORE_SP: scratchpad rows"):
        m.execute(Instruction(Opcode.STORE_SP, addr0=G.sp_depth - 1, count0=2), b"")
    with pytest.raises(IsaError, match="NO_UNIT"):
        FunctionalMachine(Geometry(4, 4)).execute(vec(VecOp.GELU, count0=1))
