"""The controller: runs ``rtl/isa.py`` programs from the host byte stream.

Two parts work side by side:

* the **front end** reads instruction words, executes loads, stores,
  requantization and SYNC itself, and hands MATMULs to the engine. It runs a
  non-MATMUL instruction only when the engine is idle, so every instruction
  sees the effects of the ones before it.
* the **matmul engine** streams tiles through the systolic array and writes
  result rows back to the accumulator (read-modify-write when accumulating).
  In WS a tile reads its weights from the scratchpad's wide port
  (``sp_banks`` rows a cycle) while its own first beats stream: the rows
  travel through the array as a wave just ahead of the tile's swap beat
  (``rtl/array.py``), so the next tile may start as soon as this one has
  issued its beats and weight reads (``max(m, Geometry.weight_cycles(k))``
  cycles). In OS it starts the next tile as soon as the array's result chain
  allows.

Timing is deterministic given the input bytes (``firmware/cycles.py`` models it
to the cycle); the constants it relies on are the class attributes here.
"""

from amaranth import *
from amaranth.lib import wiring, stream, data
from amaranth.lib.wiring import In, Out

from amaranth.lib.memory import Memory

from .isa import (Geometry, INSTRUCTION, INSTRUCTION_BYTES, Opcode, Flags, REQUANT_LATENCY,
                  WRITEBACK_STAGES, HOST_ONLY, PROGRAM_ONLY, NUM_PARAMS, VecOp, VEC_UNIT, Branch,
                  ErrorCode, SP_READ_LATENCY)
from .requant import Requantizer
from .resetless import data_signal

__all__ = ["Controller", "host_ports"]


def host_ports() -> dict:
    """The host side of the controller, and so of the Accelerator top."""
    return {
        "i": In(stream.Signature(8)),   # instruction words and payloads
        "o": Out(stream.Signature(8)),  # replies
        "busy": Out(1),                 # work in flight (a status LED)
    }


class Controller(wiring.Component):
    """Members
    -------
    i : In(stream.Signature(8))   host bytes
    o : Out(stream.Signature(8))  reply bytes
    busy : Out(1)                 something is executing or queued

    The controller drives the ports of the blocks it is given; the
    ``Accelerator`` top adds them to the design.
    """

    def __init__(self, geometry: Geometry, *, scratchpad, accumulator, array, requantizer,
                 vector=None):
        if bool(geometry.units) != (vector is not None):
            raise ValueError("a vector unit is needed exactly when geometry.units names units")
        self.geometry = geometry
        self.vector = vector
        self.scratchpad = scratchpad
        self.accumulator = accumulator
        self.array = array
        self.requantizer = requantizer
        super().__init__(host_ports())

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        rows, cols, iw, aw = g.rows, g.cols, g.input_width, g.acc_width
        sp, acc, arr, rq = self.scratchpad, self.accumulator, self.array, self.requantizer
        latency = arr.latency
        assert latency == g.array_latency and arr.os_spacing == g.os_spacing
        assert rq.LATENCY == REQUANT_LATENCY

        # ---------------------------------------------------------------- engine
        EMPTY, FULL = range(2)
        slot = Signal(INSTRUCTION)          # the next MATMUL
        slot_state = Signal(1)
        cur = Signal(INSTRUCTION)           # the MATMUL streaming now
        streaming = Signal()
        beat = Signal(16)
        drain = Signal(range(latency + rows + 4))
        engine_idle = Signal()
        w_reading = Signal()                # WS: the streaming tile reads its weights
        m.d.comb += engine_idle.eq((slot_state == EMPTY) & ~streaming & (drain == 0) & ~w_reading)

        sp_r1_en = Signal()
        sp_r1_addr = Signal(16)

        # One register stage between the scratchpad read and the array input, and
        # SP_READ_LATENCY - 1 more: the scratchpad registers its rows before the bank
        # multiplexer (rtl/memory.py), so the array's inputs take the control signals
        # that go with a read ``late`` by as many cycles.
        assert sp.latency == SP_READ_LATENCY
        extra = sp.latency - 1

        def late(value, shape=None):
            for k in range(extra):
                reg = Signal(shape if shape is not None else value.shape(),
                             name=f"{Value.cast(value).name}_late{k + 1}")
                m.d.sync += reg.eq(value)
                value = reg
            return value

        a_valid = Signal()
        a_first = Signal()
        a_last = Signal()
        a_k = Signal(16)
        tag_layout = data.StructLayout({"addr": 16, "m": 16, "accumulate": 1})
        a_tag = Signal(tag_layout)
        m.d.comb += arr.in_tag.eq(late(a_tag, tag_layout))
        m.d.sync += a_valid.eq(streaming)

        if g.dataflow == "ws":
            last_beat = streaming & (beat == cur.count0 - 1)
            # The weights: chunk c (rows c * W on, the wide read) in the c-th cycle after
            # start, beside beat c if there is one. Chunk 0 then reaches the array with
            # the swap beat, later chunks behind it as the array's weight wave expects.
            W, chunks = arr.weight_rows, arr.weight_chunks
            # W = min(sp_banks, rows); k <= rows, so ceil(k / sp_banks) chunks (a shift).
            log_b = g.sp_banks.bit_length() - 1
            w_chunk = Signal(range(chunks + 1))     # the chunk read now
            w_count = Signal(range(chunks + 1))     # the chunks of cur
            w_write = Signal()
            w_written = Signal(range(chunks))
            last_chunk = w_reading & (w_chunk == w_count - 1)
            m.d.comb += [
                sp_r1_addr.eq(cur.addr1 + (w_chunk << log_b)),
                sp_r1_en.eq(w_reading),
                arr.w_load.eq(late(w_write)),
                arr.w_chunk.eq(late(w_written)),
            ]
            for o in range(W):
                for j in range(cols):
                    m.d.comb += arr.w_data[o][j].eq(sp.r1_rows[o][j * iw:(j + 1) * iw])
            m.d.sync += [w_write.eq(w_reading), w_written.eq(w_chunk)]
            start = (slot_state == FULL) & (~streaming | last_beat) & (~w_reading | last_chunk)
            with m.If(start):
                m.d.sync += [w_chunk.eq(0), w_count.eq((slot.count1 + (g.sp_banks - 1)) >> log_b),
                             w_reading.eq((slot.count0 != 0) & (slot.count1 != 0))]
                # The K loop (rtl/isa.py): the slot takes its own next tile, as if the
                # front end had dispatched it in this cycle.
                with m.If(slot.tag != 0):
                    m.d.sync += [slot.addr0.eq(slot.addr0 + slot.mult),
                                 slot.addr1.eq(slot.addr1 + slot.count1),
                                 slot.flags.eq(slot.flags | Flags.ACCUMULATE),
                                 slot.tag.eq(slot.tag - 1)]
                with m.Else():
                    m.d.sync += slot_state.eq(EMPTY)
            with m.Elif(last_chunk):
                m.d.sync += w_reading.eq(0)
            with m.Elif(w_reading):
                m.d.sync += w_chunk.eq(w_chunk + 1)
            m.d.sync += [
                a_first.eq(streaming & (beat == 0)),
                a_k.eq(cur.count1),
                a_tag.addr.eq(cur.addr2 + beat),
                a_tag.accumulate.eq(cur.flags[0]),
            ]
            m.d.comb += [arr.in_valid.eq(late(a_valid)), arr.in_swap.eq(late(a_first))]
            a_k_late = late(a_k)
            for i in range(rows):
                m.d.comb += arr.in_a[i].eq(Mux(i < a_k_late, sp.r0_data[i * iw:(i + 1) * iw], 0))
            drain_after_beat = latency + extra + WRITEBACK_STAGES
        else:
            last_beat = streaming & (beat == cur.count1 - 1)
            spacing = arr.os_spacing
            gap = Signal(range(spacing + 1))
            with m.If(last_beat):
                m.d.sync += gap.eq(spacing - 1)
            with m.Elif(gap != 0):
                m.d.sync += gap.eq(gap - 1)
            gap_ok = Mux(last_beat, slot.count1 >= spacing, gap <= slot.count1)
            start = (slot_state == FULL) & (~streaming | last_beat) & gap_ok
            with m.If(start):
                m.d.sync += slot_state.eq(EMPTY)
            m.d.comb += [sp_r1_en.eq(streaming), sp_r1_addr.eq(cur.addr1 + beat)]
            m.d.sync += [
                a_first.eq(beat == 0),
                a_last.eq(last_beat),
                a_tag.addr.eq(cur.addr2),
                a_tag.m.eq(cur.count0),
                a_tag.accumulate.eq(cur.flags[0]),
            ]
            m.d.comb += [arr.in_valid.eq(late(a_valid)), arr.in_first.eq(late(a_first)),
                         arr.in_last.eq(late(a_last))]
            for i in range(rows):
                m.d.comb += arr.in_a[i].eq(sp.r0_data[i * iw:(i + 1) * iw])
            for j in range(cols):
                m.d.comb += arr.in_b[j].eq(sp.r1_data[j * iw:(j + 1) * iw])
            drain_after_beat = latency + extra + rows - 1 + WRITEBACK_STAGES

        engine_read_a = Signal()
        m.d.comb += engine_read_a.eq(streaming)
        with m.If(start):
            m.d.sync += [cur.eq(slot), beat.eq(0)]
            nbeats = slot.count0 if g.dataflow == "ws" else slot.count1
            m.d.sync += streaming.eq(nbeats != 0)
        with m.Elif(last_beat):
            m.d.sync += streaming.eq(0)
        with m.Elif(streaming):
            m.d.sync += beat.eq(beat + 1)
        with m.If(streaming):
            m.d.sync += drain.eq(drain_after_beat)
        with m.Elif(drain != 0):
            m.d.sync += drain.eq(drain - 1)

        # Accumulator write-back in three stages: read the old row; register it
        # (block RAM's clock-to-out then never meets the adder in one cycle);
        # add and write. A beat that reads the row being written in the same
        # cycle gets the new data (transparent read); a beat right behind the
        # writer read too early, so the writer's sum is forwarded to it.
        out_tag = Signal(tag_layout)
        m.d.comb += out_tag.eq(arr.out_tag)
        if g.dataflow == "ws":
            out_addr = out_tag.addr
            out_ok = arr.out_valid
        else:
            out_addr = out_tag.addr + arr.out_row
            out_ok = arr.out_valid & (arr.out_row < out_tag.m)
        wb = [Signal(data.StructLayout({"valid": 1, "addr": 16, "accumulate": 1}),
                     name=f"wb{n}") for n in (1, 2)]
        # The rows themselves are data registers (rtl/resetless.py): wb[n].valid qualifies them.
        wb_c = [data_signal(data.ArrayLayout(signed(aw), cols), name=f"wb{n}_c") for n in (1, 2)]
        wb_old = data_signal(cols * aw)
        m.d.sync += [wb[0].valid.eq(out_ok), wb[0].addr.eq(out_addr),
                     wb[0].accumulate.eq(out_tag.accumulate), wb_c[0].eq(arr.out_c)]
        wb_data = Signal(cols * aw)
        forward = wb[1].valid & (wb[1].addr == wb[0].addr)
        m.d.sync += [wb[1].eq(wb[0]), wb_c[1].eq(wb_c[0]),
                     wb_old.eq(Mux(forward, wb_data, acc.r0_data))]
        for j in range(cols):
            old = wb_old[j * aw:(j + 1) * aw].as_signed()
            m.d.comb += wb_data[j * aw:(j + 1) * aw].eq(Mux(wb[1].accumulate, old, 0) + wb_c[1][j])

        # -------------------------------------------------------------- front end
        instr = Signal(INSTRUCTION)
        op = instr.opcode
        max_row_bytes = max(g.sp_row_bytes, g.acc_row_bytes, INSTRUCTION_BYTES)
        count_byte = Signal(range(max_row_bytes + 1))
        row = Signal(16)
        last_row = row == instr.count0 - 1

        # Registers of ISA v1 (rtl/isa.py): where a RUN is, and the sticky error.
        in_prog = Signal()          # executing from program memory
        pc = Signal(16)             # the next program word
        word = Signal(16)           # the program word of the instruction in DISPATCH
        pos = Signal(16)
        prompt = Signal(16)         # P
        generate = Signal(16)       # N
        last = Signal(17)           # max(P - 1, P + N - 2)
        emitted = Signal(16)
        params = Array(Signal(signed(32), name=f"param{i}") for i in range(NUM_PARAMS))
        err_code = Signal(8)
        err_op = Signal(8)
        err_word = Signal(16)

        # Program memory and the token buffer.
        prog_w = None
        if g.program_words:
            m.submodules.program = program = Memory(shape=unsigned(8 * INSTRUCTION_BYTES),
                                                    depth=g.program_words, init=[])
            prog_w, prog_r = program.write_port(), program.read_port()
        tok_here = Signal(16)       # TOK[POS]
        tok_next = Signal(16)       # TOK[POS + 1]
        tok_w = None
        if g.tokens:
            m.submodules.tok = tok_mem = Memory(shape=unsigned(16), depth=g.tokens, init=[])
            tok_w = tok_mem.write_port()
            # TOK[POS + 1] reads through a write in the same cycle: ARGMAX writes it in the
            # vector unit's last busy cycle, and an EMIT may dispatch in the next.
            here, nxt = tok_mem.read_port(), tok_mem.read_port(transparent_for=(tok_w,))
            m.d.comb += [here.addr.eq(pos), nxt.addr.eq(pos + 1),
                         tok_here.eq(here.data), tok_next.eq(nxt.data)]

        # Byte-serial reply path; 0xFF padding goes out directly once it is free.
        ser_bytes = max(g.acc_row_bytes, g.sp_row_bytes, g.out_row_bytes, 4)
        ser = data_signal(8 * ser_bytes)
        ser_left = Signal(range(ser_bytes + 1))
        ser_free = ser_left == 0
        ser_load = Signal()
        ser_data = Signal(8 * ser_bytes)
        ser_count = Signal(range(ser_bytes + 1))
        pad_out = Signal()
        m.d.comb += [self.o.valid.eq(~ser_free | pad_out),
                     self.o.payload.eq(Mux(ser_free, 0xFF, ser[:8]))]
        with m.If(ser_load):
            m.d.sync += [ser.eq(ser_data), ser_left.eq(ser_count)]
        with m.Elif(self.o.valid & self.o.ready & ~ser_free):
            m.d.sync += [ser.eq(ser >> 8), ser_left.eq(ser_left - 1)]

        # Rows from the host (LOAD_SP, LOAD_ACC, LOAD_PROG, RUN's tokens): the bytes of a
        # row of B bytes end up in the top B bytes of the shift register.
        row_bytes = Mux(op == Opcode.LOAD_SP, g.sp_row_bytes,
                        Mux(op == Opcode.LOAD_ACC, g.acc_row_bytes,
                            Mux(op == Opcode.LOAD_PROG, INSTRUCTION_BYTES, 2)))
        load_sr = data_signal(8 * max_row_bytes)
        load_addr = Signal(16)
        sp_write = Signal()
        acc_write = Signal()
        prog_write = Signal()
        tok_write = Signal()

        def loaded(nbytes):
            return load_sr[8 * (max_row_bytes - nbytes):]

        requant_write = Signal()
        bias = data_signal(cols * aw)

        # Post-processing: lanes through the requantizer into packed out rows.
        acc_row = data_signal(cols * aw)
        raw_row = data_signal(cols * aw)
        q_row = data_signal(cols * iw)
        lane = Signal(range(cols + 1))
        flush = Signal(range(Requantizer.LATENCY + 1))
        m.d.comb += [
            rq.in_acc.eq(acc_row[:aw]),
            rq.in_bias.eq(bias[:aw]),
            rq.add_bias.eq((instr.flags & Flags.BIAS) != 0),
            rq.mult.eq(instr.mult),
            rq.shift.eq(instr.shift),
        ]
        with m.If(rq.out_valid):
            m.d.sync += raw_row.eq(Cat(raw_row[aw:], rq.out_raw))
            m.d.sync += q_row.eq(Cat(q_row[iw:], rq.out_q))

        # The memory ports: the engine's and the front end's, or the vector unit's while it
        # is busy (it runs only when both others are idle).
        vu = self.vector
        vec_busy = Signal()
        vec_start = Signal()
        # The VEC word the unit runs: the front end fetches, decodes and checks the next
        # word while the unit is busy, so the unit reads a copy (from the cycle after start,
        # its first use) rather than ``instr``. No word dispatches while the unit is busy, so
        # POS, TOK[POS] and the parameters it reads hold still.
        vec_instr = Signal(INSTRUCTION)
        fe_acc_read = Signal()
        fe_acc_addr = Signal(16)
        fe_sp_read = Signal()
        ports = {
            "acc_r_en": fe_acc_read | out_ok,
            "acc_r_addr": Mux(fe_acc_read, fe_acc_addr, out_addr),
            "acc_w_en": wb[1].valid | acc_write,
            "acc_w_addr": Mux(acc_write, load_addr, wb[1].addr),
            "acc_w_data": Mux(acc_write, loaded(g.acc_row_bytes), wb_data),
            "sp_r0_en": fe_sp_read | engine_read_a,
            "sp_r0_addr": Mux(fe_sp_read, instr.addr0 + row, cur.addr0 + beat),
            "sp_r1_en": sp_r1_en,
            "sp_r1_addr": sp_r1_addr,
            "sp_w_en": sp_write | requant_write,
            "sp_w_addr": Mux(requant_write, instr.addr1 + row, load_addr),
            "sp_w_data": Mux(requant_write, q_row, loaded(g.sp_row_bytes)),
        }
        tok_port = {"en": tok_write, "addr": load_addr, "data": loaded(2)}
        if vu is not None:
            with m.If(vec_start):
                m.d.sync += vec_instr.eq(instr)
            m.d.comb += [vec_busy.eq(vu.busy), vu.start.eq(vec_start), vu.instr.eq(vec_instr),
                         vu.pos.eq(pos), vu.tok.eq(tok_here),
                         vu.sp_r0_data.eq(sp.r0_data), vu.sp_r1_data.eq(sp.r1_data),
                         vu.acc_r_data.eq(acc.r0_data)]
            m.d.comb += [vu.params[i].eq(params[i]) for i in range(NUM_PARAMS)]
            ports = {name: Mux(vec_busy, getattr(vu, name), value) for name, value in ports.items()}
            tok_port = {"en": tok_write | vu.tok_we, "addr": Mux(vu.tok_we, pos + 1, load_addr),
                        "data": Mux(vu.tok_we, vu.tok_wdata, loaded(2))}
        m.d.comb += [
            acc.r0_en.eq(ports["acc_r_en"]), acc.r0_addr.eq(ports["acc_r_addr"]),
            acc.w_en.eq(ports["acc_w_en"]), acc.w_addr.eq(ports["acc_w_addr"]),
            acc.w_data.eq(ports["acc_w_data"]),
            sp.r0_en.eq(ports["sp_r0_en"]), sp.r0_addr.eq(ports["sp_r0_addr"]),
            sp.r1_en.eq(ports["sp_r1_en"]), sp.r1_addr.eq(ports["sp_r1_addr"]),
            sp.w_en.eq(ports["sp_w_en"]), sp.w_addr.eq(ports["sp_w_addr"]),
            sp.w_data.eq(ports["sp_w_data"]),
        ]
        if prog_w is not None:
            m.d.comb += [prog_w.en.eq(prog_write), prog_w.addr.eq(load_addr),
                         prog_w.data.eq(loaded(INSTRUCTION_BYTES))]
        if tok_w is not None:
            m.d.comb += [tok_w.en.eq(tok_port["en"]), tok_w.addr.eq(tok_port["addr"]),
                         tok_w.data.eq(tok_port["data"])]
        m.d.sync += [sp_write.eq(0), acc_write.eq(0), prog_write.eq(0), tok_write.eq(0)]

        # The error an instruction raises (rtl/isa.py: instruction_error, footprint). Its
        # footprint products, the compares with the memory depths and the lengths of a
        # skipped instruction are wide arithmetic on the instruction word, done in two
        # registered steps before DISPATCH so that none of it lies on the DISPATCH
        # decision's path: DECODE registers the products (and divisions by cols) and
        # the verdicts that need none of them, CHECK the rest and the code. Exact, as
        # nothing they read changes from DECODE to DISPATCH: POS, the tokens, in_prog and
        # the sticky error change only in DISPATCH, LOAD (a RUN's tokens, whose last write
        # lands in PFETCH) and PFETCH, which all end in a fetch first; a running VEC
        # writes TOK[POS + 1] only (ARGMAX), which the check does not read; TOK[POS] is
        # read a cycle ahead, so it holds from DECODE on.
        error_now = Signal(8)
        m.d.comb += error_now.eq(self._error(m, instr, in_prog, pos, tok_here))
        status_or_reset = ~in_prog & ((op == Opcode.STATUS) | (op == Opcode.RESET))
        error = Signal(8)
        skip = Signal()

        # Skipped instructions: payload bytes to drop, 0xFF bytes to send.
        drop_left = Signal(32)
        pad_left = Signal(32)
        drop_len = Signal(32)
        pad_len = Signal(32)
        payload_len = Mux(op == Opcode.LOAD_SP, instr.count0 * g.sp_row_bytes,
                      Mux(op == Opcode.LOAD_ACC, instr.count0 * g.acc_row_bytes,
                      Mux(op == Opcode.LOAD_PROG, instr.count0 * INSTRUCTION_BYTES,
                      Mux(op == Opcode.SET_BIAS, cols * g.acc_bytes,
                      Mux(op == Opcode.RUN, instr.count0 * 2, 0)))))
        store_row_bytes = Mux((instr.flags & Flags.REQUANT) != 0, g.out_row_bytes, g.acc_row_bytes)
        reply_len = Mux(op == Opcode.STORE, instr.count0 * store_row_bytes,
                    Mux(op == Opcode.STORE_SP, instr.count0 * g.sp_row_bytes,
                    Mux(op == Opcode.SYNC, 1,
                    Mux(op == Opcode.RUN, instr.count1 * 2, 0))))
        run_pad = (generate - emitted) * 2     # what a RUN still owes when it stops

        m.d.comb += self.busy.eq(~engine_idle | in_prog | vec_busy)

        def fetch_next():
            with m.If(in_prog):
                m.next = "PFETCH"
            with m.Else():
                m.next = "FETCH"

        with m.FSM():
            with m.State("FETCH"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += instr.eq(Cat(instr.as_value()[8:], self.i.payload))
                    m.d.sync += count_byte.eq(count_byte + 1)
                    with m.If(count_byte == INSTRUCTION_BYTES - 1):
                        m.d.sync += [count_byte.eq(0), row.eq(0)]
                        m.next = "DECODE"
            with m.State("PFETCH"):
                if g.program_words:
                    m.d.comb += [prog_r.addr.eq(pc), prog_r.en.eq(1)]
                if g.program_words < 65536:
                    # Past the end of program memory: the RUN fails at the fetch.
                    with m.If(pc >= g.program_words):
                        m.d.sync += [err_code.eq(ErrorCode.OUT_OF_RANGE), err_op.eq(0xFF),
                                     err_word.eq(pc), pad_left.eq(run_pad), in_prog.eq(0)]
                        m.next = "PAD"
                    with m.Else():
                        m.next = "PLATCH"
                else:
                    m.next = "PLATCH"
            with m.State("PLATCH"):
                if g.program_words:
                    m.d.sync += instr.eq(prog_r.data)
                m.d.sync += [word.eq(pc), pc.eq(pc + 1), row.eq(0)]
                m.next = "DECODE"
            with m.State("DECODE"):
                m.next = "CHECK"
            with m.State("CHECK"):
                m.d.sync += [error.eq(error_now),
                             skip.eq((error_now != 0) | ((err_code != 0) & ~status_or_reset)),
                             drop_len.eq(payload_len), pad_len.eq(reply_len)]
                m.next = "DISPATCH"
            with m.State("DISPATCH"):
                with m.If(vec_busy):
                    pass                # every word waits for the vector unit
                with m.Elif(skip):
                    with m.If(err_code == 0):
                        m.d.sync += [err_code.eq(error), err_op.eq(instr.as_value()[:8] & 0x1F),
                                     err_word.eq(Mux(in_prog, word, 0xFFFF))]
                    with m.If(in_prog):
                        m.d.sync += [drop_left.eq(0), pad_left.eq(run_pad), in_prog.eq(0)]
                    with m.Else():
                        m.d.sync += [drop_left.eq(drop_len), pad_left.eq(pad_len)]
                    m.next = "DROP"
                with m.Elif(op == Opcode.MATMUL):
                    with m.If(slot_state == EMPTY):
                        m.d.sync += [slot.eq(instr), slot_state.eq(FULL)]
                        fetch_next()
                with m.Elif(op == Opcode.SETP):
                    m.d.sync += params[instr.tag[:3]].eq(Cat(instr.addr0, instr.addr1))
                    fetch_next()
                with m.Elif(op == Opcode.BRANCH):
                    with m.Switch(instr.tag):
                        with m.Case(Branch.ALWAYS):
                            m.d.sync += pc.eq(instr.addr0)
                        with m.Case(Branch.PROMPT):
                            with m.If(pos + 1 < prompt):
                                m.d.sync += pc.eq(instr.addr0)
                        with m.Case(Branch.LOOP):
                            m.d.sync += pos.eq(pos + 1)
                            with m.If(pos + 1 <= last):
                                m.d.sync += pc.eq(instr.addr0)
                    fetch_next()
                with m.Elif(op == Opcode.EMIT):
                    with m.If(emitted >= generate):
                        fetch_next()
                    with m.Elif(ser_free):
                        m.d.comb += [ser_load.eq(1), ser_data.eq(tok_next), ser_count.eq(2)]
                        m.d.sync += emitted.eq(emitted + 1)
                        fetch_next()
                with m.Elif(engine_idle):
                    with m.Switch(op):
                        # Instructions over count0 rows; none at all is a no-op.
                        for opcode, state in ((Opcode.LOAD_SP, "LOAD"), (Opcode.LOAD_ACC, "LOAD"),
                                              (Opcode.LOAD_PROG, "LOAD"),
                                              (Opcode.STORE, "ACC_READ"),
                                              (Opcode.REQUANT, "ACC_READ"),
                                              (Opcode.STORE_SP, "SP_READ")):
                            with m.Case(opcode):
                                with m.If(instr.count0 == 0):
                                    fetch_next()
                                with m.Else():
                                    m.next = state
                        with m.Case(Opcode.RUN):
                            m.d.sync += [
                                prompt.eq(instr.count0), generate.eq(instr.count1),
                                last.eq(Mux(instr.count1 == 0, instr.count0 - 1,
                                            instr.count0 + instr.count1 - 2)),
                                pos.eq(0), emitted.eq(0), pc.eq(instr.addr0),
                            ]
                            m.next = "LOAD"
                        with m.Case(Opcode.SET_BIAS):
                            m.next = "BIAS"
                        with m.Case(Opcode.SYNC):
                            m.next = "SYNC"
                        with m.Case(Opcode.STATUS):
                            m.next = "STATUS"
                        with m.Case(Opcode.RESET):
                            m.d.sync += [err_code.eq(0), err_op.eq(0), err_word.eq(0), pos.eq(0),
                                         prompt.eq(0), generate.eq(0), last.eq(0), emitted.eq(0),
                                         pc.eq(0), bias.eq(0)]
                            m.d.sync += [p.eq(0) for p in params]
                            m.next = "FETCH"
                        with m.Case(Opcode.HALT):
                            m.d.sync += [drop_left.eq(0), pad_left.eq(run_pad), in_prog.eq(0)]
                            m.next = "DROP"
                        with m.Case(Opcode.VEC):
                            m.d.comb += vec_start.eq(1)
                            fetch_next()
                        with m.Default():
                            fetch_next()
            with m.State("LOAD"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += load_sr.eq(Cat(load_sr[8:], self.i.payload))
                    m.d.sync += count_byte.eq(count_byte + 1)
                    with m.If(count_byte == row_bytes - 1):
                        m.d.sync += [count_byte.eq(0), row.eq(row + 1),
                                     load_addr.eq(Mux(op == Opcode.RUN, row, instr.addr0 + row)),
                                     sp_write.eq(op == Opcode.LOAD_SP),
                                     acc_write.eq(op == Opcode.LOAD_ACC),
                                     prog_write.eq(op == Opcode.LOAD_PROG),
                                     tok_write.eq(op == Opcode.RUN)]
                        with m.If(last_row):
                            with m.If(op == Opcode.RUN):
                                m.d.sync += in_prog.eq(1)
                                m.next = "PFETCH"
                            with m.Else():
                                m.next = "FETCH"
            with m.State("BIAS"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += bias.eq(Cat(bias[8:], self.i.payload))
                    m.d.sync += count_byte.eq(count_byte + 1)
                    with m.If(count_byte == cols * g.acc_bytes - 1):
                        m.d.sync += count_byte.eq(0)
                        m.next = "FETCH"
            with m.State("ACC_READ"):
                m.d.comb += [fe_acc_read.eq(1), fe_acc_addr.eq(instr.addr0 + row)]
                m.next = "ACC_WAIT"
            with m.State("ACC_WAIT"):
                m.d.sync += [acc_row.eq(acc.r0_data), lane.eq(0)]
                m.next = "LANES"
            with m.State("LANES"):
                m.d.comb += rq.in_valid.eq(1)
                m.d.sync += [
                    acc_row.eq(acc_row >> aw),
                    bias.eq(Cat(bias[aw:], bias[:aw])),
                    lane.eq(lane + 1),
                ]
                with m.If(lane == cols - 1):
                    m.d.sync += flush.eq(0)
                    m.next = "FLUSH"
            with m.State("FLUSH"):
                m.d.sync += flush.eq(flush + 1)
                with m.If(flush == Requantizer.LATENCY - 1):
                    m.next = "EMIT"
            with m.State("EMIT"):
                with m.If(op == Opcode.REQUANT):
                    m.d.comb += requant_write.eq(1)
                    m.d.sync += row.eq(row + 1)
                    with m.If(last_row):
                        fetch_next()
                    with m.Else():
                        m.next = "ACC_READ"
                with m.Elif(ser_free):
                    requantize = (instr.flags & Flags.REQUANT) != 0
                    m.d.comb += [
                        ser_load.eq(1),
                        ser_data.eq(Mux(requantize, q_row, raw_row)),
                        ser_count.eq(Mux(requantize, g.out_row_bytes, g.acc_row_bytes)),
                    ]
                    m.d.sync += row.eq(row + 1)
                    with m.If(last_row):
                        m.next = "FETCH"
                    with m.Else():
                        m.next = "ACC_READ"
            with m.State("SP_READ"):
                m.d.comb += fe_sp_read.eq(1)
                m.next = "SP_WAIT" if extra else "SP_EMIT"
            if extra:
                with m.State("SP_WAIT"):       # the scratchpad's registered read (rtl/memory.py)
                    m.next = "SP_EMIT"
            with m.State("SP_EMIT"):
                with m.If(ser_free):
                    m.d.comb += [ser_load.eq(1), ser_data.eq(sp.r0_data),
                                 ser_count.eq(g.sp_row_bytes)]
                    m.d.sync += row.eq(row + 1)
                    with m.If(last_row):
                        m.next = "FETCH"
                    with m.Else():
                        m.next = "SP_READ"
            with m.State("SYNC"):
                with m.If(ser_free):
                    m.d.comb += [ser_load.eq(1), ser_data.eq(instr.tag), ser_count.eq(1)]
                    m.next = "FETCH"
            with m.State("STATUS"):
                with m.If(ser_free):
                    m.d.comb += [ser_load.eq(1), ser_data.eq(Cat(err_code, err_op, err_word)),
                                 ser_count.eq(4)]
                    m.next = "FETCH"
            with m.State("DROP"):
                # A skipped instruction's payload, then its reply as 0xFF bytes.
                m.d.comb += self.i.ready.eq(drop_left != 0)
                with m.If(drop_left == 0):
                    m.next = "PAD"
                with m.Elif(self.i.valid):
                    m.d.sync += drop_left.eq(drop_left - 1)
            with m.State("PAD"):
                with m.If(pad_left == 0):
                    m.next = "FETCH"
                with m.Elif(ser_free):
                    m.d.comb += pad_out.eq(1)
                    with m.If(self.o.ready):
                        m.d.sync += pad_left.eq(pad_left - 1)
        return m

    def _error(self, m, instr, in_prog, pos, tok):
        """The ErrorCode of ``instr`` (0 if legal), as rtl/isa.py's instruction_error.

        Two registered steps, so that the code is exact from the second cycle that
        ``instr``, ``in_prog``, ``pos`` and ``tok`` hold their values: the first registers
        the products and divisions and every verdict that reads none of them (the opcode
        checks and the ranges whose rows are instruction fields), all with ``staged``;
        the second adds the staged spans to their bases and picks the code."""
        g = self.geometry
        op = instr.opcode
        cols = g.cols

        def staged(value, name):
            reg = Signal(Value.cast(value).shape(), name=f"check_{name}")
            m.d.sync += reg.eq(value)
            return reg

        def is_op(*opcodes):
            # Sorted: HOST_ONLY/PROGRAM_ONLY are sets, whose order changes with the hash seed,
            # and the Verilog (the build's content key) must come out the same every run.
            return Cat(op == o for o in sorted(opcodes, key=lambda o: o.value)).any()

        def vrows(n, name):                 # ceil(n / cols)
            return staged(_div_const(n + (cols - 1), cols), name)

        illegal = (op.as_value() >= len(Opcode)) \
            | (in_prog & is_op(*HOST_ONLY)) | (~in_prog & is_op(*PROGRAM_ONLY)) \
            | ((op == Opcode.VEC) & (instr.tag >= len(VecOp))) \
            | ((op == Opcode.BRANCH) & (instr.tag >= len(Branch))) \
            | ((op == Opcode.SETP) & (instr.tag >= NUM_PARAMS))
        has_unit = Cat(g.has_unit(VEC_UNIT[v]) for v in VecOp)
        no_unit = (op == Opcode.VEC) & (instr.tag < len(VecOp)) & ~has_unit.bit_select(
            instr.tag[:4], 1)

        depth = {"sp": g.sp_depth, "acc": g.acc_depth, "prog": g.program_words, "tok": g.tokens}
        # `ranges`: (memory, first, rows, when) on instruction fields, POS and TOK only,
        # checked in the first step. `late`: the ranges that add a staged product, as
        # `base + product > depth` with `when` holding the rows' nonzero test; the first
        # step registers the room past each base (depth - base) and whether any word's
        # condition holds, so the second compares a register with a register. Ranges on
        # the same base and product share both.
        ranges, late = [], {}

        def late_range(memory, base, key, rows, when):
            late.setdefault((memory, key, id(rows)), (base, rows, []))[2].append(when)

        m_, k_ = instr.count0, instr.count1
        mm = op == Opcode.MATMUL
        if g.dataflow == "ws":
            reps = instr.tag
            late_range("sp", instr.addr0 + m_, "addr0+m", staged(reps * instr.mult, "a_span"),
                       mm & (m_ != 0))
            late_range("sp", instr.addr1, "addr1", staged((reps + 1) * k_, "b_span"),
                       mm & (k_ != 0))
            ranges += [("acc", instr.addr2, m_, mm)]
        else:
            ranges += [("sp", instr.addr0, k_, mm), ("sp", instr.addr1, k_, mm),
                       ("acc", instr.addr2, Mux(k_ != 0, m_, 0), mm)]
        n = instr.count0
        ranges += [
            ("acc", instr.addr0, n, op == Opcode.REQUANT), ("sp", instr.addr1, n, op == Opcode.REQUANT),
            ("sp", instr.addr0, n, is_op(Opcode.LOAD_SP, Opcode.STORE_SP)),
            ("acc", instr.addr0, n, is_op(Opcode.LOAD_ACC, Opcode.STORE)),
            ("prog", instr.addr0, n, op == Opcode.LOAD_PROG),
            ("prog", instr.addr0, 1, op == Opcode.BRANCH),
            ("tok", pos + 1, 1, op == Opcode.EMIT),
        ]
        if g.units:
            vec = lambda *ops: (op == Opcode.VEC) & Cat(instr.tag == v for v in ops).any()
            r = vrows(n, "vrows")             # ceil(n / cols): nonzero when n is
            nz = n != 0
            perchan = (instr.flags & Flags.PERCHAN) != 0
            with_pos = (instr.flags & Flags.POS) != 0
            fields = {"addr0": instr.addr0, "addr1": instr.addr1, "addr2": instr.addr2}

            def vector_rows(memory, field, when):   # r rows from an address field
                late_range(memory, fields[field], field, r, when & nz)

            if g.has_unit("elementwise") or g.has_unit("embed"):
                pos_rows = staged(_div_const(pos, cols) * n, "pos_rows")
            if g.has_unit("elementwise"):
                vector_rows("acc", "addr0", vec(VecOp.REQ, VecOp.ADD))
                vector_rows("acc", "addr1", (vec(VecOp.REQ) & perchan) | vec(VecOp.ADD))
                vector_rows("acc", "addr2", vec(VecOp.ADD) & perchan)
                vector_rows("sp", "addr0", vec(VecOp.MUL, VecOp.PUT_COL))
                vector_rows("sp", "addr1", vec(VecOp.MUL))
                vector_rows("sp", "addr2", vec(VecOp.REQ, VecOp.MUL))
                late_range("sp", instr.addr1 + Mux(with_pos, pos, 0) + 1, "copy_sp",
                           staged((n - 1) * instr.count1, "stride_span"), vec(VecOp.COPY_SP) & nz)
                late_range("sp", instr.addr1 + n, "addr1+n", pos_rows, vec(VecOp.PUT_COL) & nz)
                ranges += [("acc", instr.addr0, n, vec(VecOp.COPY_ACC)),
                           ("acc", instr.addr2, n, vec(VecOp.COPY_ACC)),
                           ("sp", instr.addr0, n, vec(VecOp.COPY_SP))]
            if g.has_unit("gelu"):
                vector_rows("sp", "addr0", vec(VecOp.GELU))
                vector_rows("sp", "addr2", vec(VecOp.GELU))
            if g.has_unit("softmax"):
                valid = n + Mux(with_pos, pos, 0)
                late_range("acc", instr.addr0, "addr0", vrows(valid, "sm_rows"),
                           vec(VecOp.SOFTMAX) & (valid != 0))
                late_range("sp", instr.addr2, "addr2",
                           vrows(Mux(valid > instr.count1, valid, instr.count1), "sm_out_rows"),
                           vec(VecOp.SOFTMAX) & ((valid != 0) | (instr.count1 != 0)))
            if g.has_unit("layernorm"):
                vector_rows("acc", "addr0", vec(VecOp.LAYERNORM))
                late_range("acc", instr.addr1, "addr1", r * 2, vec(VecOp.LAYERNORM) & nz)
                vector_rows("sp", "addr2", vec(VecOp.LAYERNORM))
            if g.has_unit("embed"):
                late_range("sp", instr.addr0 + n, "addr0+n",
                           staged(_div_const(tok, cols) * n, "tok_rows"), vec(VecOp.EMBED) & nz)
                late_range("sp", instr.addr1 + n, "addr1+n", pos_rows, vec(VecOp.EMBED) & nz)
                vector_rows("acc", "addr2", vec(VecOp.EMBED))
                ranges += [("tok", pos, 1, vec(VecOp.EMBED))]
            if g.has_unit("argmax"):
                vector_rows("acc", "addr0", vec(VecOp.ARGMAX))
                ranges += [("tok", pos + 1, 1, vec(VecOp.ARGMAX))]

        early_out = Cat(when & (rows != 0) & (first + rows > depth[memory])
                        for memory, first, rows, when in ranges).any()
        late_out = []
        for j, ((memory, _, _), (base, rows, whens)) in enumerate(late.items()):
            hit = staged(Cat(*whens).any(), f"hit{j}")
            room = staged(depth[memory] - base, f"room{j}")
            late_out.append(hit & (rows > room))
        out_of_range = staged(early_out, "out_of_range") | Cat(*late_out).any()
        limit = instr.count1 if g.dataflow == "ws" else instr.count0
        dataflow = mm & ((limit > g.rows) | (instr.tag != 0 if g.dataflow == "os" else 0))
        bad_run = (op == Opcode.RUN) & ((instr.count0 == 0)
                                        | (instr.count0 + instr.count1 > g.tokens)
                                        | (instr.addr0 >= g.program_words))
        return Mux(staged(illegal, "illegal"), ErrorCode.ILLEGAL_OPCODE,
               Mux(staged(no_unit, "no_unit"), ErrorCode.NO_UNIT,
               Mux(out_of_range, ErrorCode.OUT_OF_RANGE,
               Mux(staged(dataflow, "dataflow"), ErrorCode.DATAFLOW_LIMIT,
               Mux(staged(bad_run, "bad_run"), ErrorCode.BAD_RUN, ErrorCode.OK)))))


def _div_const(x, d):
    """floor(x / d) for an unsigned value and a constant ``d``: a shift, or a multiply by
    ceil(2**k / d) with k = len(x) + ceil(log2 d), exact for every x < 2**len(x)."""
    if d & (d - 1) == 0:
        return x >> (d.bit_length() - 1)
    k = len(x) + (d - 1).bit_length()
    return (x * -(-(1 << k) // d)) >> k
