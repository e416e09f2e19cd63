"""The cycle model: how many clock cycles a program takes on the RTL, without simulating it.

It follows the controller (``rtl/controller.py``) event by event: the front end
fetches each 16-byte instruction word at one byte a cycle, runs loads, stores
and SYNC itself once the matmul engine is idle, and hands MATMULs to the
engine's one-instruction slot; the engine streams tiles back to back (WS loads
the next tile's weights into the shadow registers meanwhile; OS keeps the
array's result chain free). ``tests/firmware/test_cycles.py`` checks it against
the RTL to the cycle.

Cycles are counted as the simulation backends count them: clock edges from the
first one that may take the first host byte (the host never leaves a gap and
always takes replies) up to and including the one that sends the last reply byte.
"""

from dataclasses import dataclass

from rtl.isa import Geometry, Opcode, Flags, INSTRUCTION_BYTES, REQUANT_LATENCY, WRITEBACK_STAGES

__all__ = ["CycleReport", "cycle_report"]


@dataclass(frozen=True)
class CycleReport:
    """Cycle counts of one program.

    total_cycles    first host byte to last reply byte
    compute_cycles  cycles from the dispatch of the first MATMUL of each run of
                    consecutive MATMULs until the engine is idle again, summed
    matmul_beats    cycles in which a beat entered the array
    macs            useful multiply-accumulates the MATMULs asked for (m * k * n with
                    n = cols, the lanes a tile computes; the caller knows the true n)
    """
    total_cycles: int
    compute_cycles: int
    matmul_beats: int
    macs_issued: int
    instructions: int

    def utilization(self, useful_macs: int, rows: int, cols: int, *, compute_only=False) -> float:
        cycles = self.compute_cycles if compute_only else self.total_cycles
        return useful_macs / (cycles * rows * cols) if cycles else 0.0


def _instructions(program):
    if hasattr(program, "instructions"):
        return program.instructions
    return list(program)


def cycle_report(program, geometry: Geometry) -> CycleReport:
    """Model ``program`` (a firmware Program or a list of rtl.isa.Instruction)."""
    g = geometry
    rows, cols = g.rows, g.cols
    latency = g.array_latency
    if g.dataflow == "ws":
        drain = latency + WRITEBACK_STAGES        # array + write-back after the last beat
    else:
        drain = latency + rows - 1 + WRITEBACK_STAGES   # + the result chain
    guard = g.swap_guard
    spacing = g.os_spacing
    row_period = cols + 2 + REQUANT_LATENCY       # ACC_READ, ACC_WAIT, LANES, FLUSH -> EMIT

    t = 0                   # cycle at which the front end is in FETCH, ready for a byte
    ser_free = 0            # first cycle the reply serializer is free
    last_reply = None       # cycle that sends the last reply byte
    slot_empty = 0          # first cycle the engine's slot is empty
    idle = 0                # first cycle the engine has nothing in flight
    guard_free = 0          # WS: first cycle the shadow weights may be loaded
    prev_start, prev_beats = None, 0   # the previous tile's start cycle and beats
    last_beat = None        # OS: cycle of the latest last beat
    compute = 0
    run_start = None
    beats_total = 0
    macs = 0
    instructions = _instructions(program)

    for instruction in instructions:
        op = instruction.opcode
        d = t + INSTRUCTION_BYTES         # DISPATCH
        if op == Opcode.MATMUL:
            if run_start is None:
                run_start = d
            d = max(d, slot_empty)
            m, k = instruction.count0, instruction.count1
            if g.dataflow == "ws":
                x = max(d + 1, guard_free)            # PENDING -> LOADING
                loaded = x + k + 1 if k else x + 1
                y = loaded
                if prev_start is not None and prev_beats:
                    y = max(y, prev_start + prev_beats)
                slot_empty = y + 1
                guard_free = y + 1 + guard
                beats = m
                macs += m * k * cols
            else:
                y = d + 1
                if last_beat is not None:
                    y = max(y, last_beat + max(0, spacing - k))
                slot_empty = y + 1
                beats = k
                if k:
                    last_beat = y + k
                macs += min(m, rows) * k * cols
            if beats:
                idle = max(idle, y + beats + 1 + drain)
                prev_start, prev_beats = y, beats
            beats_total += beats
            t = d + 1
            continue

        # Any other instruction waits for the engine.
        d = max(d, idle, slot_empty)
        if run_start is not None:
            compute += d - run_start
            run_start = None
        s = d + 1
        rows_n = instruction.count0
        if op == Opcode.LOAD_SP:
            t = s + rows_n * g.sp_row_bytes if rows_n else d + 1
        elif op == Opcode.SET_BIAS:
            t = s + cols * g.acc_bytes
        elif op == Opcode.STORE:
            if not rows_n:
                t = d + 1
                continue
            nbytes = g.out_row_bytes if instruction.flags & Flags.REQUANT else g.acc_row_bytes
            for _ in range(rows_n):
                e = max(s + row_period, ser_free)
                ser_free = e + nbytes + 1
                last_reply = e + nbytes
                s = e + 1
            t = s
        elif op == Opcode.REQUANT:
            t = s + rows_n * (row_period + 1) if rows_n else d + 1
        elif op == Opcode.STORE_SP:
            if not rows_n:
                t = d + 1
                continue
            for _ in range(rows_n):
                e = max(s + 1, ser_free)
                ser_free = e + g.sp_row_bytes + 1
                last_reply = e + g.sp_row_bytes
                s = e + 1
            t = s
        elif op == Opcode.SYNC:
            e = max(s, ser_free)
            ser_free = e + 2
            last_reply = e + 1
            t = e + 1
        else:  # NOP
            t = d + 1

    if run_start is not None:
        compute += max(idle, slot_empty) - run_start
    end = last_reply + 1 if last_reply is not None else max(t, idle)
    return CycleReport(total_cycles=end, compute_cycles=compute, matmul_beats=beats_total,
                       macs_issued=macs, instructions=len(instructions))
