"""The controller: runs ``rtl/isa.py`` programs from the host byte stream.

Two parts work side by side:

* the **front end** reads instruction words, executes loads, stores,
  requantization and SYNC itself, and hands MATMULs to the engine. It runs a
  non-MATMUL instruction only when the engine is idle, so every instruction
  sees the effects of the ones before it.
* the **matmul engine** streams tiles through the systolic array and writes
  result rows back to the accumulator (read-modify-write when accumulating).
  In WS it loads the next tile's weights into the array's shadow registers
  while the current tile streams, so tiles run back to back; in OS it starts
  the next tile as soon as the array's result chain allows.

Timing is deterministic given the input bytes (``firmware/cycles.py`` models it
to the cycle); the constants it relies on are the class attributes here.
"""

from amaranth import *
from amaranth.lib import wiring, stream, data
from amaranth.lib.wiring import In, Out

from .isa import Geometry, INSTRUCTION, INSTRUCTION_BYTES, Opcode, Flags, REQUANT_LATENCY, WRITEBACK_STAGES
from .requant import Requantizer

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

    def __init__(self, geometry: Geometry, *, scratchpad, accumulator, array, requantizer):
        self.geometry = geometry
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
        EMPTY, PENDING, LOADING, LOADED = range(4)
        slot = Signal(INSTRUCTION)          # the next MATMUL
        slot_state = Signal(2)
        cur = Signal(INSTRUCTION)           # the MATMUL streaming now
        streaming = Signal()
        beat = Signal(16)
        drain = Signal(range(latency + rows + 4))
        engine_idle = Signal()
        m.d.comb += engine_idle.eq((slot_state == EMPTY) & ~streaming & (drain == 0))

        # One register stage between the scratchpad read and the array input.
        a_valid = Signal()
        a_first = Signal()
        a_last = Signal()
        a_k = Signal(16)
        tag_layout = data.StructLayout({"addr": 16, "m": 16, "accumulate": 1})
        a_tag = Signal(tag_layout)
        m.d.comb += arr.in_tag.eq(a_tag)
        m.d.sync += a_valid.eq(streaming)

        if g.dataflow == "ws":
            last_beat = streaming & (beat == cur.count0 - 1)
            # Shadow weights: free once the tile that took them is far enough in.
            guard = Signal(range(g.swap_guard + 1))
            load_row = Signal(16)
            w_write = Signal()
            w_row = Signal(range(rows))
            m.d.comb += [
                sp.r1_addr.eq(slot.addr1 + load_row),
                sp.r1_en.eq(slot_state == LOADING),
                arr.w_load.eq(w_write),
                arr.w_row.eq(w_row),
            ]
            for j in range(cols):
                m.d.comb += arr.w_data[j].eq(sp.r1_data[j * iw:(j + 1) * iw])
            m.d.sync += w_write.eq(slot_state == LOADING)
            m.d.sync += w_row.eq(load_row)
            with m.If(guard != 0):
                m.d.sync += guard.eq(guard - 1)
            with m.Switch(slot_state):
                with m.Case(PENDING):
                    with m.If(guard == 0):
                        m.d.sync += load_row.eq(0)
                        m.d.sync += slot_state.eq(Mux(slot.count1 == 0, LOADED, LOADING))
                with m.Case(LOADING):
                    m.d.sync += load_row.eq(load_row + 1)
                    with m.If(load_row == slot.count1 - 1):
                        m.d.sync += slot_state.eq(LOADED)
            start = (slot_state == LOADED) & (~streaming | last_beat)
            with m.If(start):
                m.d.sync += [slot_state.eq(EMPTY), guard.eq(g.swap_guard)]
            m.d.sync += [
                a_first.eq(streaming & (beat == 0)),
                a_k.eq(cur.count1),
                a_tag.addr.eq(cur.addr2 + beat),
                a_tag.accumulate.eq(cur.flags[0]),
            ]
            m.d.comb += [arr.in_valid.eq(a_valid), arr.in_swap.eq(a_first)]
            for i in range(rows):
                m.d.comb += arr.in_a[i].eq(Mux(i < a_k, sp.r0_data[i * iw:(i + 1) * iw], 0))
            drain_after_beat = latency + WRITEBACK_STAGES
        else:
            last_beat = streaming & (beat == cur.count1 - 1)
            spacing = arr.os_spacing
            gap = Signal(range(spacing + 1))
            with m.If(last_beat):
                m.d.sync += gap.eq(spacing - 1)
            with m.Elif(gap != 0):
                m.d.sync += gap.eq(gap - 1)
            gap_ok = Mux(last_beat, slot.count1 >= spacing, gap <= slot.count1)
            start = (slot_state == PENDING) & (~streaming | last_beat) & gap_ok
            with m.If(start):
                m.d.sync += slot_state.eq(EMPTY)
            m.d.comb += [sp.r1_en.eq(streaming), sp.r1_addr.eq(cur.addr1 + beat)]
            m.d.sync += [
                a_first.eq(beat == 0),
                a_last.eq(last_beat),
                a_tag.addr.eq(cur.addr2),
                a_tag.m.eq(cur.count0),
                a_tag.accumulate.eq(cur.flags[0]),
            ]
            m.d.comb += [arr.in_valid.eq(a_valid), arr.in_first.eq(a_first), arr.in_last.eq(a_last)]
            for i in range(rows):
                m.d.comb += arr.in_a[i].eq(sp.r0_data[i * iw:(i + 1) * iw])
            for j in range(cols):
                m.d.comb += arr.in_b[j].eq(sp.r1_data[j * iw:(j + 1) * iw])
            drain_after_beat = latency + rows - 1 + WRITEBACK_STAGES

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
        wb = [Signal(data.StructLayout({
                  "valid": 1, "addr": 16, "accumulate": 1,
                  "c": data.ArrayLayout(signed(aw), cols)}), name=f"wb{n}") for n in (1, 2)]
        wb_old = Signal(cols * aw)
        m.d.sync += [wb[0].valid.eq(out_ok), wb[0].addr.eq(out_addr),
                     wb[0].accumulate.eq(out_tag.accumulate), wb[0].c.eq(arr.out_c)]
        forward = wb[1].valid & (wb[1].addr == wb[0].addr)
        m.d.sync += [wb[1].eq(wb[0]), wb_old.eq(Mux(forward, acc.w_data, acc.r0_data))]
        m.d.comb += [acc.w_en.eq(wb[1].valid), acc.w_addr.eq(wb[1].addr)]
        for j in range(cols):
            old = wb_old[j * aw:(j + 1) * aw].as_signed()
            m.d.comb += acc.w_data[j * aw:(j + 1) * aw].eq(Mux(wb[1].accumulate, old, 0) + wb[1].c[j])

        # -------------------------------------------------------------- front end
        instr = Signal(INSTRUCTION)
        count_byte = Signal(range(max(INSTRUCTION_BYTES, g.sp_row_bytes, cols * g.acc_bytes) + 1))
        row = Signal(16)
        last_row = row == instr.count0 - 1

        # Byte-serial reply path.
        ser_bytes = max(g.acc_row_bytes, g.sp_row_bytes, g.out_row_bytes)
        ser = Signal(8 * ser_bytes)
        ser_left = Signal(range(ser_bytes + 1))
        ser_free = ser_left == 0
        ser_load = Signal()
        ser_data = Signal(8 * ser_bytes)
        ser_count = Signal(range(ser_bytes + 1))
        m.d.comb += [self.o.valid.eq(~ser_free), self.o.payload.eq(ser[:8])]
        with m.If(ser_load):
            m.d.sync += [ser.eq(ser_data), ser_left.eq(ser_count)]
        with m.Elif(self.o.valid & self.o.ready):
            m.d.sync += [ser.eq(ser >> 8), ser_left.eq(ser_left - 1)]

        # Scratchpad rows from the host.
        load_sr = Signal(8 * g.sp_row_bytes)
        sp_write = Signal()
        sp_write_addr = Signal(16)
        sp_write_data = Signal(g.sp_lanes * iw)
        requant_write = Signal()
        bias = Signal(cols * aw)

        # Post-processing: lanes through the requantizer into packed out rows.
        acc_row = Signal(cols * aw)
        raw_row = Signal(cols * aw)
        q_row = Signal(cols * iw)
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

        fe_acc_read = Signal()
        fe_acc_addr = Signal(16)
        m.d.comb += [
            acc.r0_en.eq(fe_acc_read | out_ok),
            acc.r0_addr.eq(Mux(fe_acc_read, fe_acc_addr, out_addr)),
        ]
        fe_sp_read = Signal()
        m.d.comb += [
            sp.r0_en.eq(fe_sp_read | engine_read_a),
            sp.r0_addr.eq(Mux(fe_sp_read, instr.addr0 + row, cur.addr0 + beat)),
            sp.w_en.eq(sp_write | requant_write),
            sp.w_addr.eq(Mux(requant_write, instr.addr1 + row, sp_write_addr)),
            sp.w_data.eq(Mux(requant_write, q_row, sp_write_data)),
        ]
        m.d.sync += sp_write.eq(0)
        m.d.comb += self.busy.eq(~engine_idle)

        with m.FSM():
            with m.State("FETCH"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += instr.eq(Cat(instr.as_value()[8:], self.i.payload))
                    m.d.sync += count_byte.eq(count_byte + 1)
                    with m.If(count_byte == INSTRUCTION_BYTES - 1):
                        m.d.sync += [count_byte.eq(0), row.eq(0)]
                        m.next = "DISPATCH"
            with m.State("DISPATCH"):
                with m.If(instr.opcode == Opcode.MATMUL):
                    with m.If(slot_state == EMPTY):
                        m.d.sync += [slot.eq(instr), slot_state.eq(PENDING)]
                        m.next = "FETCH"
                with m.Elif(engine_idle):
                    with m.Switch(instr.opcode):
                        # Instructions over count0 rows; none at all is a no-op.
                        for opcode, state in ((Opcode.LOAD_SP, "LOAD"), (Opcode.STORE, "ACC_READ"),
                                              (Opcode.REQUANT, "ACC_READ"),
                                              (Opcode.STORE_SP, "SP_READ")):
                            with m.Case(opcode):
                                with m.If(instr.count0 == 0):
                                    m.next = "FETCH"
                                with m.Else():
                                    m.next = state
                        with m.Case(Opcode.SET_BIAS):
                            m.next = "BIAS"
                        with m.Case(Opcode.SYNC):
                            m.next = "SYNC"
                        with m.Default():
                            m.next = "FETCH"
            with m.State("LOAD"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += load_sr.eq(Cat(load_sr[8:], self.i.payload))
                    m.d.sync += count_byte.eq(count_byte + 1)
                    with m.If(count_byte == g.sp_row_bytes - 1):
                        m.d.sync += [count_byte.eq(0), row.eq(row + 1), sp_write.eq(1),
                                     sp_write_addr.eq(instr.addr0 + row)]
                        with m.If(last_row):
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
                with m.If(instr.opcode == Opcode.REQUANT):
                    m.d.comb += requant_write.eq(1)
                    m.d.sync += row.eq(row + 1)
                    with m.If(last_row):
                        m.next = "FETCH"
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
        m.d.comb += sp_write_data.eq(load_sr)
        return m
