"""An ISA interpreter in numpy: executes a program's byte stream per ``rtl/isa.py``.

It is instant and strict: an instruction that reads or writes outside the
scratchpad or accumulator, or breaks a dataflow's limit (WS ``k <= rows``, OS
``m <= rows``), raises :class:`IsaError`. Words are decoded with
:func:`rtl.isa.decode` only.
"""

import numpy as np

from rtl.isa import Geometry, Opcode, Flags, decode, INSTRUCTION_BYTES
from .packing import unpack_rows, pack_rows, pack_acc_lanes, unpack_acc_lanes, wrap, signed_range
from .program import payload_bytes

__all__ = ["IsaError", "FunctionalMachine", "FunctionalBackend", "requantize"]


class IsaError(ValueError):
    """A program that the ISA does not allow (out-of-range rows, a dataflow limit)."""


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


class FunctionalMachine:
    """Scratchpad, accumulator and bias lanes of one accelerator, as numbers."""

    def __init__(self, geometry: Geometry):
        g = self.geometry = geometry
        self.sp = np.zeros((g.sp_depth, g.sp_lanes), dtype=np.int64)
        self.acc = np.zeros((g.acc_depth, g.cols), dtype=np.int64)
        self.bias = np.zeros(g.cols, dtype=np.int64)

    def _rows(self, memory, name, start, count):
        depth = len(memory)
        if start + count > depth:
            raise IsaError(f"{name} rows {start}..{start + count - 1} are beyond its {depth} rows")
        return slice(start, start + count)

    def run(self, stream: bytes) -> bytes:
        """Execute a whole byte stream; the reply bytes."""
        g = self.geometry
        reply = bytearray()
        pos = 0
        while pos < len(stream):
            word = stream[pos:pos + INSTRUCTION_BYTES]
            if len(word) < INSTRUCTION_BYTES:
                raise IsaError(f"the stream ends inside an instruction word at byte {pos}")
            ins = decode(word)
            pos += INSTRUCTION_BYTES
            size = payload_bytes(g, ins)
            payload = stream[pos:pos + size]
            if len(payload) < size:
                raise IsaError(f"{ins.opcode.name} at byte {pos - 16} needs {size} payload bytes")
            pos += size
            reply += self.execute(ins, payload)
        return bytes(reply)

    def execute(self, ins, payload: bytes) -> bytes:
        g = self.geometry
        op = ins.opcode
        if op == Opcode.NOP:
            return b""
        if op == Opcode.LOAD_SP:
            self.sp[self._rows(self.sp, "scratchpad", ins.addr0, ins.count0)] = \
                unpack_rows(payload, g.input_width, g.sp_lanes)
            return b""
        if op == Opcode.SET_BIAS:
            self.bias = unpack_acc_lanes(payload, g.acc_width, g.cols)[0]
            return b""
        if op == Opcode.MATMUL:
            m, k = ins.count0, ins.count1
            if g.dataflow == "ws":
                if k > g.rows:
                    raise IsaError(f"a WS MATMUL takes k <= rows = {g.rows}, not {k}")
                a = self.sp[self._rows(self.sp, "scratchpad", ins.addr0, m), :k]
                b = self.sp[self._rows(self.sp, "scratchpad", ins.addr1, k), :g.cols]
            else:
                if m > g.rows:
                    raise IsaError(f"an OS MATMUL takes m <= rows = {g.rows}, not {m}")
                a = self.sp[self._rows(self.sp, "scratchpad", ins.addr0, k), :m].T
                b = self.sp[self._rows(self.sp, "scratchpad", ins.addr1, k), :g.cols]
            out = self._rows(self.acc, "accumulator", ins.addr2, m)
            product = a @ b  # |a|,|b| < 2**15, k < 2**16: exact in int64
            if ins.flags & Flags.ACCUMULATE:
                product = self.acc[out] + product
            self.acc[out] = wrap(product, g.acc_width)
            return b""
        if op in (Opcode.STORE, Opcode.REQUANT):
            x = self.acc[self._rows(self.acc, "accumulator", ins.addr0, ins.count0)]
            if ins.flags & Flags.BIAS:
                x = x + self.bias  # exact: acc_width + 1 bits
            if op == Opcode.STORE and not ins.flags & Flags.REQUANT:
                return pack_acc_lanes(wrap(x, g.acc_width), g.acc_width)
            y = requantize(x, ins.mult, ins.shift, g.input_width)
            if op == Opcode.STORE:
                return pack_rows(y, g.input_width, g.cols)
            rows = self._rows(self.sp, "scratchpad", ins.addr1, ins.count0)
            self.sp[rows] = 0
            self.sp[rows, :g.cols] = y
            return b""
        if op == Opcode.STORE_SP:
            rows = self.sp[self._rows(self.sp, "scratchpad", ins.addr0, ins.count0)]
            return pack_rows(rows, g.input_width, g.sp_lanes)
        if op == Opcode.SYNC:
            return bytes([ins.tag])
        raise IsaError(f"opcode {op!r} is not executable")


class FunctionalBackend:
    """The ``functional`` backend: runs programs on a :class:`FunctionalMachine` (no cycles).

    State persists between runs, as on a device.
    """
    name = "functional"

    def __init__(self, geometry: Geometry):
        self.machine = FunctionalMachine(geometry)

    def run(self, program: bytes, reply_bytes: int) -> tuple[bytes, int | None]:
        reply = self.machine.run(program)
        if len(reply) != reply_bytes:
            raise IsaError(f"the program replied {len(reply)} bytes, expected {reply_bytes}")
        return reply, None
