"""Tandem instruction set: the one contract between the hardware and the software.

The accelerator reads one byte stream from the host. It carries 16-byte
instruction words (little-endian, layout :data:`INSTRUCTION`), some of them
followed by a payload of data bytes; the accelerator answers on a second byte
stream. The controller (``rtl/controller.py``) decodes these words; the compiler
(``firmware/``) encodes them with :func:`encode`. Nothing else may know the
bit positions.

Instructions (``addr*``/``count*`` are row indices and row counts)::

    NOP       -
    LOAD_SP   addr0=scratchpad row, count0=rows
              payload: count0 scratchpad rows of geometry.sp_row_bytes bytes
    SET_BIAS  payload: cols bias lanes of geometry.acc_bytes bytes each
    MATMUL    addr0=A row, addr1=B row, addr2=accumulator row,
              count0=m, count1=k, flags.accumulate
              WS: B holds k<=rows scratchpad rows of cols lanes (B[k, n]);
                  A holds m rows of k lanes (A[m, k]); m result rows are
                  written from addr2 on.
              OS: A holds k rows of m<=rows lanes (A transposed: A^T[k, m]),
                  B holds k rows of cols lanes; m result rows from addr2.
              Lanes of A beyond k (WS) are ignored, so stale scratchpad data
              cannot leak into a result.
    STORE     addr0=accumulator row, count0=rows, flags.bias, flags.requant,
              mult, shift
              reply: count0 rows; raw: cols lanes of acc_bytes bytes;
              requantized: geometry.out_row_bytes bytes (input_width lanes).
    REQUANT   addr0=accumulator row, addr1=scratchpad row, count0=rows,
              flags.bias, mult, shift: requantized rows into the scratchpad
              (lanes 0..cols-1; higher lanes are written as zero)
    STORE_SP  addr0=scratchpad row, count0=rows
              reply: count0 rows of geometry.sp_row_bytes bytes
    SYNC      tag: reply one byte, the tag (the host waits on it)

Numbers on the wire are two's complement, little-endian. A row of lanes of
``w`` bits is packed lane 0 first into ``ceil(lanes * w / 8)`` bytes.

Requantization (round half up, i.e. towards +infinity, then saturation)::

    x = acc + (bias if flags.bias else 0)            # exact, acc_width + 1 bits
    y = floor((x * mult + 2**(shift - 1)) / 2**shift)  # shift >= 1
    y = floor(x * mult)                               # shift == 0
    out = clamp(y, -2**(input_width - 1), 2**(input_width - 1) - 1)

A raw STORE with flags.bias returns ``acc + bias`` wrapped to acc_width bits,
as int32 addition wraps in torch.
"""

from dataclasses import dataclass
import enum as py_enum

from amaranth.lib import data, enum

__all__ = [
    "Opcode", "Flags", "INSTRUCTION", "INSTRUCTION_BYTES", "Instruction",
    "encode", "decode", "Geometry", "REQUANT_LATENCY", "WRITEBACK_STAGES",
]

# Timing contract: the RTL is built from these and firmware/cycles.py models them.
REQUANT_LATENCY = 6   # registered stages of the requantizer (one lane a cycle)
WRITEBACK_STAGES = 3  # accumulator read-modify-write after a result row leaves the array

INSTRUCTION_BYTES = 16


class Opcode(enum.Enum, shape=4):
    NOP = 0
    LOAD_SP = 1
    SET_BIAS = 2
    MATMUL = 3
    STORE = 4
    REQUANT = 5
    STORE_SP = 6
    SYNC = 7


class Flags(py_enum.IntFlag):
    ACCUMULATE = 1  # MATMUL: add to the accumulator rows instead of overwriting them
    BIAS = 2        # STORE/REQUANT: add the bias lanes first
    REQUANT = 4     # STORE: requantize to input_width lanes instead of raw acc_width


FLAGS_WIDTH = 4

INSTRUCTION = data.StructLayout({
    "opcode": Opcode,
    "flags": FLAGS_WIDTH,
    "addr0": 16,
    "addr1": 16,
    "addr2": 16,
    "count0": 16,
    "count1": 16,
    "mult": 16,
    "shift": 6,
    "tag": 8,
    "reserved": 10,
})
assert INSTRUCTION.size == INSTRUCTION_BYTES * 8

_FIELDS = [name for name, _ in INSTRUCTION]
_FIELD_LIMITS = {name: (1 << field.width) for name, field in INSTRUCTION if name != "opcode"}


@dataclass(frozen=True)
class Instruction:
    """One decoded instruction word; fields that an opcode does not use are 0."""
    opcode: Opcode
    flags: int = 0
    addr0: int = 0
    addr1: int = 0
    addr2: int = 0
    count0: int = 0
    count1: int = 0
    mult: int = 0
    shift: int = 0
    tag: int = 0
    reserved: int = 0

    def __post_init__(self):
        object.__setattr__(self, "opcode", Opcode(self.opcode))
        for name, limit in _FIELD_LIMITS.items():
            value = int(getattr(self, name))
            if not 0 <= value < limit:
                raise ValueError(
                    f"instruction field {name} must be from 0 to {limit - 1}, not {value!r}")
            object.__setattr__(self, name, value)


def encode(instruction: Instruction) -> bytes:
    """The 16 bytes of an instruction word, as the controller reads them."""
    word = 0
    for name, field in INSTRUCTION:
        value = getattr(instruction, name)
        word |= int(value.value if name == "opcode" else value) << field.offset
    return word.to_bytes(INSTRUCTION_BYTES, "little")


def decode(word: bytes) -> Instruction:
    if len(word) != INSTRUCTION_BYTES:
        raise ValueError(f"an instruction word is {INSTRUCTION_BYTES} bytes, not {len(word)}")
    value = int.from_bytes(word, "little")
    fields = {name: (value >> field.offset) & ((1 << field.width) - 1) for name, field in INSTRUCTION}
    return Instruction(**fields)


def _row_bytes(lanes, width):
    return (lanes * width + 7) // 8


@dataclass(frozen=True)
class Geometry:
    """Sizes derived from the accelerator parameters, shared by RTL and firmware.

    ``scratchpad_kib`` and ``accumulator_kib`` are capacities in KiB; the depths
    are rounded down to a multiple of ``banks`` rows.
    """
    rows: int
    cols: int
    dataflow: str = "ws"
    input_width: int = 8
    acc_width: int = 32
    scratchpad_kib: float = 16
    accumulator_kib: float = 16
    banks: int = 1

    def __post_init__(self):
        for name in ("rows", "cols"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= 64:
                raise ValueError(f"{name} must be an integer from 1 to 64, not {value!r}")
        if self.dataflow not in ("ws", "os"):
            raise ValueError(f"dataflow must be 'ws' or 'os', not {self.dataflow!r}")
        if self.input_width not in (4, 8, 16):
            raise ValueError(f"input_width must be 4, 8 or 16, not {self.input_width!r}")
        if not (2 * self.input_width <= self.acc_width <= 64 and self.acc_width % 8 == 0):
            raise ValueError(f"acc_width must be a multiple of 8 from {2 * self.input_width} "
                             f"to 64, not {self.acc_width!r}")
        if not isinstance(self.banks, int) or self.banks not in (1, 2, 4, 8):
            raise ValueError(f"banks must be 1, 2, 4 or 8, not {self.banks!r}")
        for name, depth in (("scratchpad_kib", self.sp_depth), ("accumulator_kib", self.acc_depth)):
            if depth < max(self.rows, self.cols, self.banks):
                raise ValueError(f"{name}={getattr(self, name)!r} holds only {depth} rows; "
                                 f"it must hold at least {max(self.rows, self.cols, self.banks)}")
            if depth > 65536:
                raise ValueError(f"{name}={getattr(self, name)!r} holds {depth} rows; "
                                 f"instructions address at most 65536")

    @property
    def array_latency(self) -> int:
        """Cycles from a beat entering the array to its (first) result row leaving it:
        the input register, the skew, the PE's two product registers, the sum's path."""
        return self.rows + self.cols + 2

    @property
    def os_spacing(self) -> int:
        """OS: fewest cycles between the last beats of two tiles (the result chain drains)."""
        return 2 * self.rows + self.cols - 1

    @property
    def swap_guard(self) -> int:
        """WS: cycles the shadow weights stay reserved after a tile starts streaming.

        Shadow row r is read until the swap beat has passed PE(r, cols-1), and the
        next tile's weights load one row a cycle from row 0, so every row is free
        in time once cols - 1 cycles have passed (the array's input register
        included); 2 more are kept as margin (tests/firmware/test_sim.py fails
        with cols - 3).
        """
        return self.cols + 1

    @property
    def sp_lanes(self) -> int:
        """Lanes of a scratchpad row: enough for an A row (rows) and a B row (cols)."""
        return max(self.rows, self.cols)

    @property
    def sp_row_bytes(self) -> int:
        return _row_bytes(self.sp_lanes, self.input_width)

    @property
    def sp_depth(self) -> int:
        rows = int(self.scratchpad_kib * 1024 * 8) // (self.sp_lanes * self.input_width)
        return rows - rows % self.banks

    @property
    def acc_bytes(self) -> int:
        return (self.acc_width + 7) // 8

    @property
    def acc_row_bytes(self) -> int:
        return self.cols * self.acc_bytes

    @property
    def acc_depth(self) -> int:
        rows = int(self.accumulator_kib * 1024 * 8) // (self.cols * self.acc_width)
        return rows - rows % self.banks

    @property
    def out_row_bytes(self) -> int:
        """Bytes of one requantized accumulator row (cols lanes of input_width)."""
        return _row_bytes(self.cols, self.input_width)
