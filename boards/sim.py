"""A pyserial-like port wired, bit by bit, to a simulated board top.

:class:`SimSerialPort` runs :class:`boards.top.BoardTop` in the Amaranth
simulator and drives its UART lines with real 8N1 waveforms, so the runtime's
:class:`firmware.serial.SerialBackend` talks to the gateware exactly as it
would to a board. Timeouts are in simulated seconds. ``corrupt`` lets a test
damage the line: it is called with each write (direction ``"host"``) and each
reply byte (direction ``"board"``) and returns the bytes to put on the wire.

    port = SimSerialPort(BoardTop(board, core, divisor=8, timeout_cycles=2000))
    backend = SerialBackend(port, baud=port.baud, link_timeout_s=port.link_timeout_s)
"""

from collections import deque

from amaranth.sim import Simulator

__all__ = ["SimSerialPort"]


class SimSerialPort:
    def __init__(self, top, *, clock_mhz=None, corrupt=None, vcd=None):
        self.top = top
        self.clock_mhz = clock_mhz or top.clock_mhz
        self.period_s = 1e-6 / self.clock_mhz
        self.divisor = top.divisor
        self.baud = self.clock_mhz * 1e6 / self.divisor
        self.link_timeout_s = top.timeout_cycles * self.period_s
        self.timeout = 0.0
        self.corrupt = corrupt
        self.to_board = deque()
        self.from_board = deque()
        self.line_log = []      # (direction, bytes) as they went on the wire
        self._now_s = 0.0
        self.sim = Simulator(top)
        self.sim.add_clock(self.period_s)
        self.sim.add_testbench(self._drive_rx, background=True)
        self.sim.add_testbench(self._sample_tx, background=True)
        self._vcd = None
        if vcd:
            self._vcd = self.sim.write_vcd(vcd)
            self._vcd.__enter__()

    # Both lines are driven and sampled on timers (half a clock period off the clock
    # edges), not every clock cycle: the simulation runs several times faster.

    async def _drive_rx(self, ctx):
        ctx.set(self.top.uart_rx, 1)
        bit_s = self.divisor * self.period_s
        await ctx.delay(self.period_s / 2)
        while True:
            if not self.to_board:
                await ctx.delay(bit_s)
                continue
            byte = self.to_board.popleft()
            for bit in [0, *((byte >> i) & 1 for i in range(8)), 1]:
                ctx.set(self.top.uart_rx, bit)
                await ctx.delay(bit_s)

    async def _sample_tx(self, ctx):
        bit_s = self.divisor * self.period_s
        while True:
            await ctx.negedge(self.top.uart_tx)
            await ctx.delay(1.5 * bit_s)
            byte = 0
            for i in range(8):
                byte |= ctx.get(self.top.uart_tx) << i
                await ctx.delay(bit_s)
            # Now in the middle of the stop bit; the next start bit cannot come sooner.
            data = bytes([byte])
            if self.corrupt is not None:
                data = self.corrupt("board", data)
            self.line_log.append(("board", data))
            self.from_board.extend(data)

    def _advance(self, seconds):
        self._now_s += seconds
        self.sim.run_until(self._now_s)

    # -- the pyserial subset SerialBackend uses

    def write(self, data):
        data = bytes(data)
        if self.corrupt is not None:
            data = self.corrupt("host", data)
        self.line_log.append(("host", data))
        self.to_board.extend(data)
        return len(data)

    def read(self, size=1):
        """Up to ``size`` bytes, waiting at most ``timeout`` simulated seconds."""
        waited = 0.0
        step = 10 * self.divisor * self.period_s     # one character time
        while len(self.from_board) < size and waited < self.timeout:
            self._advance(step)
            waited += step
        out = bytes(self.from_board.popleft() for _ in range(min(size, len(self.from_board))))
        return out

    @property
    def in_waiting(self):
        return len(self.from_board)

    def reset_input_buffer(self):
        self.from_board.clear()

    def close(self):
        if self._vcd is not None:
            self._vcd.__exit__(None, None, None)
            self._vcd = None
