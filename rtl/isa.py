"""Tandem instruction set (ISA v1): the one contract between the hardware and the software.

The accelerator reads one byte stream from the host. It carries 16-byte
instruction words (little-endian, layout :data:`INSTRUCTION`), some of them
followed by a payload of data bytes; the accelerator answers on a second byte
stream. The controller (``rtl/controller.py``) decodes these words; the compiler
(``firmware/``) encodes them with :func:`encode`. Nothing else may know the
bit positions. ``docs/intmath.md`` defines every integer function of the
vector units bit for bit; it is normative, and the RTL, the ISA interpreter (``firmware/functional.py``) and
the integer reference (``firmware/reference.py``) implement them
independently.

Instructions come from the host stream or, once loaded, from the on-chip
**program memory** (``RUN``). ``addr*``/``count*`` are row indices and row
counts unless said otherwise.

Host stream and program alike::

    NOP       -
    MATMUL    addr0=A row, addr1=B row, addr2=accumulator row,
              count0=m, count1=k, flags.ACCUMULATE
              WS: B holds k<=rows scratchpad rows of cols lanes (B[k, n]);
                  A holds m rows of k lanes (A[m, k]); m result rows are
                  written from addr2 on.
              OS: A holds k rows of m<=rows lanes (A transposed: A^T[k, m]),
                  B holds k rows of cols lanes; m result rows from addr2.
              Lanes of A beyond k (WS) are ignored, so stale scratchpad data
              cannot leak into a result. A MATMUL with no beats (WS m=0,
              OS k=0 or m=0) writes nothing.
              WS K loop: tag=R runs R+1 tiles back to back; tile r reads A
              from addr0 + r*mult and B from addr1 + r*k (consecutive
              k-row pieces of the weights) and accumulates into the same m
              rows from addr2: tile 0 as flags.ACCUMULATE says, every later
              tile onto the earlier ones. So one word computes
              C (+)= sum_r A_r @ B_r over (R+1)*k of K. R=0 is the single
              tile above (mult is then ignored). OS takes R=0 only.
    REQUANT   addr0=accumulator row, addr1=scratchpad row, count0=rows,
              flags.BIAS, mult, shift: requantized rows into the scratchpad
              (lanes 0..cols-1; higher lanes are written as zero)
    VEC       tag=VecOp: a vector-unit operation (see VecOp and docs/intmath.md)
    SETP      tag=param index (0..NUM_PARAMS-1), value = addr0 | addr1 << 16
              as a signed 32-bit number: P[tag] = value

Program only (illegal on the host stream, :data:`PROGRAM_ONLY`)::

    BRANCH    tag=Branch condition, addr0=target program word
    EMIT      send TOK[POS+1] (2 bytes, little-endian) if fewer than N tokens
              have been sent in this RUN; otherwise nothing
    HALT      end the RUN: pad the reply to 2N bytes with 0xFF, back to the host stream

Host stream only (illegal inside a program, :data:`HOST_ONLY`)::

    SYNC      tag: reply one byte, the tag (the host waits on it; inside a
              program it would break the RUN's 2N-byte reply)

    LOAD_SP   addr0=scratchpad row, count0=rows
              payload: count0 scratchpad rows of geometry.sp_row_bytes bytes
    LOAD_ACC  addr0=accumulator row, count0=rows
              payload: count0 rows of geometry.acc_row_bytes bytes
    LOAD_PROG addr0=program word, count0=words; payload: count0 x 16 bytes
    SET_BIAS  payload: cols bias lanes of geometry.acc_bytes bytes each
    STORE     addr0=accumulator row, count0=rows, flags.BIAS, flags.REQUANT,
              mult, shift
              reply: count0 rows; raw: cols lanes of acc_bytes bytes;
              requantized: geometry.out_row_bytes bytes (input_width lanes).
    STORE_SP  addr0=scratchpad row, count0=rows
              reply: count0 rows of geometry.sp_row_bytes bytes
    RUN       addr0=entry word, count0=P (prompt tokens, >= 1), count1=N
              (tokens to generate); payload: P token ids, 2 bytes each (LE),
              written to TOK[0..P-1]. Sets POS=0 and runs the program from
              addr0 until HALT. Reply: exactly 2N bytes (the EMITs, padded).
    STATUS    reply 4 bytes: error code, opcode of the failing instruction,
              program word of it (2 bytes LE; 0xFFFF for the host stream);
              all four 0 while there is no error
    RESET     clear the error, the registers (POS, P, N, PC, the emitted count,
              the parameter registers) and the bias lanes (memories keep
              their contents: a loaded model survives a reset)

Errors. An illegal instruction (a reserved opcode, VecOp, Branch or SETP
index, a host-only opcode in a program or a program-only one on the host
stream, a unit the config lacks, a row outside its memory, WS k > rows, OS
m > rows or an OS K loop, a RUN with P = 0, P + N > geometry.tokens, no program memory or an
entry word outside it) is not executed and sets a sticky error
(:class:`ErrorCode`; where several apply, the smallest code;
:func:`instruction_error` states the rules, :func:`footprint` the rows each
instruction touches). A program that runs past the last word of program
memory fails at the fetch with OUT_OF_RANGE, opcode 0xFF and the word address
(PC counts modulo 65536, so a full 65536-word memory never runs out).
From then on every instruction but STATUS and RESET is skipped: its payload
is read and dropped and its reply bytes, if any, are all 0xFF, so the reply
has the length the host expects (the illegal instruction itself included).
A RUN stops at the failing instruction and pads its reply to 2N bytes of 0xFF.

Numbers on the wire are two's complement, little-endian. A row of lanes of
``w`` bits is packed lane 0 first into ``ceil(lanes * w / 8)`` bytes.

Requantization (round half up, i.e. towards +infinity, then saturation)::

    x = acc + (bias if flags.BIAS else 0)            # exact, acc_width + 1 bits
    y = floor((x * mult + 2**(shift - 1)) / 2**shift)  # shift >= 1
    y = floor(x * mult)                               # shift == 0
    out = clamp(y, -2**(input_width - 1), 2**(input_width - 1) - 1)

A raw STORE with flags.BIAS returns ``acc + bias`` wrapped to acc_width bits,
as int32 addition wraps in torch.
"""

from dataclasses import dataclass
import enum as py_enum

from amaranth.lib import data, enum

__all__ = [
    "Opcode", "Flags", "VecOp", "Branch", "ErrorCode", "Param", "UNITS", "VEC_UNIT",
    "HOST_ONLY", "NUM_PARAMS", "INSTRUCTION", "INSTRUCTION_BYTES", "Instruction",
    "encode", "decode", "Geometry", "REQUANT_LATENCY", "WRITEBACK_STAGES", "SP_READ_LATENCY",
    "PROGRAM_ONLY", "HOST_FETCH_CYCLES", "PROGRAM_FETCH_CYCLES", "MEMORIES", "memory_depth", "footprint",
    "instruction_error", "vector_rows",
]

# Timing contract: the RTL is built from these and firmware/cycles.py models them.
REQUANT_LATENCY = 6   # registered stages of the requantizer (one lane a cycle)
WRITEBACK_STAGES = 3  # accumulator read-modify-write after a result row leaves the array
# Cycles from a scratchpad read to its row on the port: the block RAM's read, then a
# register per bank before the bank multiplexer (rtl/memory.py), so that the block RAM's
# 5.8 ns clock-to-out and the multiplexer never share a cycle (docs/fpga.md).
SP_READ_LATENCY = 2
INSTRUCTION_BYTES = 16
# Cycles from a fetch state to DISPATCH. A host word: INSTRUCTION_BYTES cycles, one a
# byte, then DECODE and CHECK, which register the instruction's error check in two
# steps (its products, then the verdict and the skip lengths; rtl/controller.py). A
# word from program memory: one cycle to read it, one to latch it, DECODE, CHECK.
HOST_FETCH_CYCLES = INSTRUCTION_BYTES + 2
PROGRAM_FETCH_CYCLES = 4


class Opcode(enum.Enum, shape=5):
    NOP = 0
    LOAD_SP = 1
    SET_BIAS = 2
    MATMUL = 3
    STORE = 4
    REQUANT = 5
    STORE_SP = 6
    SYNC = 7
    LOAD_ACC = 8
    LOAD_PROG = 9
    RUN = 10
    STATUS = 11
    RESET = 12
    VEC = 13
    SETP = 14
    BRANCH = 15
    EMIT = 16
    HALT = 17


# Opcodes that only the host stream may carry (illegal inside a program).
HOST_ONLY = frozenset({Opcode.LOAD_SP, Opcode.LOAD_ACC, Opcode.LOAD_PROG, Opcode.SET_BIAS,
                       Opcode.STORE, Opcode.STORE_SP, Opcode.RUN, Opcode.STATUS, Opcode.RESET,
                       Opcode.SYNC})
# Opcodes that only a program may carry (illegal on the host stream).
PROGRAM_ONLY = frozenset({Opcode.BRANCH, Opcode.EMIT, Opcode.HALT})


class Flags(py_enum.IntFlag):
    ACCUMULATE = 1  # MATMUL: add to the accumulator rows instead of overwriting them
    BIAS = 2        # STORE/REQUANT: add the bias lanes first
    REQUANT = 4     # STORE: requantize to input_width lanes instead of raw acc_width
    POS = 8         # VEC SOFTMAX: n += POS; VEC COPY_SP: destination row += POS
    PERCHAN = 16    # VEC REQ/ADD: per-channel multipliers from an accumulator vector


class VecOp(py_enum.IntEnum):
    """``tag`` of a VEC instruction. Vectors use the *vector layout*: element i of a
    vector at row ``base`` is lane ``i % cols`` of row ``base + i // cols``
    (scratchpad: int8 lanes, lanes >= cols unused; accumulator: int32 lanes).
    ``n`` is count0. docs/intmath.md defines each one exactly."""
    REQ = 0       # sp[addr2] = rq8(acc[addr0], M, shift); M = mult or acc vector addr1 (PERCHAN)
    ADD = 1       # acc[addr0] = sat32(acc[addr0] + rq32(acc[addr1], M, shift)); M = mult or acc addr2
    MUL = 2       # sp[addr2] = rq8(sp[addr0] * sp[addr1], mult, shift)
    GELU = 3      # sp[addr2] = rq8(igelu(sp[addr0]; P[GELU_B], P[GELU_C], P[GELU_ONE]), mult, shift)
    SOFTMAX = 4   # sp[addr2] = isoftmax(rq32(acc[addr0], mult, shift)) over n (+POS) of max(n, count1)
    LAYERNORM = 5 # sp[addr2] = ilayernorm(acc[addr0]; gamma acc[addr1], beta after it, SH=count1)
    EMBED = 6     # acc[addr2] = sat32(col(addr0, TOK[POS]) * mult + col(addr1, POS) * count1)
    ARGMAX = 7    # TOK[POS+1] = first index of the max of acc[addr0] over n
    COPY_ACC = 8  # acc rows addr2+r = acc rows addr0+r, r < count0
    COPY_SP = 9   # sp rows addr1 + r*count1 (+POS) = sp rows addr0+r, r < count0
                  # (COPY_*: source and destination rows must not overlap; if they do,
                  # the result is undefined: the RTL reads a row before the last write lands)
    PUT_COL = 10  # sp[addr1 + (POS // cols)*n + i] lane POS % cols = element i of sp vector addr0


# Which config unit each VecOp needs (``[units]`` in a config names the units present).
VEC_UNIT = {
    VecOp.REQ: "elementwise", VecOp.ADD: "elementwise", VecOp.MUL: "elementwise",
    VecOp.COPY_ACC: "elementwise", VecOp.COPY_SP: "elementwise", VecOp.PUT_COL: "elementwise",
    VecOp.GELU: "gelu", VecOp.SOFTMAX: "softmax", VecOp.LAYERNORM: "layernorm",
    VecOp.EMBED: "embed", VecOp.ARGMAX: "argmax",
}
UNITS = ("elementwise", "gelu", "softmax", "layernorm", "embed", "argmax")


class Branch(py_enum.IntEnum):
    """``tag`` of a BRANCH instruction. ``last = max(P - 1, P + N - 2)``."""
    ALWAYS = 0    # PC = addr0
    PROMPT = 1    # PC = addr0 if POS + 1 < P (the next token is still a prompt token)
    LOOP = 2      # POS += 1; PC = addr0 if POS <= last


class ErrorCode(py_enum.IntEnum):
    """The sticky error status that STATUS reports."""
    OK = 0
    ILLEGAL_OPCODE = 1   # reserved opcode or VecOp/Branch, host-only opcode in a program
    NO_UNIT = 2          # a VEC operation whose unit the config does not have
    OUT_OF_RANGE = 3     # a row outside its memory, a program word outside program memory
    DATAFLOW_LIMIT = 4   # WS k > rows, OS m > rows, an OS MATMUL with a K loop (tag != 0)
    BAD_RUN = 5          # RUN with P = 0, P + N > tokens, or no program memory


class Param(py_enum.IntEnum):
    """Indices of the parameter registers P[0..NUM_PARAMS-1] that SETP writes."""
    GELU_B = 0
    GELU_C = 1
    GELU_ONE = 2


NUM_PARAMS = 8

FLAGS_WIDTH = 8

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
    "reserved": 5,
})
assert INSTRUCTION.size == INSTRUCTION_BYTES * 8

_FIELDS = [name for name, _ in INSTRUCTION]
_FIELD_LIMITS = {name: (1 << field.width) for name, field in INSTRUCTION if name != "opcode"}
_FIELD_OFFSETS = tuple((name, field.offset) for name, field in INSTRUCTION)  # read once: fast encode


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
    for name, offset in _FIELD_OFFSETS:
        value = getattr(instruction, name)
        word |= int(value.value if name == "opcode" else value) << offset
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
    are rounded down to a multiple of their banks' rows. ``banks`` banks both
    memories; ``scratchpad_banks`` (default: ``banks``) overrides the
    scratchpad's, which is also the rows the WS weight path reads a cycle
    (:meth:`weight_cycles`): 8 banks load an 8-row tile in one cycle, while the
    accumulator, one row a cycle anyway, stays at ``banks``. ``program_kib`` is the
    program memory (16-byte words; 0 = none, so RUN is illegal); ``tokens`` the
    depth of the token buffer TOK (the longest sequence a RUN may hold);
    ``units`` the vector units present (names from :data:`UNITS`) and
    ``vector_lanes`` the elements they take a cycle (a divisor of cols).
    """
    rows: int
    cols: int
    dataflow: str = "ws"
    input_width: int = 8
    acc_width: int = 32
    scratchpad_kib: float = 16
    accumulator_kib: float = 16
    banks: int = 1
    program_kib: float = 0
    tokens: int = 0
    units: tuple = ()
    vector_lanes: int = 1
    scratchpad_banks: int | None = None

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
        if self.scratchpad_banks is not None and (not isinstance(self.scratchpad_banks, int)
                                                  or self.scratchpad_banks not in (1, 2, 4, 8)):
            raise ValueError(f"scratchpad_banks must be 1, 2, 4 or 8, "
                             f"not {self.scratchpad_banks!r}")
        for name, depth, banks in (("scratchpad_kib", self.sp_depth, self.sp_banks),
                                   ("accumulator_kib", self.acc_depth, self.banks)):
            if depth < max(self.rows, self.cols, banks):
                raise ValueError(f"{name}={getattr(self, name)!r} holds only {depth} rows; "
                                 f"it must hold at least {max(self.rows, self.cols, banks)}")
            if depth > 65536:
                raise ValueError(f"{name}={getattr(self, name)!r} holds {depth} rows; "
                                 f"instructions address at most 65536")
        object.__setattr__(self, "units", tuple(self.units))
        for unit in self.units:
            if unit not in UNITS:
                raise ValueError(f"units: {unit!r} is not a unit; units are " + ", ".join(UNITS))
        if len(set(self.units)) != len(self.units):
            raise ValueError(f"units lists a unit twice: {list(self.units)!r}")
        if self.units and self.input_width != 8 or self.units and self.acc_width != 32:
            raise ValueError("the vector units need input_width = 8 and acc_width = 32")
        if not isinstance(self.vector_lanes, int) or self.vector_lanes < 1 \
                or self.cols % self.vector_lanes:
            raise ValueError(f"vector_lanes must divide cols = {self.cols}, "
                             f"not {self.vector_lanes!r}")
        if not 0 <= self.program_words <= 65536:
            raise ValueError(f"program_kib={self.program_kib!r} holds {self.program_words} "
                             f"words; from 0 to 65536 (1024 KiB) are addressable")
        if not isinstance(self.tokens, int) or not 0 <= self.tokens <= 65536:
            raise ValueError(f"tokens must be an integer from 0 to 65536, not {self.tokens!r}")
        if self.program_words and self.tokens < 2:
            raise ValueError(f"a program memory needs a token buffer: tokens >= 2, "
                             f"not {self.tokens!r}")

    @property
    def program_words(self) -> int:
        """Instruction words the program memory holds."""
        return int(self.program_kib * 1024) // INSTRUCTION_BYTES

    def has_unit(self, unit: str) -> bool:
        return unit in self.units

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
    def sp_banks(self) -> int:
        """Banks of the scratchpad (``scratchpad_banks``, else ``banks``)."""
        return self.banks if self.scratchpad_banks is None else self.scratchpad_banks

    def weight_cycles(self, k: int) -> int:
        """WS: cycles the weight path takes to read a tile of ``k`` rows, ``sp_banks``
        rows a cycle (rtl/array.py: the rows travel as a wave behind the swap, so
        this is also the fewest cycles between two tiles' starts)."""
        return -(-k // self.sp_banks)

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
        return rows - rows % self.sp_banks

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

    @property
    def sp_width(self) -> int:
        """Bits of a scratchpad row."""
        return self.sp_lanes * self.input_width

    @property
    def acc_row_width(self) -> int:
        """Bits of an accumulator row."""
        return self.cols * self.acc_width


def vector_rows(n: int, cols: int) -> int:
    """Rows a vector of ``n`` elements takes in the vector layout."""
    return -(-n // cols)


# Vector unit timing (rtl/vector.py builds its pipelines to these numbers).
# A row pass reads its operand rows (one cycle each on the accumulator's read
# port, the scratchpad's two ports at once), streams the row through the lane
# pipeline in cols / vector_lanes cycles, and reads the next row while the
# previous one is still in the pipeline; after the last row the pipeline drains.
VEC_DRAIN = {           # pipeline depth of each row pass, in cycles
    # mul and gelu take scratchpad rows, SP_READ_LATENCY - 1 cycles later than the others'
    "req": 5, "add": 6, "mul": 5 + SP_READ_LATENCY, "gelu": 11 + SP_READ_LATENCY,
    "softmax_max": 5, "softmax_sum": 10, "softmax_out": 12,
    "layernorm_sum": 1, "layernorm_var": 4, "layernorm_out": 11,
    "argmax": 1,
}
VEC_DIV_STEPS = {"softmax": 19, "mean": 32, "var": 31, "inv": 32}  # quotient bits
VEC_SQRT_STEPS = 16
VEC_ADDR_SETUP_CYCLES = 32   # EMBED/PUT_COL: TOK[POS] and POS over cols (16), times n (16)


def vector_op_cycles(instruction: Instruction, geometry: Geometry, pos: int = 0) -> int:
    """Cycles a VEC instruction keeps the vector unit busy (rtl/vector.py).

    The controller pulses ``start`` in cycle 0; ``busy`` is then high in cycles
    1 .. N, N = ``vector_op_cycles(...)`` >= 1, and low from cycle N + 1 on,
    and every write of the instruction (memories, TOK) happens in one of
    cycles 1 .. N. N depends on the instruction, the geometry (cols,
    vector_lanes) and POS (SOFTMAX with flags.POS) only, never on the data.
    ``instruction.tag`` must be a VecOp whose unit the geometry has.

    One setup cycle, then per op: row passes (``row_pass``: rows times the
    operand reads plus cols / vector_lanes lane cycles, then the pass's
    ``VEC_DRAIN``), serial divisions (a load cycle and ``VEC_DIV_STEPS``),
    the square root (``VEC_SQRT_STEPS``), EMBED/PUT_COL's address setup and
    one element a cycle, or a row a cycle for the copies.
    ``tests/rtl/test_vector.py`` holds the RTL to it.
    """
    ins, g = instruction, geometry
    op = VecOp(ins.tag)
    cols, steps = g.cols, g.cols // g.vector_lanes
    n = ins.count0
    rows = vector_rows(n, cols)
    perchan = 1 if ins.flags & Flags.PERCHAN else 0

    def row_pass(reads, nrows, kind):
        return nrows * (reads + steps) + VEC_DRAIN[kind]

    def divide(kind):
        return 1 + VEC_DIV_STEPS[kind]

    setup = 1
    if op == VecOp.REQ:
        return setup + row_pass(1 + perchan, rows, "req")
    if op == VecOp.ADD:
        return setup + row_pass(2 + perchan, rows, "add")
    if op == VecOp.MUL:
        return setup + row_pass(1, rows, "mul")
    if op == VecOp.GELU:
        return setup + row_pass(1, rows, "gelu")
    if op == VecOp.SOFTMAX:
        valid = n + (pos if ins.flags & Flags.POS else 0)
        written = vector_rows(max(valid, ins.count1), cols)
        return (setup + row_pass(1, vector_rows(valid, cols), "softmax_max")
                + row_pass(1, vector_rows(valid, cols), "softmax_sum") + divide("softmax")
                + row_pass(1, written, "softmax_out"))
    if op == VecOp.LAYERNORM:
        return (setup + row_pass(1, rows, "layernorm_sum") + divide("mean")
                + row_pass(1, rows, "layernorm_var") + divide("var") + VEC_SQRT_STEPS
                + divide("inv") + row_pass(3, rows, "layernorm_out"))
    if op == VecOp.ARGMAX:
        return setup + row_pass(1, rows, "argmax") + 1
    # EMBED, PUT_COL and the copies: an element (a row) a cycle, then the pipeline: the
    # scratchpad's read latency (SP_READ_LATENCY), and PUT_COL's and the copies' written
    # row is registered first. COPY_ACC keeps COPY_SP's pipeline (its row is registered
    # once more), so both copies forward from the same three rows ahead.
    if op == VecOp.EMBED:
        return setup + VEC_ADDR_SETUP_CYCLES + n + SP_READ_LATENCY + 2
    if op == VecOp.PUT_COL:
        return setup + VEC_ADDR_SETUP_CYCLES + n + SP_READ_LATENCY + 1
    assert op in (VecOp.COPY_ACC, VecOp.COPY_SP)
    return setup + n + SP_READ_LATENCY + 1      # read, (wait), register, write


__all__ += ["vector_op_cycles", "VEC_DRAIN", "VEC_DIV_STEPS", "VEC_SQRT_STEPS",
            "VEC_ADDR_SETUP_CYCLES"]


_VEC_OPS = frozenset(int(op) for op in VecOp)
_BRANCHES = frozenset(int(b) for b in Branch)

# Memories an instruction may touch, as footprint() names them.
MEMORIES = ("sp", "acc", "prog", "tok")


def memory_depth(geometry: Geometry, memory: str) -> int:
    """Rows (words, tokens) of one of :data:`MEMORIES`."""
    return {"sp": geometry.sp_depth, "acc": geometry.acc_depth,
            "prog": geometry.program_words, "tok": geometry.tokens}[memory]


def _vec_footprint(ins: Instruction, g: Geometry, pos: int, tok: int) -> list:
    n, cols = ins.count0, g.cols
    r = vector_rows(n, cols)
    perchan = bool(ins.flags & Flags.PERCHAN)
    op = VecOp(ins.tag)
    if op == VecOp.REQ:
        return [("acc", ins.addr0, r)] + [("acc", ins.addr1, r)] * perchan + [("sp", ins.addr2, r)]
    if op == VecOp.ADD:
        return [("acc", ins.addr0, r), ("acc", ins.addr1, r)] + [("acc", ins.addr2, r)] * perchan
    if op == VecOp.MUL:
        return [("sp", ins.addr0, r), ("sp", ins.addr1, r), ("sp", ins.addr2, r)]
    if op == VecOp.GELU:
        return [("sp", ins.addr0, r), ("sp", ins.addr2, r)]
    if op == VecOp.SOFTMAX:
        valid = n + (pos if ins.flags & Flags.POS else 0)
        return [("acc", ins.addr0, vector_rows(valid, cols)),
                ("sp", ins.addr2, vector_rows(max(valid, ins.count1), cols))]
    if op == VecOp.LAYERNORM:
        return [("acc", ins.addr0, r), ("acc", ins.addr1, 2 * r), ("sp", ins.addr2, r)]
    if op == VecOp.EMBED:
        return [("tok", pos, 1), ("sp", ins.addr0 + (tok // cols) * n, n),
                ("sp", ins.addr1 + (pos // cols) * n, n), ("acc", ins.addr2, r)]
    if op == VecOp.ARGMAX:
        return [("acc", ins.addr0, r), ("tok", pos + 1, 1)]
    if op == VecOp.COPY_ACC:
        return [("acc", ins.addr0, n), ("acc", ins.addr2, n)]
    if op == VecOp.COPY_SP:
        first = ins.addr1 + (pos if ins.flags & Flags.POS else 0)
        return [("sp", ins.addr0, n), ("sp", first, (n - 1) * ins.count1 + 1 if n else 0)]
    assert op == VecOp.PUT_COL
    return [("sp", ins.addr0, r), ("sp", ins.addr1 + (pos // cols) * n, n)]


def footprint(instruction: Instruction, geometry: Geometry, pos: int = 0, tok: int = 0) -> list:
    """The rows ``instruction`` touches, as ``[(memory, first_row, rows), ...]``.

    ``memory`` is one of :data:`MEMORIES`: ``"sp"`` (scratchpad rows), ``"acc"``
    (accumulator rows), ``"prog"`` (program words), ``"tok"`` (TOK entries).
    ``pos`` is POS and ``tok`` is TOK[POS] when the instruction runs (only VEC,
    EMIT and their footprints depend on them). Every range with ``rows > 0``
    must lie inside its memory (``first_row + rows <= depth``), or the
    instruction is OUT_OF_RANGE; ranges of no rows touch nothing and are left
    out. The RTL (``rtl/controller.py``) checks the same ranges.

    MATMUL: WS A ``(addr0, R * mult + m)``, B ``(addr1, (R + 1) * k)`` (the
    weights load even when m = 0), C ``(addr2, m)``, with R = tag (the K loop);
    OS A ``(addr0, k)``, B ``(addr1, k)``, C
    ``(addr2, m)`` if k > 0 (no beats write nothing). VEC: every vector it reads
    or writes (``vector_rows(n, cols)`` rows), column-table entries (``n``
    rows), TOK[POS] (EMBED) and TOK[POS+1] (ARGMAX). EMIT: TOK[POS+1]. BRANCH:
    its target word. A RUN's entry word is checked as BAD_RUN, not here.
    """
    ins, g = instruction, geometry
    op = ins.opcode
    if op == Opcode.MATMUL:
        m, k = ins.count0, ins.count1
        if g.dataflow == "ws":
            reps = ins.tag
            ranges = [("sp", ins.addr0, reps * ins.mult + m if m else 0),
                      ("sp", ins.addr1, (reps + 1) * k), ("acc", ins.addr2, m)]
        else:
            ranges = [("sp", ins.addr0, k), ("sp", ins.addr1, k), ("acc", ins.addr2, m if k else 0)]
    elif op == Opcode.REQUANT:
        ranges = [("acc", ins.addr0, ins.count0), ("sp", ins.addr1, ins.count0)]
    elif op in (Opcode.LOAD_SP, Opcode.STORE_SP):
        ranges = [("sp", ins.addr0, ins.count0)]
    elif op in (Opcode.LOAD_ACC, Opcode.STORE):
        ranges = [("acc", ins.addr0, ins.count0)]
    elif op == Opcode.LOAD_PROG:
        ranges = [("prog", ins.addr0, ins.count0)]
    elif op == Opcode.BRANCH:
        ranges = [("prog", ins.addr0, 1)]
    elif op == Opcode.EMIT:
        ranges = [("tok", pos + 1, 1)]
    elif op == Opcode.VEC and ins.tag in _VEC_OPS:
        ranges = _vec_footprint(ins, g, pos, tok)
    else:
        ranges = []
    return [(memory, first, rows) for memory, first, rows in ranges if rows > 0]


def instruction_error(instruction: Instruction, geometry: Geometry, *, in_program: bool = False,
                      pos: int = 0, tok: int = 0) -> ErrorCode:
    """The error an instruction raises (``ErrorCode.OK`` if it is legal), by rtl/isa.py's rules.

    ``in_program``: fetched from program memory (else from the host stream);
    ``pos``, ``tok``: POS and TOK[POS] as :func:`footprint` takes them. Where
    several errors apply, the smallest code wins. A word whose opcode field is
    no :class:`Opcode` (:func:`decode` raises ValueError) is ILLEGAL_OPCODE.
    This does not look at the sticky error: while it is set, every
    instruction but STATUS and RESET is skipped anyway.
    """
    ins, g = instruction, geometry
    op = ins.opcode
    if op in (HOST_ONLY if in_program else PROGRAM_ONLY):
        return ErrorCode.ILLEGAL_OPCODE
    if op == Opcode.VEC and ins.tag not in _VEC_OPS \
            or op == Opcode.BRANCH and ins.tag not in _BRANCHES \
            or op == Opcode.SETP and ins.tag >= NUM_PARAMS:
        return ErrorCode.ILLEGAL_OPCODE
    if op == Opcode.VEC and not g.has_unit(VEC_UNIT[VecOp(ins.tag)]):
        return ErrorCode.NO_UNIT
    for memory, first, rows in footprint(ins, g, pos, tok):
        if first + rows > memory_depth(g, memory):
            return ErrorCode.OUT_OF_RANGE
    if op == Opcode.MATMUL and ((ins.count1 if g.dataflow == "ws" else ins.count0) > g.rows
                                or g.dataflow == "os" and ins.tag):
        return ErrorCode.DATAFLOW_LIMIT
    if op == Opcode.RUN and (ins.count0 == 0 or ins.count0 + ins.count1 > g.tokens
                             or ins.addr0 >= g.program_words):
        return ErrorCode.BAD_RUN
    return ErrorCode.OK

