"""Controller v1 through the Accelerator's byte streams (Amaranth simulator): program memory,
RUN and its registers, LOAD_ACC, STATUS/RESET and every error of rtl/isa.py.

Each reply is checked against explicit bytes and the ISA interpreter, each cycle count
against the cycle model. Random streams over every instruction are in
tests/firmware/test_cycles.py (Amaranth) and tests/firmware/test_sim.py (Verilator).
"""

import random

from firmware.cycles import cycle_report
from firmware.functional import FunctionalBackend
from firmware.program import reply_bytes
from rtl.isa import (Geometry, Instruction, Opcode, Flags, Branch, VecOp, ErrorCode, encode,
                     vector_op_cycles)
from rtl.top import Accelerator
from tests.rtl.streams import run_stream

G = Geometry(rows=2, cols=2, scratchpad_kib=0.25, accumulator_kib=0.25, banks=2,
             program_kib=0.25, tokens=8)
HOST = b"\xff\xff"


def run(g, steps, raw=b""):
    """Run ``steps`` (then ``raw`` bytes) on the RTL; the reply, after checking it against the
    interpreter and its cycles against the model."""
    stream = b"".join(encode(i) + p for i, p in steps) + raw
    n_reply = sum(reply_bytes(g, i) for i, _ in steps)
    reply, cycles = run_stream(Accelerator(g), stream, n_reply)
    expected, _ = FunctionalBackend(g).run(stream, n_reply)
    assert reply == expected
    assert cycles == cycle_report(stream, g).total_cycles
    return reply


def load_prog(words, addr0=0):
    return (Instruction(Opcode.LOAD_PROG, addr0=addr0, count0=len(words)),
            b"".join(encode(w) for w in words))


def tokens(*ids):
    return b"".join(i.to_bytes(2, "little") for i in ids)


def test_load_acc_then_store_raw_rows():
    rnd = random.Random(1)
    rows = bytes(rnd.randrange(256) for _ in range(3 * G.acc_row_bytes))
    reply = run(G, [(Instruction(Opcode.LOAD_ACC, addr0=5, count0=3), rows),
                    (Instruction(Opcode.STORE, addr0=5, count0=3), b"")])
    assert reply == rows


def test_run_emits_tokens_pads_and_serves_a_second_run():
    """EMIT sends TOK[POS+1] while fewer than N are sent; HALT pads to 2N; POS runs to
    last = max(P-1, P+N-2) by LOOP; PROMPT skips while the next token is a prompt token."""
    echo = [Instruction(Opcode.EMIT), Instruction(Opcode.BRANCH, tag=Branch.LOOP, addr0=3),
            Instruction(Opcode.HALT)]
    gated = [Instruction(Opcode.BRANCH, tag=Branch.PROMPT, addr0=8), Instruction(Opcode.EMIT),
             Instruction(Opcode.BRANCH, tag=Branch.LOOP, addr0=6), Instruction(Opcode.HALT)]
    always = [Instruction(Opcode.BRANCH, tag=Branch.ALWAYS, addr0=12), Instruction(Opcode.STORE),
              Instruction(Opcode.HALT)]
    reply = run(G, [
        load_prog(echo, 3), load_prog(gated, 6), load_prog(always, 10),
        (Instruction(Opcode.RUN, addr0=3, count0=3, count1=2), tokens(7, 300, 9)),
        (Instruction(Opcode.RUN, addr0=3, count0=2, count1=1), tokens(1, 2)),
        (Instruction(Opcode.RUN, addr0=6, count0=4, count1=3), tokens(5, 6, 7, 8)),
        (Instruction(Opcode.RUN, addr0=10, count0=1, count1=2), tokens(4)),
        (Instruction(Opcode.STATUS), b""),
    ])
    # echo: positions 0..3, the first two EMITs send TOK[1], TOK[2]
    assert reply[:4] == tokens(300, 9)
    assert reply[4:6] == tokens(2)
    # gated: the PROMPT branch skips EMIT at positions 0..2; at 3..5 it sends TOK[4..6],
    # which nothing wrote (no ARGMAX here), so zeros
    assert reply[6:12] == tokens(0, 0, 0)
    assert reply[12:16] == b"\xff" * 4       # ALWAYS jumped over the STORE to HALT
    assert reply[16:] == bytes(4)


def test_status_names_each_error_and_reset_recovers():
    g = Geometry(rows=2, cols=2, scratchpad_kib=0.25, accumulator_kib=0.25, banks=1,
                 program_kib=0.25, tokens=8)
    words = g.program_words
    cases = [
        # (steps, raw bytes, expected STATUS)
        ([], bytes([0x1F]) + bytes(15), bytes([ErrorCode.ILLEGAL_OPCODE, 0x1F]) + HOST),
        ([(Instruction(Opcode.HALT), b"")], b"", bytes([ErrorCode.ILLEGAL_OPCODE, Opcode.HALT.value]) + HOST),
        ([(Instruction(Opcode.SETP, tag=8), b"")], b"", bytes([ErrorCode.ILLEGAL_OPCODE, 14]) + HOST),
        ([(Instruction(Opcode.VEC, tag=VecOp.GELU), b"")], b"", bytes([ErrorCode.NO_UNIT, 13]) + HOST),
        ([(Instruction(Opcode.LOAD_SP, addr0=g.sp_depth - 1, count0=2), bytes(2 * g.sp_row_bytes))],
         b"", bytes([ErrorCode.OUT_OF_RANGE, 1]) + HOST),
        ([(Instruction(Opcode.STORE, addr0=g.acc_depth, count0=1), b"")], b"",
         bytes([ErrorCode.OUT_OF_RANGE, 4]) + HOST),
        ([(Instruction(Opcode.LOAD_PROG, addr0=words - 1, count0=2), bytes(32))], b"",
         bytes([ErrorCode.OUT_OF_RANGE, 9]) + HOST),
        ([(Instruction(Opcode.MATMUL, count0=1, count1=3), b"")], b"",
         bytes([ErrorCode.DATAFLOW_LIMIT, 3]) + HOST),
        ([(Instruction(Opcode.RUN, count0=0, count1=2), b"")], b"", bytes([ErrorCode.BAD_RUN, 10]) + HOST),
        ([(Instruction(Opcode.RUN, count0=5, count1=4), bytes(10))], b"",
         bytes([ErrorCode.BAD_RUN, 10]) + HOST),
        ([load_prog([Instruction(Opcode.NOP), Instruction(Opcode.SYNC)], 4),
          (Instruction(Opcode.RUN, addr0=4, count0=1, count1=3), bytes(2))], b"",
         bytes([ErrorCode.ILLEGAL_OPCODE, 7, 5, 0])),
        ([load_prog([Instruction(Opcode.BRANCH, tag=Branch.ALWAYS, addr0=words)], 2),
          (Instruction(Opcode.RUN, addr0=2, count0=1, count1=1), bytes(2))], b"",
         bytes([ErrorCode.OUT_OF_RANGE, 15, 2, 0])),
        ([load_prog([Instruction(Opcode.NOP)], words - 1),
          (Instruction(Opcode.RUN, addr0=words - 1, count0=1, count1=1), bytes(2))], b"",
         bytes([ErrorCode.OUT_OF_RANGE, 0xFF]) + words.to_bytes(2, "little")),
    ]
    rows = bytes(range(2 * g.sp_row_bytes))
    after = [(Instruction(Opcode.SYNC, tag=9), b""),
             (Instruction(Opcode.LOAD_SP, addr0=0, count0=2), rows),
             (Instruction(Opcode.STORE_SP, addr0=0, count0=2), b""),
             (Instruction(Opcode.RUN, addr0=0, count0=1, count1=2), bytes(2))]
    tail = [(Instruction(Opcode.STATUS), b""), (Instruction(Opcode.RESET), b""),
            (Instruction(Opcode.STATUS), b"")]
    for steps, raw, status in cases:
        # A reserved opcode is raw bytes; everything else goes through encode.
        pre = b"".join(encode(i) + p for i, p in steps) + raw
        n_pre = sum(reply_bytes(g, i) for i, _ in steps)
        post = after + tail + after
        stream = pre + b"".join(encode(i) + p for i, p in post)
        n_reply = n_pre + sum(reply_bytes(g, i) for i, _ in post)
        reply, cycles = run_stream(Accelerator(g), stream, n_reply)
        expected, _ = FunctionalBackend(g).run(stream, n_reply)
        assert reply == expected, status
        assert cycles == cycle_report(stream, g).total_cycles, status
        assert set(reply[:n_pre]) <= {0xFF}, status
        skipped = 1 + 2 * g.sp_row_bytes + 4
        body = reply[n_pre:]
        assert body[:skipped] == b"\xff" * skipped, status
        assert body[skipped:skipped + 8] == status + bytes(4)
        assert body[skipped + 8:skipped + 9 + len(rows)] == b"\x09" + rows


def test_documented_latencies():
    """The figures of docs/rtl.md ("Timing"), measured on the RTL at 8x8."""
    def cycles(g, *instructions, payload=b"", reply=1):
        stream = b"".join(encode(i) for i in instructions) + payload
        return run_stream(Accelerator(g), stream, reply)[1]

    g = Geometry(rows=8, cols=8, scratchpad_kib=1, accumulator_kib=1, program_kib=1, tokens=8)
    nop, sync, halt = Instruction(Opcode.NOP), Instruction(Opcode.SYNC), Instruction(Opcode.HALT)
    host_word = cycles(g, nop, sync) - cycles(g, sync)
    assert host_word == 19                         # 16 bytes + DECODE + CHECK + dispatch

    def run_nops(k):
        words = [nop] * k + [halt] * (6 - k)
        return cycles(g, Instruction(Opcode.LOAD_PROG, count0=6), *words,
                      Instruction(Opcode.RUN, count0=1, count1=1), payload=bytes(2), reply=2)
    assert run_nops(5) - run_nops(4) == 5                   # PROGRAM_FETCH_CYCLES + dispatch

    for dataflow, busy in (("ws", 25), ("os", 32)):
        g = Geometry(rows=8, cols=8, dataflow=dataflow, scratchpad_kib=1, accumulator_kib=1)
        one_beat = Instruction(Opcode.MATMUL, count0=1, count1=1)
        # SYNC waits for the engine: it dispatches `busy` cycles after the MATMUL did,
        # instead of host_word cycles after it.
        assert cycles(g, one_beat, sync) - cycles(g, nop, sync) == busy - host_word

    def store(rows, flags):
        n = rows * (g.out_row_bytes if flags else g.acc_row_bytes)
        return cycles(g, Instruction(Opcode.STORE, count0=rows, flags=flags), reply=n)
    assert store(3, Flags.REQUANT) - store(2, Flags.REQUANT) == g.cols + 9
    assert store(3, 0) - store(2, 0) == g.acc_row_bytes + 1


def test_the_front_end_fetches_while_the_vector_unit_runs():
    """docs/rtl.md ("Controller v1"): a VEC's next word is fetched, decoded and checked while
    the unit is busy and dispatches in the first cycle the unit is idle again, 1 + N cycles
    after the VEC (N = vector_op_cycles), or after its own fetch (5 cycles) if that is
    later. Measured on the RTL."""
    g = Geometry(rows=8, cols=8, scratchpad_kib=1, accumulator_kib=1, program_kib=1, tokens=8,
                 units=("elementwise",))
    long = Instruction(Opcode.VEC, tag=VecOp.ADD, addr0=0, addr1=8, count0=32, mult=1)
    short = Instruction(Opcode.VEC, tag=VecOp.COPY_ACC, addr0=0, addr2=8, count0=1)
    halt = Instruction(Opcode.HALT)

    def run_words(*words):
        words += (halt,) * (3 - len(words))     # the same program length: the same load
        return run_stream(Accelerator(g), encode(Instruction(Opcode.LOAD_PROG, count0=len(words)))
                          + b"".join(encode(w) for w in words)
                          + encode(Instruction(Opcode.RUN, count0=1, count1=1)) + bytes(2), 2)[1]
    n_long, n_short = vector_op_cycles(long, g), vector_op_cycles(short, g)
    assert 1 + n_long > 5
    assert run_words(long, long, halt) - run_words(long, halt) == 1 + n_long
    assert run_words(long, short, halt) - run_words(long, halt) == max(5, 1 + n_short)


def test_emit_right_after_argmax_sends_the_new_token():
    """ARGMAX writes TOK[POS+1] in the unit's last busy cycle and an EMIT may dispatch in the
    next one (its fetch ran beside the unit): the EMIT must send the new id, as the
    interpreter does."""
    g = Geometry(rows=2, cols=2, scratchpad_kib=0.25, accumulator_kib=0.25, banks=2,
                 program_kib=0.25, tokens=8, units=("argmax",))
    scores = [5, -3, 9, 9, 2, 11, -7, 0]            # the max, 11, at index 5
    rows = b"".join(v.to_bytes(4, "little", signed=True) for v in scores)
    argmax = Instruction(Opcode.VEC, tag=VecOp.ARGMAX, addr0=0, count0=len(scores))
    words = [argmax, Instruction(Opcode.EMIT), Instruction(Opcode.HALT)]
    reply = run(g, [(Instruction(Opcode.LOAD_ACC, count0=len(scores) // 2), rows),
                    load_prog(words), (Instruction(Opcode.RUN, count0=1, count1=1), tokens(3))])
    assert reply == tokens(5)


def test_the_dispatch_check_sees_the_tokens_and_pos_of_its_word():
    """The error check runs in the two cycles before DISPATCH (DECODE, CHECK): EMBED's table
    row depends on TOK[POS], which a RUN writes just before its first word and BRANCH LOOP
    moves; the check must see the values the word executes with."""
    g = Geometry(rows=2, cols=2, scratchpad_kib=0.25, accumulator_kib=0.25, banks=1,
                 program_kib=0.25, tokens=8, units=("embed",))
    # Table rows from addr0 + (TOK[POS] // cols) * n: legal for ids below 2 * cols * 8 / n.
    n, table = 2, g.sp_depth - 16
    embed = Instruction(Opcode.VEC, tag=VecOp.EMBED, addr0=table, addr1=0, addr2=0, count0=n,
                        mult=1, count1=1)
    words = [embed, Instruction(Opcode.EMIT), Instruction(Opcode.BRANCH, tag=Branch.LOOP),
             Instruction(Opcode.HALT)]
    status = (Instruction(Opcode.STATUS), b"")
    for ids, code in (((3,), ErrorCode.OK),                   # P = 1: TOK[0] written just before
                      ((16,), ErrorCode.OUT_OF_RANGE),        # rows table + 16 .. + 17: past the end
                      ((1, 2, 16), ErrorCode.OUT_OF_RANGE),   # at POS 2, after two LOOPs
                      ((1, 2, 15), ErrorCode.OK)):
        reply = run(g, [load_prog(words), (Instruction(Opcode.RUN, count0=len(ids), count1=1),
                                           tokens(*ids)), status])
        assert reply[2] == code, ids
        if code:                                            # the EMBED, program word 0
            assert reply[3] == Opcode.VEC.value and reply[4:6] == bytes(2), ids
