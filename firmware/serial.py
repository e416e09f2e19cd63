"""The runtime's serial backend: the framed host link (``rtl/hostlink.py``) over pyserial.

:class:`SerialBackend` implements the runtime's backend protocol::

    run(program: bytes, reply_bytes: int) -> tuple[bytes, int | None]

and ``stream`` (the same, yielding reply bytes as they arrive: a RUN's tokens). It cuts ``program`` into frames of at most 255 bytes, sends them one at a
time, and collects the accelerator's reply bytes from the board's replies,
polling with empty frames once the program is sent. A reply that does not
arrive within its timeout, fails its CRC, or reports an error makes it wait
for the line to go quiet and send the frame again; the board's sequence
numbers make a repeated frame harmless. The frame layout and status codes are
those of :mod:`rtl.hostlink` (the one definition of the protocol).
"""

from dataclasses import dataclass, field
import struct

from rtl.hostlink import (HOST_SOF, REPLY_SOF, MAX_PAYLOAD, FLAG_FORWARDING, FLAG_MORE,
                          STATUS_CODE_MASK, Status, crc16)

__all__ = ["LinkError", "LinkStats", "SerialBackend", "encode_frame", "decode_reply",
           "encode_reply"]


class LinkError(RuntimeError):
    """The board did not answer correctly after every retry; the message is one line."""


def encode_frame(seq: int, payload: bytes) -> bytes:
    """A host -> board frame."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"a frame carries at most {MAX_PAYLOAD} bytes, not {len(payload)}")
    body = bytes([seq & 0xFF, len(payload)]) + bytes(payload)
    return bytes([HOST_SOF]) + body + struct.pack("<H", crc16(body))


def encode_reply(status: int, ack: int, data: bytes) -> bytes:
    """A board -> host reply (for tests and for software models of the board)."""
    body = bytes([status, ack & 0xFF, len(data)]) + bytes(data)
    return bytes([REPLY_SOF]) + body + struct.pack("<H", crc16(body))


@dataclass
class Reply:
    code: Status
    flags: int
    ack: int
    data: bytes

    @property
    def forwarding(self) -> bool:
        return bool(self.flags & FLAG_FORWARDING)

    @property
    def more(self) -> bool:
        return bool(self.flags & FLAG_MORE)


def decode_reply(frame: bytes) -> Reply | None:
    """A reply from its bytes, or None when its start byte, length or CRC is wrong."""
    if len(frame) < 6 or frame[0] != REPLY_SOF or len(frame) != 6 + frame[3]:
        return None
    body, crc = frame[1:-2], struct.unpack("<H", frame[-2:])[0]
    if crc16(body) != crc:
        return None
    try:
        code = Status(body[0] & STATUS_CODE_MASK)
    except ValueError:
        return None
    return Reply(code, body[0] & ~STATUS_CODE_MASK, body[1], bytes(body[3:]))


@dataclass
class LinkStats:
    frames: int = 0          # frames sent, retries included
    retries: int = 0         # frames sent again after a lost, corrupt or error reply
    busy: int = 0            # payloads the board could not take yet
    errors: dict = field(default_factory=dict)  # what made each retry: status name or "no reply"


class SerialBackend:
    """Runs programs on a board over its serial host link.

    ``port`` is a pyserial ``Serial`` (or an object with ``write``, ``read``,
    ``reset_input_buffer`` and a settable ``timeout``) or a device path, opened
    at ``baud``. ``link_timeout_s`` is the board's inter-byte timeout
    (:class:`boards.top.BoardTop`'s ``timeout_ms``); ``latency_s`` covers the
    USB-serial adapter's buffering. ``retries`` bounds the attempts per frame;
    ``stall_s`` is how long the accelerator may stay silent before the reply is
    complete.
    """

    def __init__(self, port, *, baud=1_000_000, link_timeout_s=0.005, latency_s=0.05,
                 retries=8, frame_bytes=MAX_PAYLOAD, stall_s=2.0):
        if isinstance(port, str):
            try:
                import serial
            except ImportError:
                raise LinkError("pyserial is not installed; run: pip install pyserial") from None
            try:
                port = serial.Serial(port, baud, timeout=latency_s)
            except serial.SerialException as e:
                raise LinkError(f"cannot open serial port {port!r}: {e}") from None
        if not 1 <= frame_bytes <= MAX_PAYLOAD:
            raise ValueError(f"frame_bytes must be from 1 to {MAX_PAYLOAD}, not {frame_bytes!r}")
        self.port = port
        self.baud = baud
        self.link_timeout_s = link_timeout_s
        self.latency_s = latency_s
        self.retries = retries
        self.frame_bytes = frame_bytes
        self.stall_s = stall_s
        self.stats = LinkStats()
        self._seq = None          # unknown until the first exchange

    # -- the wire

    def _byte_time(self, count):
        return count * 10 / self.baud

    def _read_exact(self, count, deadline_s):
        self.port.timeout = deadline_s
        data = self.port.read(count)
        return data if len(data) == count else None

    def _read_reply(self, sent_bytes) -> Reply | None:
        """One reply, or None when none arrives in time or it is corrupt."""
        # The board answers once the whole frame is in, with at most 262 bytes.
        wait = self._byte_time(sent_bytes + 6 + MAX_PAYLOAD) + self.latency_s
        hunted = 0
        while True:
            start = self._read_exact(1, wait)
            if start is None:
                return None
            if start[0] == REPLY_SOF:
                break
            hunted += 1
            if hunted > 6 + MAX_PAYLOAD:
                return None
        byte_wait = self._byte_time(1) * 4 + self.latency_s
        header = self._read_exact(3, self._byte_time(3) + byte_wait)
        if header is None:
            return None
        rest = self._read_exact(header[2] + 2, self._byte_time(header[2] + 2) + byte_wait)
        if rest is None:
            return None
        return decode_reply(start + header + rest)

    def _resync(self):
        """Wait until the line is quiet for longer than the board's timeout, drop what came."""
        quiet = 2 * self.link_timeout_s + self._byte_time(2)
        for _ in range(64):
            self.port.timeout = quiet
            if not self.port.read(4096):
                break
        self.port.reset_input_buffer()

    def exchange(self, payload: bytes) -> Reply:
        """Send one frame until the board takes it (OK or BUSY); return that reply."""
        if self._seq is None:
            self._open()
        for attempt in range(self.retries + 1):
            frame = encode_frame(self._seq, payload)
            self.port.write(frame)
            self.stats.frames += 1
            reply = self._read_reply(len(frame))
            if reply is not None and reply.code in (Status.OK, Status.BUSY) \
                    and reply.ack == (self._seq + 1) & 0xFF:
                self._seq = reply.ack
                return reply
            if reply is not None and reply.code == Status.BAD_SEQ:
                self._seq = reply.ack
                why = "BAD_SEQ"
            else:
                why = "no reply" if reply is None else (
                    reply.code.name if reply.code not in (Status.OK, Status.BUSY) else "stale ack")
            self.stats.retries += 1
            self.stats.errors[why] = self.stats.errors.get(why, 0) + 1
            self._resync()
        raise LinkError(f"the board did not take frame {self._seq} after {self.retries + 1} "
                        f"attempts (last: {why}); check the port, baud rate and bitstream")

    def _open(self):
        """Learn the board's sequence number and drop output left from an earlier session."""
        self._resync()
        self._seq = 0
        for _ in range(1024):
            reply = self.exchange(b"")
            if not reply.data and not reply.more:
                return
        raise LinkError("the board keeps sending output it had before this session; reset it")

    # -- the runtime's backend protocol

    def run(self, program: bytes, reply_bytes: int) -> tuple[bytes, int | None]:
        """Send ``program``, return exactly ``reply_bytes`` reply bytes (cycle count unknown)."""
        return b"".join(self.stream(program, reply_bytes)), None

    def stream(self, program: bytes, reply_bytes: int):
        """Send ``program`` and yield its reply bytes as the board's replies bring them (a RUN's
        token ids arrive while the board is still generating)."""
        program = bytes(program)
        received = 0
        offset = 0
        forwarding = False
        idle_polls = 0
        while offset < len(program) or received < reply_bytes:
            if offset < len(program) and not forwarding:
                chunk = program[offset:offset + self.frame_bytes]
            else:
                chunk = b""     # a poll: collect output, or wait until the board can take more
            reply = self.exchange(chunk)
            received += len(reply.data)
            if received > reply_bytes:
                raise LinkError(f"the accelerator answered more than the {reply_bytes} reply "
                                f"bytes the program asks for")
            if reply.data:
                yield reply.data
            if chunk and reply.code == Status.OK:
                offset += len(chunk)
            elif chunk:
                self.stats.busy += 1
            forwarding = reply.forwarding
            if offset >= len(program) and not reply.data and not reply.forwarding \
                    and not reply.more:
                idle_polls += 1
                if idle_polls > 16 + self.stall_s / self._byte_time(12):
                    raise LinkError(f"the accelerator answered {received} of "
                                    f"{reply_bytes} reply bytes and then stopped")
            else:
                idle_polls = 0

    def close(self):
        close = getattr(self.port, "close", None)
        if close is not None:
            close()
