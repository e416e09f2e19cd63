"""The serial host link: a UART and the framed protocol that carries the accelerator's bytes.

The host (``firmware/serial.py``) and the board top exchange frames, stop and wait:
every frame the host sends gets exactly one reply.

Host -> board frame::

    HOST_SOF | seq | len | payload (len bytes, 0..255) | crc16 (little-endian)

Board -> host reply::

    REPLY_SOF | status | ack | len | data (len bytes, 0..255) | crc16 (little-endian)

``crc16`` is CRC-16/CCITT-FALSE (polynomial 0x1021, initial value 0xFFFF, MSB
first; Python's ``binascii.crc_hqx(bytes, 0xFFFF)``) over every byte between
the start byte and the CRC.

The board keeps the sequence number it expects next. A frame whose CRC checks
and whose ``seq`` is the expected one is *taken*: the expected number
advances (``ack`` in the reply), its payload goes to the accelerator's input
stream (status :attr:`Status.OK`), or, when the previous payload is still
being forwarded, is dropped (:attr:`Status.BUSY`; the host sends it again in
its next frame). Either way the reply carries up to 255 bytes of the
accelerator's output that had not been sent yet, and the board keeps that
reply: a frame that repeats the previous ``seq`` (the host did not get the
reply) is answered with the same reply again, so a lost reply loses no data
and a repeated frame is never forwarded twice. A frame with a bad CRC is
answered :attr:`Status.BAD_CRC`, a frame that stops for ``timeout_cycles`` is
answered :attr:`Status.TIMEOUT` and the receiver goes back to hunting for a
start byte, any other ``seq`` is answered :attr:`Status.BAD_SEQ` with the
expected number in ``ack``. Error replies carry no data and change nothing.

The status byte holds the :class:`Status` code in bits 0..3, ``FLAG_FORWARDING``
(the board is still forwarding a payload) in bit 7 and ``FLAG_MORE`` (more
output is waiting) in bit 6.
"""

import binascii
import enum as py_enum
import operator

from amaranth import *
from amaranth.lib import wiring, stream, memory, enum
from amaranth.lib.wiring import In, Out

__all__ = ["HOST_SOF", "REPLY_SOF", "MAX_PAYLOAD", "FLAG_FORWARDING", "FLAG_MORE", "Status",
           "crc16", "UARTRx", "UARTTx", "HostLink", "SerialHostLink"]

HOST_SOF = 0xA5
REPLY_SOF = 0x5A
MAX_PAYLOAD = 255
FLAG_FORWARDING = 0x80
FLAG_MORE = 0x40
STATUS_CODE_MASK = 0x0F


class Status(enum.Enum, shape=4):
    OK = 0        # payload taken and queued for the accelerator
    BUSY = 1      # frame taken, payload dropped: the previous one is still being forwarded
    BAD_CRC = 2   # CRC mismatch: nothing changed
    TIMEOUT = 3   # the frame stopped before its end: nothing changed
    BAD_SEQ = 4   # neither the expected nor the previous seq: ack says which is expected


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE, the link's checksum (reference model of :func:`_crc16_step`).

    ``binascii.crc_hqx`` is this CRC (polynomial 0x1021, MSB first) in C: about 1 us a
    frame, where a bit loop in Python took 1 ms.
    """
    return binascii.crc_hqx(bytes(data), crc)


def _crc16_step(crc, byte):
    """The CRC after one more byte, as combinational logic (eight unrolled shifts)."""
    for i in range(8):
        feedback = crc[15] ^ byte[7 - i]
        crc = Cat(Const(0, 1), crc[:15]) ^ Mux(feedback, 0x1021, 0)
    return crc


def _check_divisor(component, divisor):
    divisor = operator.index(divisor)
    if divisor < 4:
        component._MustUse__silence = True   # never built: no "created but never used" warning
        raise ValueError(f"divisor (clock cycles per bit) must be at least 4, not {divisor!r}")
    return divisor


class UARTRx(wiring.Component):
    """8N1 UART receiver.

    ``divisor`` is the number of clock cycles per bit (clock frequency / baud
    rate, at least 4). A byte whose stop bit is low is dropped (``error``
    pulses); a byte that arrives while the previous one is still unread
    replaces it (``error`` pulses).

    Members
    -------
    rx : In(1)
        The serial line (idle high), asynchronous to the clock.
    o : Out(stream.Signature(8))
    error : Out(1)
        One-cycle pulse on a framing error or an overrun.
    """

    def __init__(self, divisor):
        self.divisor = _check_divisor(self, divisor)
        super().__init__({
            "rx": In(1, init=1),
            "o": Out(stream.Signature(8)),
            "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        rx_meta = Signal(init=1)
        rx = Signal(init=1)
        m.d.sync += [rx_meta.eq(self.rx), rx.eq(rx_meta)]

        timer = Signal(range(self.divisor * 3 // 2 + 1))
        bits = Signal(range(8))
        shreg = Signal(8)

        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    # First sample in the middle of data bit 0: one and a half bits on.
                    m.d.sync += [timer.eq(self.divisor * 3 // 2 - 1), bits.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer == 0):
                    m.d.sync += [shreg.eq(Cat(shreg[1:], rx)), timer.eq(self.divisor - 1),
                                 bits.eq(bits + 1)]
                    with m.If(bits == 7):
                        m.next = "STOP"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("STOP"):
                with m.If(timer == 0):
                    with m.If(rx):
                        m.d.sync += [self.o.payload.eq(shreg), self.o.valid.eq(1)]
                        m.d.comb += self.error.eq(self.o.valid & ~self.o.ready)
                        m.next = "IDLE"
                    with m.Else():
                        m.d.comb += self.error.eq(1)
                        m.next = "BREAK"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("BREAK"):
                # A framing error: wait for the idle level before hunting for a start bit.
                with m.If(rx):
                    m.next = "IDLE"
        return m


class UARTTx(wiring.Component):
    """8N1 UART transmitter; ``i.ready`` is high only while the line is idle.

    Members
    -------
    i : In(stream.Signature(8))
    tx : Out(1)
        The serial line (idle high).
    """

    def __init__(self, divisor):
        self.divisor = _check_divisor(self, divisor)
        super().__init__({
            "i": In(stream.Signature(8)),
            "tx": Out(1, init=1),
        })

    def elaborate(self, platform):
        m = Module()
        shreg = Signal(10, init=0x3FF)  # stop bit, 8 data bits, start bit (sent LSB first)
        bits = Signal(range(11))
        timer = Signal(range(self.divisor))
        m.d.comb += [self.tx.eq(shreg[0]), self.i.ready.eq(bits == 0)]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [shreg.eq(Cat(Const(0, 1), self.i.payload, Const(1, 1))),
                         bits.eq(10), timer.eq(self.divisor - 1)]
        with m.Elif(bits != 0):
            with m.If(timer == 0):
                m.d.sync += [shreg.eq(Cat(shreg[1:], Const(1, 1))), bits.eq(bits - 1),
                             timer.eq(self.divisor - 1)]
            with m.Else():
                m.d.sync += timer.eq(timer - 1)
        return m


class HostLink(wiring.Component):
    """The framed protocol (see the module docstring) between a byte link and the accelerator.

    ``timeout_cycles`` is how long the receiver waits for the next byte of a
    started frame before it answers :attr:`Status.TIMEOUT` and hunts for a
    start byte again.

    Members
    -------
    rx : In(stream.Signature(8))
        Bytes from the host (the UART receiver); always ready.
    tx : Out(stream.Signature(8))
        Reply bytes to the host (the UART transmitter).
    core_i : Out(stream.Signature(8))
        Checked payload bytes, in order, each exactly once: the accelerator's ``i``.
    core_o : In(stream.Signature(8))
        The accelerator's ``o``.
    frame_error : Out(1)
        One-cycle pulse for every frame answered with an error status.
    forwarding : Out(1)
        A payload is being forwarded to ``core_i``.
    """

    RING_DEPTH = 512  # last reply (<= 255 bytes) + output not yet sent (<= 255 bytes)

    def __init__(self, *, timeout_cycles):
        timeout_cycles = operator.index(timeout_cycles)
        if timeout_cycles < 16:
            self._MustUse__silence = True
            raise ValueError(f"timeout_cycles must be at least 16, not {timeout_cycles!r}")
        self.timeout_cycles = timeout_cycles
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "core_i": Out(stream.Signature(8)),
            "core_o": In(stream.Signature(8)),
            "frame_error": Out(1),
            "forwarding": Out(1),
        })

    def elaborate(self, platform):
        m = Module()

        # Payload buffer: written by the receiver, read by the forwarder.
        m.submodules.payload = payload = memory.Memory(shape=8, depth=MAX_PAYLOAD + 1, init=[])
        pw = payload.write_port()
        pr = payload.read_port()

        # Reply ring: written with the accelerator's output, read by the transmitter.
        ring_bits = (self.RING_DEPTH - 1).bit_length()
        m.submodules.ring = ring = memory.Memory(shape=8, depth=self.RING_DEPTH, init=[])
        rw = ring.write_port()
        rr = ring.read_port()

        # -- Forwarder: payload buffer -> core_i, each byte once.
        fwd_addr = Signal(8)
        fwd_left = Signal(9)
        fwd_valid = Signal()
        fwd_start = Signal()
        fwd_len = Signal(8)
        advance = ~fwd_valid | self.core_i.ready
        m.d.comb += [
            pr.addr.eq(fwd_addr), pr.en.eq(advance),
            self.core_i.payload.eq(pr.data), self.core_i.valid.eq(fwd_valid),
            self.forwarding.eq(fwd_valid | (fwd_left != 0)),
        ]
        with m.If(fwd_start):
            m.d.sync += [fwd_addr.eq(0), fwd_left.eq(fwd_len)]
        with m.Elif(advance):
            m.d.sync += fwd_valid.eq(fwd_left != 0)
            with m.If(fwd_left != 0):
                m.d.sync += [fwd_addr.eq(fwd_addr + 1), fwd_left.eq(fwd_left - 1)]

        # -- Output collector: core_o -> ring, at most MAX_PAYLOAD bytes not yet in a reply.
        head = Signal(ring_bits)
        pend_start = Signal(ring_bits)
        pending = Signal(ring_bits)
        m.d.comb += [
            pending.eq(head - pend_start),
            self.core_o.ready.eq(pending < MAX_PAYLOAD),
            rw.addr.eq(head), rw.data.eq(self.core_o.payload),
            rw.en.eq(self.core_o.valid & self.core_o.ready),
        ]
        with m.If(self.core_o.valid & self.core_o.ready):
            m.d.sync += head.eq(head + 1)

        # -- Receiver and replier: one frame in, one reply out.
        expected = Signal(8)
        seq = Signal(8)
        length = Signal(8)
        count = Signal(8)
        crc = Signal(16)
        crc_rx = Signal(16)
        store = Signal()       # this frame's payload is written to the buffer
        timer = Signal(range(self.timeout_cycles + 1))

        last_start = Signal(ring_bits)
        last_len = Signal(8)
        last_status = Signal(8)
        last_ack = Signal(8)

        reply_start = Signal(ring_bits)
        reply_len = Signal(8)
        reply_status = Signal(8)
        reply_ack = Signal(8)
        tx_index = Signal(8)
        tx_byte = Signal(8)      # the ring's read data, registered: the CRC starts from a FF
        tx_wait = Signal(2)      # cycles until tx_byte holds ring[reply_start + tx_index]

        rx_byte = Signal()
        m.d.comb += [self.rx.ready.eq(1), rx_byte.eq(self.rx.valid)]
        crc_next_rx = _crc16_step(crc, self.rx.payload)
        crc_next_tx = _crc16_step(crc, self.tx.payload)
        tx_done = self.tx.valid & self.tx.ready

        def error_reply(status):
            m.d.sync += [reply_status.eq(status | Mux(self.forwarding, FLAG_FORWARDING, 0)),
                         reply_ack.eq(expected), reply_len.eq(0), crc.eq(0xFFFF)]
            m.d.comb += self.frame_error.eq(1)
            m.next = "TX_SOF"

        def receiving(next_state, *actions):
            with m.If(rx_byte):
                m.d.sync += [timer.eq(0), *actions]
                m.next = next_state
            with m.Elif(timer == self.timeout_cycles):
                error_reply(Status.TIMEOUT.value)
            with m.Else():
                m.d.sync += timer.eq(timer + 1)

        m.d.comb += [rr.addr.eq(reply_start + tx_index), pw.data.eq(self.rx.payload),
                     pw.addr.eq(count)]

        with m.FSM():
            with m.State("HUNT"):
                with m.If(rx_byte & (self.rx.payload == HOST_SOF)):
                    m.d.sync += [timer.eq(0), crc.eq(0xFFFF), store.eq(~self.forwarding)]
                    m.next = "SEQ"
            with m.State("SEQ"):
                receiving("LEN", seq.eq(self.rx.payload), crc.eq(crc_next_rx))
            with m.State("LEN"):
                receiving("PAYLOAD", length.eq(self.rx.payload), count.eq(0),
                          crc.eq(crc_next_rx))
                with m.If(rx_byte & (self.rx.payload == 0)):
                    m.next = "CRC0"
            with m.State("PAYLOAD"):
                m.d.comb += pw.en.eq(rx_byte & store)
                receiving("PAYLOAD", count.eq(count + 1), crc.eq(crc_next_rx))
                with m.If(rx_byte & (count == length - 1)):
                    m.next = "CRC0"
            with m.State("CRC0"):
                receiving("CRC1", crc_rx[:8].eq(self.rx.payload))
            with m.State("CRC1"):
                receiving("DECIDE", crc_rx[8:].eq(self.rx.payload))
            with m.State("DECIDE"):
                with m.If(crc_rx != crc):
                    error_reply(Status.BAD_CRC.value)
                with m.Elif(seq == expected):
                    taken = store | (length == 0)
                    status = Mux(taken, Status.OK.value, Status.BUSY.value)
                    more = self.core_o.valid  # output the reply could not take yet
                    flags = Mux(self.forwarding | (taken & (length != 0)), FLAG_FORWARDING, 0)
                    # The new reply takes every byte collected so far (at most 255).
                    m.d.sync += [
                        expected.eq(expected + 1),
                        last_start.eq(pend_start), last_len.eq(pending),
                        last_status.eq(status | flags | Mux(more, FLAG_MORE, 0)),
                        last_ack.eq(expected + 1),
                        pend_start.eq(head),
                    ]
                    m.d.comb += [fwd_start.eq(taken & (length != 0)), fwd_len.eq(length)]
                    m.next = "REPLAY"
                with m.Elif(seq == (expected - 1)[:8]):
                    m.next = "REPLAY"
                with m.Else():
                    error_reply(Status.BAD_SEQ.value)
            with m.State("REPLAY"):
                m.d.sync += [reply_start.eq(last_start), reply_len.eq(last_len),
                             reply_status.eq(last_status), reply_ack.eq(last_ack),
                             crc.eq(0xFFFF)]
                m.next = "TX_SOF"

            def sending(value, next_state, *, checked=True):
                m.d.comb += [self.tx.payload.eq(value), self.tx.valid.eq(1)]
                with m.If(tx_done):
                    if checked:
                        m.d.sync += crc.eq(crc_next_tx)
                    m.next = next_state
                return tx_done

            with m.State("TX_SOF"):
                sending(REPLY_SOF, "TX_STATUS", checked=False)
                m.d.sync += [tx_index.eq(0), tx_wait.eq(2)]
            with m.State("TX_STATUS"):
                sending(reply_status, "TX_ACK")
            with m.State("TX_ACK"):
                sending(reply_ack, "TX_LEN")
            with m.State("TX_LEN"):
                sending(reply_len, "TX_DATA")
                with m.If(tx_done & (reply_len == 0)):
                    m.next = "TX_CRC0"
            with m.State("TX_DATA"):
                # Two cycles after tx_index moves, tx_byte is that byte: one for the ring's
                # synchronous read, one for the register.
                m.d.comb += [self.tx.payload.eq(tx_byte), self.tx.valid.eq(tx_wait == 0)]
                m.d.sync += tx_byte.eq(rr.data)
                with m.If(tx_wait != 0):
                    m.d.sync += tx_wait.eq(tx_wait - 1)
                with m.If(tx_done):
                    m.d.sync += [crc.eq(crc_next_tx), tx_index.eq(tx_index + 1),
                                 tx_wait.eq(2)]
                    with m.If(tx_index == reply_len - 1):
                        m.next = "TX_CRC0"
            with m.State("TX_CRC0"):
                sending(crc[:8], "TX_CRC1", checked=False)
            with m.State("TX_CRC1"):
                sending(crc[8:], "HUNT", checked=False)
        return m


class SerialHostLink(wiring.Component):
    """UART receiver and transmitter joined to a :class:`HostLink`.

    ``divisor`` is clock cycles per bit; ``timeout_cycles`` as for :class:`HostLink`.

    Members
    -------
    rx : In(1)
    tx : Out(1)
    core_i : Out(stream.Signature(8))
    core_o : In(stream.Signature(8))
    frame_error : Out(1)
        Pulses on a bad frame or a UART framing error or overrun.
    activity : Out(1)
        Pulses on every received byte.
    """

    def __init__(self, *, divisor, timeout_cycles):
        self.divisor = _check_divisor(self, divisor)
        self.timeout_cycles = timeout_cycles
        super().__init__({
            "rx": In(1, init=1),
            "tx": Out(1, init=1),
            "core_i": Out(stream.Signature(8)),
            "core_o": In(stream.Signature(8)),
            "frame_error": Out(1),
            "activity": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = uart_rx = UARTRx(self.divisor)
        m.submodules.uart_tx = uart_tx = UARTTx(self.divisor)
        m.submodules.link = link = HostLink(timeout_cycles=self.timeout_cycles)
        wiring.connect(m, uart_rx.o, link.rx)
        wiring.connect(m, link.tx, uart_tx.i)
        wiring.connect(m, link.core_i, wiring.flipped(self.core_i))
        wiring.connect(m, wiring.flipped(self.core_o), link.core_o)
        m.d.comb += [
            uart_rx.rx.eq(self.rx), self.tx.eq(uart_tx.tx),
            self.frame_error.eq(link.frame_error | uart_rx.error),
            self.activity.eq(uart_rx.o.valid & uart_rx.o.ready),
        ]
        return m
