"""An ISA interpreter in numpy: executes host byte streams and on-chip programs per ``rtl/isa.py``.

Every instruction of ISA v1 is here: the host-stream loads and stores, MATMUL
and REQUANT, the program memory (LOAD_PROG, RUN and the program-only control
flow SETP, BRANCH, EMIT, HALT), STATUS and RESET, and each vector operation
(VEC) exactly as ``docs/intmath.md`` defines it. The integer functions are
written here from that page (numpy int64 where the bounds are proven, Python
integers where they are not); they share no code with the RTL's tests or the
integer reference, so the three check each other.

Errors follow ``rtl/isa.py``: an illegal instruction is not executed and sets
a sticky error (code, opcode, program word) that STATUS reports; afterwards
every instruction but STATUS and RESET is skipped, its payload dropped and its
reply answered with 0xFF bytes of the expected length; a RUN that fails pads
its reply to 2N bytes. With ``strict=True`` (the default of
:class:`FunctionalMachine`, for compiler tests) the first error raises
:class:`IsaError` instead, naming what was wrong.

Words are decoded with :func:`rtl.isa.decode` only.
"""

import math

import numpy as np

from rtl import isa
from rtl.isa import (Geometry, Opcode, Flags, VecOp, Branch, ErrorCode, VEC_UNIT, NUM_PARAMS,
                     INSTRUCTION, INSTRUCTION_BYTES, decode, footprint, instruction_error,
                     memory_depth)
from .packing import unpack_rows, pack_rows, pack_acc_lanes, unpack_acc_lanes, wrap, signed_range
from .program import payload_bytes, reply_bytes

__all__ = ["IsaError", "FunctionalMachine", "FunctionalBackend", "requantize", "HOST_WORD",
           "MAX_RUN_STEPS"]

HOST_WORD = 0xFFFF          # STATUS's program word for an instruction from the host stream
FETCH_OPCODE = 0xFF         # STATUS's opcode when a program runs past the end of program memory
_MEMORY_NAMES = {"sp": "scratchpad", "acc": "accumulator", "prog": "program memory",
                 "tok": "token buffer"}
MAX_RUN_STEPS = 50_000_000  # a RUN longer than this is a program that never halts (not an ISA rule)

_I32_MIN, _I32_MAX = -(1 << 31), (1 << 31) - 1
_I16_MIN, _I16_MAX = -(1 << 15), (1 << 15) - 1


class IsaError(ValueError):
    """A program that the ISA does not allow (strict mode), or a RUN that never halts."""


class _Fault(Exception):
    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code


def requantize(x, mult: int, shift: int, width: int) -> np.ndarray:
    """``rtl/isa.py``'s requantization of exact integers ``x`` (already biased) to ``width`` bits."""
    x = np.asarray(x)
    # Exact: int64 while x * mult + rounding stays below 2**62, Python integers beyond.
    small = x.dtype.kind in "iu" and (x.size == 0 or int(np.abs(x).max()) < 1 << 45)
    x = x.astype(np.int64) if small else x.astype(object)
    if shift == 0:
        y = x * mult
    else:
        y = (x * mult + (1 << (shift - 1))) >> shift  # >> floors, as the formula's floor does
    low, high = signed_range(width)
    return np.clip(y, low, high).astype(np.int64)


# --- docs/intmath.md, on int64 arrays ---------------------------------------------------------
# Bounds: lanes are int32 and multipliers unsigned 16-bit, so x * m < 2**47 and the rounding
# term is at most 2**62: every expression below stays inside int64.

def _rq(x, m, s, lo, hi):
    x = np.asarray(x, dtype=np.int64)
    m = np.asarray(m, dtype=np.int64)
    y = x * m if s == 0 else (x * m + (1 << (s - 1))) >> s
    return np.clip(y, lo, hi)


def _rq8(x, m, s):
    return _rq(x, m, s, -128, 127)


def _rq32(x, m, s):
    return _rq(x, m, s, _I32_MIN, _I32_MAX)


def _sat32(x):
    return np.clip(x, _I32_MIN, _I32_MAX)


def _iexp(d):
    """i-exp of d in [-32768, 0] (elementwise)."""
    t = -np.asarray(d, dtype=np.int64)
    z = (t * 1477) >> 20
    r = t - z * 710
    big = (1385 - r) ** 2 + 1006157
    return np.where(z < 32, big >> np.minimum(z, 63), 0)


def _softmax(x, n, total, mult, shift):
    out = np.zeros(total, dtype=np.int64)
    if n == 0:
        return out
    xs = _rq32(x[:n], mult, shift)
    e = _iexp(np.maximum(xs - xs.max(), -32768))
    f = (1 << 40) // int(e.sum())
    out[:n] = np.minimum((e * f + (1 << 32)) >> 33, 127)
    return out


def _gelu(q, b, c, one, mult, shift):
    q = np.asarray(q, dtype=np.int64)
    a = np.minimum(np.abs(q), -b)
    y = _sat32(np.sign(q) * (c - (a + b) ** 2))
    g = _sat32(q * (y + one))
    return _rq8(g, mult, shift)


def _layernorm(x, gamma, beta, sh, mult, shift):
    n = len(x)
    mean = int(x.sum()) // n
    ys = np.clip((x - mean) >> sh, _I16_MIN, _I16_MAX)
    var = int((ys * ys).sum()) // n
    std = max(math.isqrt(var), 1)
    inv = (1 << 31) // std
    z = (ys * inv) >> 16
    return _rq8(_sat32(z * gamma + beta), mult, shift)


def _vector_rows(n, cols):
    return -(-n // cols)


def _signed32(value):
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >> 31 else value


_POS_VECS = frozenset({VecOp.EMBED, VecOp.ARGMAX, VecOp.PUT_COL})


def _moves_with_pos(ins) -> bool:
    """Whether the rows ``ins`` touches (so its legality) depend on POS or TOK."""
    if ins.opcode == Opcode.EMIT:
        return True
    if ins.opcode != Opcode.VEC:
        return False
    return ins.tag in _POS_VECS or bool(ins.flags & Flags.POS)


class FunctionalMachine:
    """Memories, registers and the error status of one accelerator, as numbers.

    ``strict``: raise :class:`IsaError` at the first illegal instruction instead of setting
    the sticky error (a compiler bug shows where it happens)."""

    def __init__(self, geometry: Geometry, *, strict: bool = True):
        g = self.geometry = geometry
        self.strict = strict
        self.sp = np.zeros((g.sp_depth, g.sp_lanes), dtype=np.int64)
        self.acc = np.zeros((g.acc_depth, g.cols), dtype=np.int64)
        self.bias = np.zeros(g.cols, dtype=np.int64)
        self.program = [bytes(INSTRUCTION_BYTES)] * g.program_words
        self._decoded = {}          # program word -> Instruction
        self._legal = set()         # program words whose legality does not depend on POS/TOK
        self.tok = np.zeros(g.tokens, dtype=np.int64)
        self.steps = 0              # program words executed by the last RUN
        self._clear()

    def _clear(self):
        """RESET: the error, the registers, the bias lanes (memories keep their contents)."""
        self.error = (ErrorCode.OK, 0, 0)
        self.params = [0] * NUM_PARAMS
        self.pos = self.prompt = self.generate = self.emitted = 0
        self.bias = np.zeros(self.geometry.cols, dtype=np.int64)

    @property
    def failed(self) -> bool:
        return self.error[0] != ErrorCode.OK

    # -- the host stream

    def run(self, stream: bytes) -> bytes:
        """Execute a whole host byte stream; the reply bytes."""
        g = self.geometry
        reply = bytearray()
        offset = 0
        while offset < len(stream):
            word = stream[offset:offset + INSTRUCTION_BYTES]
            if len(word) < INSTRUCTION_BYTES:
                raise IsaError(f"the stream ends inside an instruction word at byte {offset}")
            ins = self._decode(word)
            offset += INSTRUCTION_BYTES
            size = payload_bytes(g, ins) if ins is not None else 0
            payload = stream[offset:offset + size]
            if len(payload) < size:
                raise IsaError(f"{ins.opcode.name} at byte {offset - 16} needs {size} payload bytes")
            offset += size
            reply += self.execute(ins if ins is not None else word, payload)
        return bytes(reply)

    @staticmethod
    def _decode(word):
        """The Instruction of a word, or None when its opcode is reserved."""
        try:
            return decode(word)
        except ValueError:
            return None

    @staticmethod
    def _raw_opcode(word) -> int:
        field = INSTRUCTION["opcode"]
        return (int.from_bytes(word, "little") >> field.offset) & ((1 << field.width) - 1)

    def execute(self, ins, payload: bytes = b"") -> bytes:
        """One host-stream instruction (an Instruction, or a raw word whose opcode is
        reserved); its reply bytes."""
        g = self.geometry
        if not isinstance(ins, isa.Instruction):
            self._fail(_Fault(ErrorCode.ILLEGAL_OPCODE,
                              f"opcode {self._raw_opcode(ins)} is reserved"), self._raw_opcode(ins),
                       HOST_WORD)
            return b""
        op = ins.opcode
        expected = reply_bytes(g, ins)
        if op == Opcode.STATUS:
            code, opcode, word = self.error
            return bytes([int(code), opcode]) + word.to_bytes(2, "little")
        if op == Opcode.RESET:
            self._clear()
            return b""
        if self.failed:
            return b"\xff" * expected
        if op == Opcode.RUN:
            return self._run_program(ins, payload)
        try:
            self._check(ins, host=True)
            return self._host(ins, payload)
        except _Fault as fault:
            self._fail(fault, op.value, HOST_WORD)
            return b"\xff" * expected

    def _fail(self, fault: _Fault, opcode: int, word: int):
        if self.strict:
            raise IsaError(f"{fault.code.name}: {fault}")
        self.error = (fault.code, opcode, word)

    def _host(self, ins, payload):
        g = self.geometry
        op = ins.opcode
        if op == Opcode.LOAD_SP:
            self.sp[ins.addr0:ins.addr0 + ins.count0] = unpack_rows(payload, g.input_width,
                                                                     g.sp_lanes)
        elif op == Opcode.LOAD_ACC:
            self.acc[ins.addr0:ins.addr0 + ins.count0] = unpack_acc_lanes(payload, g.acc_width,
                                                                           g.cols)
        elif op == Opcode.LOAD_PROG:
            for i in range(ins.count0):
                self.program[ins.addr0 + i] = bytes(payload[16 * i:16 * i + 16])
                self._decoded.pop(ins.addr0 + i, None)
                self._legal.discard(ins.addr0 + i)
        elif op == Opcode.SET_BIAS:
            self.bias = unpack_acc_lanes(payload, g.acc_width, g.cols)[0]
        elif op in (Opcode.STORE, Opcode.STORE_SP):
            if op == Opcode.STORE_SP:
                return pack_rows(self.sp[ins.addr0:ins.addr0 + ins.count0], g.input_width,
                                 g.sp_lanes)
            x = self.acc[ins.addr0:ins.addr0 + ins.count0]
            if ins.flags & Flags.BIAS:
                x = x + self.bias  # exact: acc_width + 1 bits
            if not ins.flags & Flags.REQUANT:
                return pack_acc_lanes(wrap(x, g.acc_width), g.acc_width)
            return pack_rows(requantize(x, ins.mult, ins.shift, g.input_width), g.input_width,
                             g.cols)
        elif op == Opcode.SYNC:
            return bytes([ins.tag])
        else:
            self._common(ins)
        return b""

    # -- checks

    def _check(self, ins, *, host: bool):
        """Raise _Fault if ``ins`` is illegal here: the code by :func:`rtl.isa.instruction_error`
        (the one statement of the rules), a message saying why."""
        g = self.geometry
        tok = int(self.tok[self.pos]) if self.pos < g.tokens else 0
        code = instruction_error(ins, g, in_program=not host, pos=self.pos, tok=tok)
        if code != ErrorCode.OK:
            raise _Fault(code, self._why(ins, code, host, tok))

    def _why(self, ins, code, host, tok) -> str:
        g = self.geometry
        op = ins.opcode
        if code == ErrorCode.ILLEGAL_OPCODE:
            if op == Opcode.VEC or op == Opcode.BRANCH:
                return f"{op.name} tag {ins.tag} is reserved"
            if op == Opcode.SETP:
                return f"SETP of parameter {ins.tag}: there are {NUM_PARAMS}"
            return f"{op.name} is illegal on the {'host stream' if host else 'program'}"
        if code == ErrorCode.NO_UNIT:
            unit = VEC_UNIT[VecOp(ins.tag)]
            return f"VEC {VecOp(ins.tag).name} needs the {unit} unit, which this config lacks"
        if code == ErrorCode.OUT_OF_RANGE:
            for memory, first, rows in footprint(ins, g, self.pos, tok):
                depth = memory_depth(g, memory)
                if first + rows > depth:
                    return (f"{op.name}: {_MEMORY_NAMES[memory]} rows {first}..{first + rows - 1} "
                            f"are beyond its {depth} rows")
        if code == ErrorCode.DATAFLOW_LIMIT:
            if g.dataflow == "ws":
                return f"a WS MATMUL takes k <= rows = {g.rows}, not {ins.count1}"
            if ins.tag:
                return f"an OS MATMUL has no K loop: tag must be 0, not {ins.tag}"
            return f"an OS MATMUL takes m <= rows = {g.rows}, not {ins.count0}"
        return (f"RUN of P = {ins.count0}, N = {ins.count1} from word {ins.addr0}: needs "
                f"P >= 1, P + N <= {g.tokens} tokens and an entry word below "
                f"{g.program_words}")

    # -- instructions of the host stream and programs alike

    def _common(self, ins):
        g = self.geometry
        op = ins.opcode
        if op == Opcode.NOP:
            return
        if op == Opcode.MATMUL:
            self._matmul(ins)
        elif op == Opcode.REQUANT:
            x = self.acc[ins.addr0:ins.addr0 + ins.count0]
            if ins.flags & Flags.BIAS:
                x = x + self.bias
            rows = slice(ins.addr1, ins.addr1 + ins.count0)
            self.sp[rows] = 0
            self.sp[rows, :g.cols] = requantize(x, ins.mult, ins.shift, g.input_width)
        elif op == Opcode.VEC:
            self._vec(ins)
        elif op == Opcode.SETP:
            self.params[ins.tag] = _signed32(ins.addr0 | ins.addr1 << 16)

    def _matmul(self, ins):
        g = self.geometry
        m, k = ins.count0, ins.count1
        if m == 0 or (g.dataflow == "os" and k == 0):
            return      # no beats: nothing is written (rtl/isa.py)
        out = slice(ins.addr2, ins.addr2 + m)
        for r in range(ins.tag + 1):     # the WS K loop (OS: tag = 0)
            a_row, b_row = ins.addr0 + r * ins.mult, ins.addr1 + r * k
            if g.dataflow == "ws":
                a = self.sp[a_row:a_row + m, :k]
            else:
                a = self.sp[a_row:a_row + k, :m].T
            b = self.sp[b_row:b_row + k, :g.cols]
            product = a @ b  # |a|,|b| < 2**15, k < 2**16: exact in int64
            if r or ins.flags & Flags.ACCUMULATE:
                product = self.acc[out] + product
            if g.acc_width == 32:
                self.acc[out] = ((product + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)
            else:
                self.acc[out] = wrap(product, g.acc_width)

    # -- vectors

    def _read(self, memory, base, n):
        c = self.geometry.cols
        rows = _vector_rows(n, c)
        return memory[base:base + rows, :c].reshape(-1)[:n]

    def _write(self, memory, base, values):
        c = self.geometry.cols
        n = len(values)
        rows = _vector_rows(n, c)
        flat = np.zeros(rows * c, dtype=np.int64)
        flat[:n] = values
        memory[base:base + rows] = 0
        memory[base:base + rows, :c] = flat.reshape(rows, c)

    def _table(self, base, entry, n):
        """Entry ``entry`` of the column table at ``base`` with ``n`` elements per entry."""
        c = self.geometry.cols
        first = base + (entry // c) * n
        return self.sp[first:first + n, entry % c]

    def _vec(self, ins):
        c = self.geometry.cols
        v = VecOp(ins.tag)
        n = ins.count0
        sp, acc = self.sp, self.acc
        perchan = ins.flags & Flags.PERCHAN
        if v == VecOp.REQ:
            m = self._read(acc, ins.addr1, n) & 0xFFFF if perchan else ins.mult
            self._write(sp, ins.addr2, _rq8(self._read(acc, ins.addr0, n), m, ins.shift))
        elif v == VecOp.ADD:
            m = self._read(acc, ins.addr2, n) & 0xFFFF if perchan else ins.mult
            x = self._read(acc, ins.addr0, n)
            o = self._read(acc, ins.addr1, n)
            self._write(acc, ins.addr0, _sat32(x + _rq32(o, m, ins.shift)))
        elif v == VecOp.MUL:
            a, b = self._read(sp, ins.addr0, n), self._read(sp, ins.addr1, n)
            self._write(sp, ins.addr2, _rq8(a * b, ins.mult, ins.shift))
        elif v == VecOp.GELU:
            p = self.params
            self._write(sp, ins.addr2, _gelu(self._read(sp, ins.addr0, n), p[isa.Param.GELU_B],
                                             p[isa.Param.GELU_C], p[isa.Param.GELU_ONE],
                                             ins.mult, ins.shift))
        elif v == VecOp.SOFTMAX:
            valid = n + (self.pos if ins.flags & Flags.POS else 0)
            total = max(valid, ins.count1)
            x = self._read(acc, ins.addr0, valid)
            self._write(sp, ins.addr2, _softmax(x, valid, total, ins.mult, ins.shift))
        elif v == VecOp.LAYERNORM:
            if n == 0:
                return
            rows = _vector_rows(n, c)
            out = _layernorm(self._read(acc, ins.addr0, n), self._read(acc, ins.addr1, n),
                             self._read(acc, ins.addr1 + rows, n), ins.count1 % 32,
                             ins.mult, ins.shift)
            self._write(sp, ins.addr2, out)
        elif v == VecOp.EMBED:
            tok = int(self.tok[self.pos])
            x = self._table(ins.addr0, tok, n) * ins.mult + \
                self._table(ins.addr1, self.pos, n) * ins.count1
            self._write(acc, ins.addr2, _sat32(x))
        elif v == VecOp.ARGMAX:
            x = self._read(acc, ins.addr0, n)
            self.tok[self.pos + 1] = int(np.argmax(x)) if n else 0
        elif v == VecOp.COPY_ACC:
            for r in range(n):      # row by row, in order
                acc[ins.addr2 + r] = acc[ins.addr0 + r]
        elif v == VecOp.COPY_SP:
            first = ins.addr1 + (self.pos if ins.flags & Flags.POS else 0)
            for r in range(n):
                sp[first + r * ins.count1] = sp[ins.addr0 + r]
        elif v == VecOp.PUT_COL:
            first = ins.addr1 + (self.pos // c) * n
            sp[first:first + n, self.pos % c] = self._read(sp, ins.addr0, n)

    # -- programs

    def _run_program(self, ins, payload):
        g = self.geometry
        n = ins.count1
        try:
            self._check(ins, host=True)
        except _Fault as fault:
            self._fail(fault, Opcode.RUN.value, HOST_WORD)
            return b"\xff" * (2 * n)
        prompt = np.frombuffer(bytes(payload), dtype="<u2").astype(np.int64)
        self.tok[:len(prompt)] = prompt
        self.pos, self.prompt, self.generate, self.emitted = 0, ins.count0, n, 0
        last = max(self.prompt - 1, self.prompt + n - 2)
        reply = bytearray()
        pc = ins.addr0
        self.steps = 0
        while True:
            self.steps += 1
            if self.steps > MAX_RUN_STEPS:
                raise IsaError(f"the RUN from word {ins.addr0} did not halt in "
                               f"{MAX_RUN_STEPS} instructions")
            pc &= 0xFFFF    # PC counts modulo 65536
            if pc >= g.program_words:
                self._fail(_Fault(ErrorCode.OUT_OF_RANGE, f"program word {pc} is beyond the "
                                  f"{g.program_words} words of program memory"), FETCH_OPCODE, pc)
                break
            word_ins = self._decoded.get(pc)
            if word_ins is None:
                word_ins = self._decode(self.program[pc])
                if word_ins is None:
                    raw = self._raw_opcode(self.program[pc])
                    self._fail(_Fault(ErrorCode.ILLEGAL_OPCODE, f"opcode {raw} at program word "
                                      f"{pc} is reserved"), raw, pc)
                    break
                self._decoded[pc] = word_ins
            op = word_ins.opcode
            if pc not in self._legal:
                try:
                    self._check(word_ins, host=False)
                except _Fault as fault:
                    self._fail(fault, op.value, pc)
                    break
                if not _moves_with_pos(word_ins):
                    self._legal.add(pc)
            if op == Opcode.HALT:
                break
            pc += 1
            if op == Opcode.BRANCH:
                tag = word_ins.tag
                if tag == Branch.ALWAYS:
                    pc = word_ins.addr0
                elif tag == Branch.PROMPT:
                    if self.pos + 1 < self.prompt:
                        pc = word_ins.addr0
                else:   # LOOP
                    self.pos += 1
                    if self.pos <= last:
                        pc = word_ins.addr0
            elif op == Opcode.EMIT:
                if self.emitted < n:
                    reply += int(self.tok[self.pos + 1]).to_bytes(2, "little")
                    self.emitted += 1
            else:
                self._common(word_ins)
        reply += b"\xff" * (2 * n - len(reply))
        return bytes(reply)


class FunctionalBackend:
    """The ``functional`` backend: runs programs on a :class:`FunctionalMachine` (no cycles).

    State persists between runs, as on a device; errors are sticky, as on the device.
    """
    name = "functional"

    def __init__(self, geometry: Geometry, *, strict: bool = False):
        self.machine = FunctionalMachine(geometry, strict=strict)

    def run(self, program: bytes, reply_bytes: int) -> tuple[bytes, int | None]:
        reply = self.machine.run(program)
        if len(reply) != reply_bytes:
            raise IsaError(f"the program replied {len(reply)} bytes, expected {reply_bytes}")
        return reply, None
