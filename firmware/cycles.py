"""The cycle model: how many clock cycles a program takes on the RTL, without simulating it.

It follows the controller (``rtl/controller.py``) event by event: the front end
fetches each 16-byte instruction word from the host at one byte a cycle and checks
it (``HOST_FETCH_CYCLES``; a word of program memory in ``PROGRAM_FETCH_CYCLES``), runs loads, stores, SYNC, VEC
and the rest itself once the matmul engine is idle (SETP, BRANCH and EMIT do not
wait for it), starts a VEC and fetches on while the vector unit runs (no word
dispatches until it is done), and hands MATMULs to the engine's one-instruction slot; the engine
streams tiles back to back (WS: a tile every max(m, ceil(k / sp_banks)) cycles,
each reading its own weights beside its first beats; OS keeps the array's result
chain free). A RUN executes
the loaded program, following its branches and POS; illegal instructions raise
the sticky error of ``rtl/isa.py`` (:func:`rtl.isa.instruction_error`) and are
skipped, as on the device. ``tests/firmware/test_cycles.py`` checks it
against the RTL to the cycle.

Cycles are counted as the simulation backends count them: clock edges from the
first one that may take the first host byte (the host never leaves a gap and
always takes replies) up to and including the one that sends the last reply byte.

The model knows the data only where timing depends on it: the program words
(LOAD_PROG payloads) and the prompt (RUN payloads, for EMBED's range check).
Tokens that ARGMAX writes are taken as 0.

:func:`link_seconds` gives the other half of board time: the UART host link.
"""

from dataclasses import dataclass
import math

from rtl.isa import (Geometry, Opcode, Flags, Branch, ErrorCode, INSTRUCTION_BYTES,
                     REQUANT_LATENCY, WRITEBACK_STAGES, SP_READ_LATENCY, HOST_FETCH_CYCLES,
                     PROGRAM_FETCH_CYCLES, decode,
                     instruction_error, vector_op_cycles, Instruction, encode)
from rtl.hostlink import MAX_PAYLOAD
from .program import payload_bytes, reply_bytes

__all__ = ["CycleReport", "cycle_report", "run_cycles", "straight_line_cycles", "LinkTime",
           "link_seconds",
           "VEC_DISPATCH_CYCLES"]

# A VEC: the cycles from its dispatch (the engine idle) to the first cycle in which another
# word may dispatch, beyond the vector unit's own latency (rtl.isa.vector_op_cycles): the
# start cycle. The front end fetches the next word from the cycle after the dispatch.
VEC_DISPATCH_CYCLES = 1

# Host-link frames (rtl/hostlink.py): SOF, seq, len, payload, crc16 to the board;
# SOF, status, ack, len, data, crc16 back.
HOST_FRAME_OVERHEAD = 5
REPLY_FRAME_OVERHEAD = 6


@dataclass(frozen=True)
class CycleReport:
    """Cycle counts of one program.

    total_cycles    first host byte to last reply byte
    compute_cycles  cycles from the dispatch of the first MATMUL of each run of
                    consecutive MATMULs until the engine is idle again, summed
    matmul_beats    cycles in which a beat entered the array
    macs            useful multiply-accumulates the MATMULs asked for (m * k * n with
                    n = cols, the lanes a tile computes; the caller knows the true n)
    instructions    instruction words executed (host words and program words)
    error           the sticky error at the end (rtl.isa.ErrorCode)
    """
    total_cycles: int
    compute_cycles: int
    matmul_beats: int
    macs_issued: int
    instructions: int
    error: ErrorCode = ErrorCode.OK

    def utilization(self, useful_macs: int, rows: int, cols: int, *, compute_only=False) -> float:
        cycles = self.compute_cycles if compute_only else self.total_cycles
        return useful_macs / (cycles * rows * cols) if cycles else 0.0


def _steps(program, geometry):
    """[(Instruction or raw 16-byte word, payload)] of a byte stream, a Program, a list of
    (instruction, payload) pairs, or a list of instructions (zero payloads)."""
    if isinstance(program, (bytes, bytearray)):
        steps, offset = [], 0
        data = bytes(program)
        while offset < len(data):
            word = data[offset:offset + INSTRUCTION_BYTES]
            offset += INSTRUCTION_BYTES
            try:
                ins = decode(word)
            except ValueError:          # a reserved opcode: no payload
                steps.append((word, b""))
                continue
            size = payload_bytes(geometry, ins)
            steps.append((ins, data[offset:offset + size]))
            offset += size
        return steps
    if hasattr(program, "steps"):
        return list(program.steps)
    return [item if isinstance(item, tuple) else (item, bytes(payload_bytes(geometry, item)))
            for item in program]


class _Timeline:
    """The controller's state and timing as the model follows it (see the module docstring)."""

    def __init__(self, g: Geometry):
        self.g = g
        rows, cols = g.rows, g.cols
        # After the last beat: the scratchpad's read latency beyond one cycle, the array,
        # the write-back (OS: and the result chain).
        read = SP_READ_LATENCY - 1
        if g.dataflow == "ws":
            self.drain = read + g.array_latency + WRITEBACK_STAGES
        else:
            self.drain = read + g.array_latency + rows - 1 + WRITEBACK_STAGES
        self.row_period = cols + 2 + REQUANT_LATENCY    # ACC_READ, ACC_WAIT, LANES, FLUSH -> EMIT
        self.t = 0                  # cycle at which the front end enters a fetch state
        self.ser_free = 0           # first cycle the reply serializer is free
        self.last_reply = None      # cycle that sends the last reply byte
        self.slot_empty = 0         # first cycle the engine's slot is empty
        self.idle = 0               # first cycle the engine has nothing in flight
        self.start_free = 0         # WS: first cycle the next tile may start (the previous
                                    # one has issued its beats and its weight reads)
        self.last_beat = None       # OS: cycle of the latest last beat
        self.vu_free = 0            # first cycle a word may dispatch: the vector unit idle
        self.compute = 0
        self.run_start = None
        self.beats = 0
        self.macs = 0
        self.instructions = 0
        # ISA state the timing depends on.
        self.error = ErrorCode.OK
        self.pos = self.prompt = self.generate = self.emitted = 0
        self.program = [bytes(INSTRUCTION_BYTES)] * g.program_words
        self.tok = [0] * g.tokens

    # -- pieces of the controller's timing

    def _wait_engine(self, d):
        """DISPATCH of an instruction that waits for the engine to be idle."""
        d = max(d, self.idle, self.slot_empty)
        if self.run_start is not None:
            self.compute += d - self.run_start
            self.run_start = None
        return d

    def _reply(self, e, nbytes):
        """The serializer loads ``nbytes`` at cycle ``e``."""
        self.ser_free = e + nbytes + 1
        self.last_reply = e + nbytes

    def _skip(self, d, drop, pad):
        """A skipped instruction dispatched at ``d``: DROP its payload, PAD its reply."""
        return self._pad(d + drop + 2, pad)

    def _pad(self, p, pad):
        """PAD entered at ``p``: 0xFF bytes once the serializer is free; the next fetch."""
        if not pad:
            return p + 1
        e = max(p, self.ser_free)
        self.last_reply = e + pad - 1
        self.ser_free = max(self.ser_free, e + pad)
        return e + pad + 1

    def _matmul(self, ins, d):
        g = self.g
        if self.run_start is None:
            self.run_start = d
        d = d0 = max(d, self.slot_empty)
        m, k = ins.count0, ins.count1
        if g.dataflow == "ws":
            # Tile r > 0 of a K loop takes the slot again at the start of tile r - 1,
            # as a MATMUL dispatched in that cycle would. A tile starts (y) once the slot
            # is full and the previous tile has issued its beats and its weight reads;
            # its own weights are read in the cycles after y, beside its first beats.
            for _ in range(ins.tag + 1):
                y = max(d + 1, self.start_free)
                self._tile(y, m, g.weight_cycles(k))
                self.macs += m * k * g.cols
                d = y
        else:
            y = d + 1
            if self.last_beat is not None:
                y = max(y, self.last_beat + max(0, g.os_spacing - k))
            if k:
                self.last_beat = y + k
            self._tile(y, k)
            self.macs += min(m, g.rows) * k * g.cols
        self.slot_empty = y + 1
        return d0 + 1

    def _tile(self, y, beats, weight_cycles=0):
        """A tile of ``beats`` beats that starts at cycle ``y`` (WS: and reads its weights
        in ``weight_cycles`` cycles; a tile without beats reads none)."""
        if beats:
            self.idle = max(self.idle, y + beats + 1 + self.drain)
            self.start_free = y + max(beats, weight_cycles)
        self.beats += beats

    def _common(self, ins, d):
        """An instruction that host stream and program alike may carry, dispatched at ``d``
        (legal, no sticky error); the cycle of the next fetch."""
        g = self.g
        op = ins.opcode
        if op == Opcode.MATMUL:
            return self._matmul(ins, d)
        if op == Opcode.SETP:
            return d + 1
        d = self._wait_engine(d)
        if op == Opcode.REQUANT:
            return d + 1 + ins.count0 * (self.row_period + 1) if ins.count0 else d + 1
        if op == Opcode.VEC:
            self.vu_free = d + VEC_DISPATCH_CYCLES + vector_op_cycles(ins, g, self.pos)
        return d + 1    # VEC (the front end fetches on while the unit runs), NOP

    # -- the host stream

    def host(self, ins, payload):
        g = self.g
        self.instructions += 1
        d = max(self.t + HOST_FETCH_CYCLES, self.vu_free)   # DISPATCH
        if not isinstance(ins, Instruction):            # a reserved opcode
            self._fail(ErrorCode.ILLEGAL_OPCODE)
            self.t = self._skip(d, 0, 0)
            return
        op = ins.opcode
        if self.error == ErrorCode.OK or op not in (Opcode.STATUS, Opcode.RESET):
            code = self.error or instruction_error(ins, g, pos=self.pos, tok=self._tok_here())
            if code != ErrorCode.OK:
                self._fail(code)
                self.t = self._skip(d, payload_bytes(g, ins), reply_bytes(g, ins))
                return
        if op not in (Opcode.LOAD_SP, Opcode.LOAD_ACC, Opcode.LOAD_PROG, Opcode.SET_BIAS,
                      Opcode.STORE, Opcode.STORE_SP, Opcode.SYNC, Opcode.STATUS, Opcode.RESET,
                      Opcode.RUN):
            self.t = self._common(ins, d)
            return
        d = self._wait_engine(d)
        s = d + 1
        rows_n = ins.count0
        if op in (Opcode.LOAD_SP, Opcode.LOAD_ACC, Opcode.LOAD_PROG, Opcode.SET_BIAS):
            self.t = s + len(payload) if op == Opcode.SET_BIAS or rows_n else d + 1
            if op == Opcode.LOAD_PROG:
                for r in range(rows_n):
                    self.program[ins.addr0 + r] = bytes(
                        payload[r * INSTRUCTION_BYTES:(r + 1) * INSTRUCTION_BYTES])
        elif op == Opcode.STORE:
            if not rows_n:
                self.t = d + 1
                return
            nbytes = g.out_row_bytes if ins.flags & Flags.REQUANT else g.acc_row_bytes
            for _ in range(rows_n):
                e = max(s + self.row_period, self.ser_free)
                self._reply(e, nbytes)
                s = e + 1
            self.t = s
        elif op == Opcode.STORE_SP:
            if not rows_n:
                self.t = d + 1
                return
            for _ in range(rows_n):
                e = max(s + SP_READ_LATENCY, self.ser_free)    # SP_READ (, SP_WAIT)
                self._reply(e, g.sp_row_bytes)
                s = e + 1
            self.t = s
        elif op in (Opcode.SYNC, Opcode.STATUS):
            e = max(s, self.ser_free)
            self._reply(e, 1 if op == Opcode.SYNC else 4)
            self.t = e + 1
        elif op == Opcode.RESET:
            self.error = ErrorCode.OK
            self.pos = self.prompt = self.generate = self.emitted = 0
            self.t = d + 1
        else:
            self.t = self._run(ins, payload, d)

    def _fail(self, code):
        if self.error == ErrorCode.OK:
            self.error = code

    def _tok_here(self):
        return self.tok[self.pos] if self.pos < len(self.tok) else 0

    # -- a RUN

    def _run(self, ins, payload, d):
        """A legal RUN dispatched at ``d``; the cycle the front end fetches from the host again."""
        g = self.g
        for i in range(ins.count0):
            self.tok[i] = int.from_bytes(payload[2 * i:2 * i + 2], "little")
        self.prompt, self.generate = ins.count0, ins.count1
        self.pos = self.emitted = 0
        last = max(self.prompt - 1, self.prompt + self.generate - 2)
        t = d + 1 + 2 * ins.count0                      # the tokens, then PFETCH
        pc = ins.addr0
        while True:
            owed = 2 * (self.generate - self.emitted)
            if pc >= g.program_words:                   # ran past the end: fails at the fetch
                self._fail(ErrorCode.OUT_OF_RANGE)
                return self._pad(t + 1, owed)
            self.instructions += 1
            d = max(t + PROGRAM_FETCH_CYCLES, self.vu_free)
            try:
                word = decode(self.program[pc])
            except ValueError:
                word = None
            pc = (pc + 1) & 0xFFFF
            code = ErrorCode.ILLEGAL_OPCODE if word is None else instruction_error(
                word, g, in_program=True, pos=self.pos, tok=self._tok_here())
            if code != ErrorCode.OK:
                self._fail(code)
                return self._skip(d, 0, owed)
            op = word.opcode
            if op == Opcode.HALT:
                return self._skip(self._wait_engine(d), 0, owed)
            if op == Opcode.BRANCH:
                if word.tag == Branch.ALWAYS:
                    pc = word.addr0
                elif word.tag == Branch.PROMPT:
                    if self.pos + 1 < self.prompt:
                        pc = word.addr0
                else:
                    self.pos += 1
                    if self.pos <= last:
                        pc = word.addr0
                t = d + 1
            elif op == Opcode.EMIT:
                if self.emitted < self.generate:
                    d = max(d, self.ser_free)
                    self._reply(d, 2)
                    self.emitted += 1
                t = d + 1
            else:
                t = self._common(word, d)

    def report(self):
        if self.run_start is not None:
            self.compute += max(self.idle, self.slot_empty) - self.run_start
            self.run_start = None
        end = self.last_reply + 1 if self.last_reply is not None else max(self.t, self.idle)
        return CycleReport(total_cycles=end, compute_cycles=self.compute,
                           matmul_beats=self.beats, macs_issued=self.macs,
                           instructions=self.instructions, error=self.error)


def cycle_report(program, geometry: Geometry) -> CycleReport:
    """Model ``program``: a byte stream, a firmware Program, a list of (Instruction, payload)
    pairs, or a list of Instructions (their payloads taken as zeros)."""
    timeline = _Timeline(geometry)
    for ins, payload in _steps(program, geometry):
        timeline.host(ins, payload)
    return timeline.report()


def run_cycles(program_words, entry: int, prompt: int, generate: int, geometry: Geometry, *,
               tokens=None) -> int:
    """Cycles of one RUN (its word, its ``prompt`` token ids, the program until HALT, the
    2 * ``generate`` reply bytes) with ``program_words`` (Instructions or 16-byte words, from
    word 0) in program memory; ``tokens``: the prompt's ids (zeros if not given)."""
    timeline = _Timeline(geometry)
    for address, word in enumerate(program_words):
        timeline.program[address] = word if isinstance(word, bytes) else encode(word)
    tokens = list(tokens) if tokens is not None else [0] * prompt
    payload = b"".join(int(x).to_bytes(2, "little") for x in tokens)
    timeline.host(Instruction(Opcode.RUN, addr0=entry, count0=prompt, count1=generate), payload)
    return timeline.report().total_cycles


def straight_line_cycles(words, geometry: Geometry, pos: int = 0) -> int:
    """Cycles of program ``words`` (legal Instructions) executed one after another inside a
    RUN at POS ``pos`` (branches not taken, EMITs sending), from the dispatch of the first
    to the dispatch that a next word waiting for the engine (a VEC, HALT) would get.

    A word that waits for the engine (and, as every word, for the vector unit) dispatches
    once all before it is done, so nothing earlier bears on what follows it: for pieces that
    each start with such a word these cycles add up. The model compiler
    (``firmware/compile_model.py``) sums them per position instead of running
    :func:`run_cycles` over a whole generation.
    """
    timeline = _Timeline(geometry)
    timeline.pos = pos
    timeline.generate = len(words) + 1      # every EMIT sends
    t = -PROGRAM_FETCH_CYCLES               # the first word dispatches at cycle 0
    for word in words:
        d = max(t + PROGRAM_FETCH_CYCLES, timeline.vu_free)
        if word.opcode == Opcode.BRANCH:
            t = d + 1
        elif word.opcode == Opcode.EMIT:
            d = max(d, timeline.ser_free)
            timeline._reply(d, 2)
            t = d + 1
        else:
            t = timeline._common(word, d)
    return max(t + PROGRAM_FETCH_CYCLES, timeline.idle, timeline.slot_empty, timeline.vu_free)


@dataclass(frozen=True)
class LinkTime:
    """Time on the UART host link for one exchange of byte streams (see :func:`link_seconds`).

    frames          host frames (each answered by one reply frame)
    to_board_bytes  bytes on the wire towards the board, framing included
    to_host_bytes   bytes on the wire back
    seconds         the total: both directions at baud / 10 bytes a second, plus a
                    turnaround per frame
    """
    frames: int
    to_board_bytes: int
    to_host_bytes: int
    to_board_s: float
    to_host_s: float
    turnaround_s: float

    @property
    def seconds(self) -> float:
        return self.to_board_s + self.to_host_s + self.turnaround_s


def link_seconds(in_bytes: int, out_bytes: int, *, baud: int = 1_000_000,
                 turnaround_s: float = 1e-3, frame_bytes: int = MAX_PAYLOAD) -> LinkTime:
    """Seconds the framed host link (rtl/hostlink.py, firmware/serial.py) needs to carry
    ``in_bytes`` of program to the board and ``out_bytes`` of reply back.

    Stop and wait, as ``SerialBackend.run`` does it: the program goes in frames of
    ``frame_bytes`` (5 bytes of framing each); the reply comes back in reply frames of
    up to 255 bytes (6 bytes of framing each), one per host frame, collected by empty
    polling frames once the program is in. The model takes the reply as ready when the
    program has gone (the accelerator's own time is the cycle model's), so the frames
    are ceil(in / frame_bytes) + ceil(out / 255). A UART byte is 10 bits (8N1); every
    frame costs ``turnaround_s`` (the USB-serial adapter's latency and the host's
    reaction, 1 ms by default).
    """
    frames = math.ceil(in_bytes / frame_bytes) + math.ceil(out_bytes / MAX_PAYLOAD)
    to_board = in_bytes + HOST_FRAME_OVERHEAD * frames
    to_host = out_bytes + REPLY_FRAME_OVERHEAD * frames
    return LinkTime(frames=frames, to_board_bytes=to_board, to_host_bytes=to_host,
                    to_board_s=to_board * 10 / baud, to_host_s=to_host * 10 / baud,
                    turnaround_s=frames * turnaround_s)
