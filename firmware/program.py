"""A Program: instruction words with their payloads, and how to read the replies.

The bytes are made by :func:`rtl.isa.encode` only; a Program never knows a bit
position. It counts the reply bytes each instruction produces (from the
geometry, as ``rtl/isa.py`` states them) and remembers where each STORE's rows
go in the result, so :meth:`Program.decode` turns the reply back into a matrix.
"""

from dataclasses import dataclass, field

import numpy as np

from rtl.isa import Geometry, Instruction, Opcode, Flags, encode, INSTRUCTION_BYTES
from .packing import unpack_rows, unpack_acc_lanes, pack_rows, pack_acc_lanes

__all__ = ["Program", "Placement", "payload_bytes", "reply_bytes"]


def payload_bytes(geometry: Geometry, instruction: Instruction) -> int:
    """Bytes of payload that follow ``instruction`` on the host stream."""
    if instruction.opcode == Opcode.LOAD_SP:
        return instruction.count0 * geometry.sp_row_bytes
    if instruction.opcode == Opcode.SET_BIAS:
        return geometry.cols * geometry.acc_bytes
    if instruction.opcode == Opcode.LOAD_ACC:
        return instruction.count0 * geometry.acc_row_bytes
    if instruction.opcode == Opcode.LOAD_PROG:
        return instruction.count0 * INSTRUCTION_BYTES
    if instruction.opcode == Opcode.RUN:
        return 2 * instruction.count0       # the prompt's token ids, 2 bytes each
    return 0


def reply_bytes(geometry: Geometry, instruction: Instruction) -> int:
    """Bytes the accelerator answers to ``instruction``."""
    if instruction.opcode == Opcode.STORE:
        if instruction.flags & Flags.REQUANT:
            return instruction.count0 * geometry.out_row_bytes
        return instruction.count0 * geometry.acc_row_bytes
    if instruction.opcode == Opcode.STORE_SP:
        return instruction.count0 * geometry.sp_row_bytes
    if instruction.opcode == Opcode.SYNC:
        return 1
    if instruction.opcode == Opcode.RUN:
        return 2 * instruction.count1       # the generated token ids, padded with 0xFF
    if instruction.opcode == Opcode.STATUS:
        return 4
    return 0


@dataclass(frozen=True)
class Placement:
    """Where a STORE's reply rows land: rows ``row0..row0+rows`` and columns ``col0..col0+cols``
    of the result take the first ``rows`` rows and ``cols`` lanes of the reply."""
    row0: int
    col0: int
    rows: int
    cols: int


@dataclass
class Program:
    """Instructions for one geometry, the reply they produce, and its decoding.

    ``result_shape`` is the shape of the matrix the STOREs fill (None if none);
    ``result_width`` is the bits of its elements (acc_width for raw STOREs,
    input_width for requantized ones).
    """
    geometry: Geometry
    steps: list = field(default_factory=list)           # [(Instruction, payload bytes)]
    result_shape: tuple | None = None
    result_width: int | None = None
    _reads: list = field(default_factory=list)          # [(reply offset, Instruction, Placement)]
    _reply_bytes: int = 0
    _syncs: list = field(default_factory=list)          # [(reply offset, tag)]

    def add(self, instruction: Instruction, payload: bytes = b"",
            place: Placement | None = None) -> None:
        expected = payload_bytes(self.geometry, instruction)
        if len(payload) != expected:
            raise ValueError(f"{instruction.opcode.name} takes {expected} payload bytes, "
                             f"not {len(payload)}")
        if place is not None:
            if instruction.opcode != Opcode.STORE:
                raise ValueError("only a STORE's reply can be placed in the result")
            self._reads.append((self._reply_bytes, instruction, place))
        if instruction.opcode == Opcode.SYNC:
            self._syncs.append((self._reply_bytes, instruction.tag))
        self.steps.append((instruction, bytes(payload)))
        self._reply_bytes += reply_bytes(self.geometry, instruction)

    @property
    def reply_bytes(self) -> int:
        return self._reply_bytes

    @property
    def instructions(self) -> list:
        return [instruction for instruction, _ in self.steps]

    def to_bytes(self) -> bytes:
        return b"".join(encode(instruction) + payload for instruction, payload in self.steps)

    def __len__(self) -> int:
        return sum(INSTRUCTION_BYTES + len(payload) for _, payload in self.steps)

    def count(self, opcode: Opcode) -> int:
        return sum(1 for instruction in self.instructions if instruction.opcode == opcode)

    def decode(self, reply: bytes) -> np.ndarray | None:
        """The result matrix (int64 values) from the reply; checks every SYNC tag."""
        if len(reply) != self._reply_bytes:
            raise ValueError(f"the program replies {self._reply_bytes} bytes, got {len(reply)}")
        for offset, tag in self._syncs:
            if reply[offset] != tag:
                raise ValueError(f"SYNC at reply byte {offset} answered {reply[offset]}, "
                                 f"expected tag {tag}")
        if self.result_shape is None:
            return None
        g = self.geometry
        result = np.zeros(self.result_shape, dtype=np.int64)
        for offset, instruction, place in self._reads:
            size = reply_bytes(g, instruction)
            chunk = reply[offset:offset + size]
            if instruction.flags & Flags.REQUANT:
                rows = unpack_rows(chunk, g.input_width, g.cols)
            else:
                rows = unpack_acc_lanes(chunk, g.acc_width, g.cols)
            result[place.row0:place.row0 + place.rows, place.col0:place.col0 + place.cols] = \
                rows[:place.rows, :place.cols]
        return result

    def expected_reply(self, result) -> bytes:
        """The reply a correct accelerator gives when the STOREs hold ``result`` (the inverse
        of :meth:`decode`): lanes and rows beyond the result are zero, as a zero-padded
        operand makes them; SYNC bytes are their tags."""
        g = self.geometry
        result = np.asarray(result, dtype=np.int64)
        reply = bytearray(self._reply_bytes)
        for offset, tag in self._syncs:
            reply[offset] = tag
        for offset, instruction, place in self._reads:
            rows = np.zeros((instruction.count0, g.cols), dtype=np.int64)
            rows[:place.rows, :place.cols] = \
                result[place.row0:place.row0 + place.rows, place.col0:place.col0 + place.cols]
            if instruction.flags & Flags.REQUANT:
                chunk = pack_rows(rows, g.input_width, g.cols)
            else:
                chunk = pack_acc_lanes(rows, g.acc_width)
            reply[offset:offset + len(chunk)] = chunk
        return bytes(reply)

    def summary(self) -> str:
        counts = ", ".join(f"{op.name} {self.count(op)}" for op in Opcode if self.count(op))
        return f"{len(self)} bytes in, {self.reply_bytes} bytes back ({counts})"
