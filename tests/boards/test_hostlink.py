"""The board top's UART host link in simulation: bit-level UART, frames, errors and retries.

Every test drives the simulated board top through :class:`boards.sim.SimSerialPort`
(real 8N1 waveforms on the UART lines). The frame-layer tests use a stand-in
echo core; the end-to-end tests run the real Accelerator.
"""

import numpy as np
import pytest
from amaranth.sim import Simulator

from boards import BOARDS
from boards.sim import SimSerialPort
from boards.top import BoardTop
from firmware.serial import (SerialBackend, encode_frame, decode_reply, encode_reply, LinkError)
from rtl.hostlink import (Status, UARTRx, UARTTx, crc16, FLAG_FORWARDING, HOST_SOF,
                          STATUS_CODE_MASK)

from .stand_ins import EchoCore

DIVISOR = 4            # clock cycles per UART bit: fast simulation
TIMEOUT_CYCLES = 600   # the board's inter-byte timeout (~15 character times)


def make_port(core=None, corrupt=None):
    core = core or EchoCore()
    top = BoardTop(BOARDS["icebreaker"], core, divisor=DIVISOR, timeout_cycles=TIMEOUT_CYCLES)
    return SimSerialPort(top, corrupt=corrupt), core


def make_backend(port, **options):
    return SerialBackend(port, baud=port.baud, link_timeout_s=port.link_timeout_s, latency_s=0,
                         **options)


def exchange_raw(port, frame, wait_chars=400):
    """Write raw bytes and read one reply frame (or b"" when none comes)."""
    port.write(frame)
    port.timeout = wait_chars * 10 * DIVISOR * port.period_s
    start = port.read(1)
    if not start:
        return None
    port.timeout = 20 * 10 * DIVISOR * port.period_s
    header = port.read(3)
    rest = port.read(header[2] + 2)
    return decode_reply(start + header + rest)


def test_crc16_is_ccitt_false():
    assert crc16(b"123456789") == 0x29B1          # the catalogue's check value
    data = bytes(range(40))
    assert crc16(data[20:], crc16(data[:20])) == crc16(data)   # it chains, as the RTL does
    assert crc16(bytearray(data)) == crc16(data)


def test_uart_loopback_bits():
    """The transmitter's waveform is 8N1, LSB first, and the receiver reads it back."""
    tx, rx = UARTTx(DIVISOR), UARTRx(DIVISOR)
    from amaranth import Module
    m = Module()
    m.submodules.tx, m.submodules.rx = tx, rx
    m.d.comb += rx.rx.eq(tx.tx)
    got, line = [], []
    sim = Simulator(m)
    sim.add_clock(1e-6)

    async def bench(ctx):
        ctx.set(rx.o.ready, 1)
        for byte in (0x00, 0xFF, 0xA5, 0x3C):
            ctx.set(tx.i.payload, byte)
            ctx.set(tx.i.valid, 1)
            await ctx.tick().until(tx.i.ready)
            await ctx.tick()
            ctx.set(tx.i.valid, 0)
            for _ in range(10 * DIVISOR + 8):
                line.append(ctx.get(tx.tx))
                if ctx.get(rx.o.valid):
                    got.append(ctx.get(rx.o.payload))
                await ctx.tick()
    sim.add_testbench(bench)
    sim.run()
    assert got == [0x00, 0xFF, 0xA5, 0x3C]
    # Runs of equal line levels: 0x00 is a start bit and eight zeros, 0xFF a lone start bit;
    # every bit lasts DIVISOR cycles (each recording starts one cycle into the start bit).
    runs = []
    for level in line:
        if runs and runs[-1][0] == level:
            runs[-1][1] += 1
        else:
            runs.append([level, 1])
    zeros = [n for level, n in runs if level == 0]
    assert zeros[0] == 9 * DIVISOR - 1 and zeros[1] == DIVISOR - 1


def test_uart_divisor_is_checked():
    with pytest.raises(ValueError, match="divisor .* at least 4, not 2"):
        UARTRx(2)


def test_frames_ok_duplicate_bad_crc_bad_seq_timeout():
    port, core = make_port()
    ok = exchange_raw(port, encode_frame(0, b"abc"))
    assert (ok.code, ok.ack) == (Status.OK, 1)
    poll = exchange_raw(port, encode_frame(1, b""))
    assert (poll.code, poll.ack, poll.data) == (Status.OK, 2, b"abc")

    # The host lost that reply and sends frame 1 again: the same reply, nothing forwarded.
    again = exchange_raw(port, encode_frame(1, b""))
    assert again == poll

    # A flipped payload bit: rejected, nothing changes.
    frame = bytearray(encode_frame(2, b"xyz"))
    frame[4] ^= 0x10
    bad = exchange_raw(port, bytes(frame))
    assert (bad.code, bad.ack, bad.data) == (Status.BAD_CRC, 2, b"")

    # A seq that is neither the expected one nor the previous one.
    wrong = exchange_raw(port, encode_frame(7, b"q"))
    assert (wrong.code, wrong.ack) == (Status.BAD_SEQ, 2)

    # A frame that stops half way: TIMEOUT once the line is quiet, then the receiver
    # hunts for a start byte again and the next whole frame goes through.
    late = exchange_raw(port, encode_frame(2, b"hello")[:4], wait_chars=2 * TIMEOUT_CYCLES)
    assert (late.code, late.ack) == (Status.TIMEOUT, 2)
    good = exchange_raw(port, encode_frame(2, b"xyz"))
    assert (good.code, good.ack) == (Status.OK, 3)
    final = exchange_raw(port, encode_frame(3, b""))
    assert final.data == b"xyz"      # the corrupt and the cut frames never reached the core


def test_busy_when_previous_payload_still_forwarding():
    port, core = make_port()
    port.sim.add_testbench(_hold(core.stall, 1), background=True)
    first = exchange_raw(port, encode_frame(0, b"12345"))
    assert first.code == Status.OK and first.flags & FLAG_FORWARDING
    second = exchange_raw(port, encode_frame(1, b"678"))
    assert (second.code, second.ack) == (Status.BUSY, 2)   # taken, payload dropped


def _hold(signal, value):
    async def bench(ctx):
        ctx.set(signal, value)
    return bench


def test_backend_round_trip_many_frames():
    port, _ = make_port()
    backend = make_backend(port, frame_bytes=64)
    program = bytes((i * 7) & 0xFF for i in range(300))
    reply, cycles = backend.run(program, len(program))
    assert reply == program and cycles is None
    assert backend.stats.retries == 0


@pytest.mark.parametrize("direction", ["host", "board"])
def test_backend_retries_corrupted_frame(direction):
    """One corrupted frame (host -> board or board -> host) is rejected and sent again."""
    hit = {"done": False, "count": 0}

    def corrupt(side, data):
        if side != direction or hit["done"]:
            return data
        if side == "host" and len(data) > 8:            # the second data frame
            hit["count"] += 1
            if hit["count"] == 2:
                hit["done"] = True
                return data[:6] + bytes([data[6] ^ 0x01]) + data[7:]
        if side == "board":                              # a data byte of a reply
            hit["count"] += 1
            if hit["count"] == 30:
                hit["done"] = True
                return bytes([data[0] ^ 0x80])
        return data

    port, _ = make_port(corrupt=corrupt)
    backend = make_backend(port, frame_bytes=32)
    program = bytes(range(100))
    reply, _ = backend.run(program, len(program))
    assert hit["done"]
    assert reply == program             # no byte lost, none delivered twice
    assert backend.stats.retries >= 1
    expected_error = "BAD_CRC" if direction == "host" else "no reply"
    assert expected_error in backend.stats.errors


def test_backend_gives_up_with_one_line():
    # A core-less line: every byte the host sends is destroyed.
    port, _ = make_port(corrupt=lambda side, data: bytes(len(data)) if side == "host" else data)
    backend = make_backend(port, retries=2)
    with pytest.raises(LinkError, match="did not take frame .* after 3 attempts"):
        backend.run(b"abc", 3)


def test_reply_codec():
    frame = encode_reply(Status.BUSY.value | FLAG_FORWARDING, 9, b"xy")
    reply = decode_reply(frame)
    assert (reply.code, reply.ack, reply.data, reply.forwarding) == (Status.BUSY, 9, b"xy", True)
    assert decode_reply(frame[:-1] + bytes([frame[-1] ^ 1])) is None
    assert encode_frame(3, b"\x01")[0] == HOST_SOF


# -- end to end with the real Accelerator

@pytest.fixture(scope="module")
def tiny_geometry():
    from gen.config import load_config
    return load_config("configs/tiny.toml").accelerator.geometry


def test_sync_over_serial_real_accelerator(tiny_geometry):
    from rtl.isa import Instruction, Opcode, encode
    from rtl.top import Accelerator
    port, _ = make_port(core=Accelerator(tiny_geometry))
    backend = make_backend(port)
    program = encode(Instruction(Opcode.SYNC, tag=0x5C)) + encode(Instruction(Opcode.SYNC, tag=7))
    assert backend.run(program, 2) == (b"\x5c\x07", None)


def test_device_matmul_over_serial_real_accelerator(tiny_geometry):
    from firmware.runtime import Device
    from rtl.top import Accelerator

    flipped = {"done": False}

    def corrupt(side, data):
        if side == "host" and len(data) > 20 and not flipped["done"]:
            flipped["done"] = True
            return data[:10] + bytes([data[10] ^ 0x04]) + data[11:]
        return data

    port, _ = make_port(core=Accelerator(tiny_geometry), corrupt=corrupt)
    backend = make_backend(port)
    device = Device(tiny_geometry, backend)
    rng = np.random.default_rng(3)
    a = rng.integers(-128, 128, (3, 4), dtype=np.int8)
    b = rng.integers(-128, 128, (4, 3), dtype=np.int8)
    result = device.matmul(a, b)
    np.testing.assert_array_equal(result, a.astype(np.int32) @ b.astype(np.int32))
    assert flipped["done"] and backend.stats.errors.get("BAD_CRC", 0) >= 1
