"""Banked on-chip memories: the scratchpad (operand rows) and the accumulator (result rows).

Each bank is an ``amaranth.lib.memory.Memory`` with synchronous read ports, so
Yosys maps it to block RAM. Banks are interleaved: row ``addr`` lives in bank
``addr % banks`` at ``addr // banks``, so a stream of consecutive rows visits
every bank in turn.

A *wide* read port reads ``banks`` consecutive rows in one cycle, one from each
bank: rows ``addr .. addr + banks - 1`` are in banks ``addr % banks``, ...
(rotated), and bank ``b`` reads its row ``addr // banks``, plus one if ``b``
comes before ``addr % banks``. An unaligned ``addr`` only rotates the outputs.
The WS weight path reads a tile this way (``rtl/controller.py``).

With ``latency=2`` each bank's read data is registered before the bank
multiplexer (and the wide port's rotation): a read returns its row two cycles
after it is issued, and the block RAM's clock-to-out (5.8 ns on the ECP5) no
longer shares a cycle with the multiplexer and what the row feeds. The
scratchpad is built this way (``rtl.isa.SP_READ_LATENCY``).
"""

import operator

from amaranth import *
from amaranth.lib import wiring, data
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .resetless import data_signal

__all__ = ["BankedMemory"]


class BankedMemory(wiring.Component):
    """``depth`` rows of ``width`` bits in ``banks`` banks.

    One write port and ``read_ports`` read ports. A read returns its row
    ``latency`` (1 or 2) cycles after ``r{n}_en`` with ``r{n}_addr``, and the row
    stays on the port until the next read's arrives; with ``transparent=True`` a read
    of the row being written in the same cycle returns the new data (the
    accumulator's read-modify-write relies on it). The ports named in
    ``wide_ports`` also return ``r{n}_rows``: rows ``addr`` to
    ``addr + banks - 1`` (see the module docstring; rows past ``depth`` read as
    garbage); ``r{n}_data`` is the first of them.

    Members
    -------
    w_en : In(1), w_addr : In(range(depth)), w_data : In(width)
    r0_en, r0_addr, r0_data (and r1_*, ...) : the read ports
    r{n}_rows : Out(ArrayLayout(width, banks)) for n in wide_ports
    """

    def __init__(self, *, width, depth, banks=1, read_ports=1, transparent=False,
                 wide_ports=(), latency=1):
        self.width = operator.index(width)
        self.depth = operator.index(depth)
        self.banks = operator.index(banks)
        self.read_ports = operator.index(read_ports)
        self.transparent = bool(transparent)
        self.latency = operator.index(latency)
        if self.latency not in (1, 2):
            raise ValueError(f"latency must be 1 or 2, not {self.latency!r}")
        if self.latency == 2 and self.transparent:
            raise ValueError("a transparent read (the accumulator's) needs latency 1")
        if self.banks not in (1, 2, 4, 8):
            raise ValueError(f"banks must be 1, 2, 4 or 8, not {self.banks!r}")
        if self.depth < self.banks or self.depth % self.banks:
            raise ValueError(f"depth must be a positive multiple of banks ({self.banks}), "
                             f"not {self.depth!r}")
        if not 1 <= self.read_ports <= 4:
            raise ValueError(f"read_ports must be from 1 to 4, not {self.read_ports!r}")
        self.wide_ports = tuple(operator.index(n) for n in wide_ports)
        for n in self.wide_ports:
            if not 0 <= n < self.read_ports:
                raise ValueError(f"wide_ports: {n!r} is not a read port (0 to {self.read_ports - 1})")
        ports = {"w_en": In(1), "w_addr": In(range(self.depth)), "w_data": In(self.width)}
        for n in range(self.read_ports):
            ports.update({f"r{n}_en": In(1), f"r{n}_addr": In(range(self.depth)),
                          f"r{n}_data": Out(self.width)})
            if n in self.wide_ports:
                ports[f"r{n}_rows"] = Out(data.ArrayLayout(unsigned(self.width), self.banks))
        super().__init__(ports)

    def read_port(self, n):
        return getattr(self, f"r{n}_en"), getattr(self, f"r{n}_addr"), getattr(self, f"r{n}_data")

    def elaborate(self, platform):
        m = Module()
        bank_bits = (self.banks - 1).bit_length()
        bank_depth = self.depth // self.banks

        def split(addr):
            return addr[:bank_bits] if bank_bits else C(0, 1), addr[bank_bits:]

        w_bank, w_local = split(self.w_addr)
        readers = [[] for _ in range(self.read_ports)]
        for b in range(self.banks):
            mem = Memory(shape=unsigned(self.width), depth=bank_depth, init=[])
            m.submodules[f"bank{b}"] = mem
            wp = mem.write_port()
            m.d.comb += [wp.addr.eq(w_local), wp.data.eq(self.w_data),
                         wp.en.eq(self.w_en & (w_bank == b))]
            for n in range(self.read_ports):
                rp = mem.read_port(transparent_for=(wp,) if self.transparent else ())
                en, addr, _ = self.read_port(n)
                r_bank, r_local = split(addr)
                if n in self.wide_ports:
                    # Every bank reads: the banks before addr's hold the rows of the next
                    # bank row (past the last one: garbage, never used).
                    m.d.comb += [rp.addr.eq(r_local + (r_bank > b)), rp.en.eq(en)]
                else:
                    m.d.comb += [rp.addr.eq(r_local), rp.en.eq(en & (r_bank == b))]
                if self.latency == 2:
                    # Free-running: the block RAM holds its output between reads, and so
                    # does this register, a cycle later.
                    q = data_signal(self.width, name=f"r{n}_bank{b}_q")
                    m.d.sync += q.eq(rp.data)
                    readers[n].append(q)
                else:
                    readers[n].append(rp.data)
        for n in range(self.read_ports):
            en, addr, data = self.read_port(n)
            r_bank, _ = split(addr)
            last_bank = Signal.like(r_bank, name=f"r{n}_last_bank")
            with m.If(en):
                m.d.sync += last_bank.eq(r_bank)
            if self.latency == 2:
                bank_q = Signal.like(r_bank, name=f"r{n}_last_bank_q")
                m.d.sync += bank_q.eq(last_bank)
                last_bank = bank_q
            if n in self.wide_ports:
                # Output o is bank (last_bank + o) % banks: a barrel rotation, one stage of
                # 2:1 muxes per bit of last_bank. Each bank's data then feeds two muxes,
                # where a full crossbar (every output an 8:1 mux of every bank) gave each
                # block RAM output bit a fanout of banks + 1 right at the RAM rows, which
                # nextpnr could not route (docs/fpga.md).
                rows = getattr(self, f"r{n}_rows")
                stage = list(readers[n])
                for s in range(bank_bits):
                    step = 1 << s
                    stage = [Mux(last_bank[s], stage[(o + step) % self.banks], stage[o])
                             for o in range(self.banks)]
                for o in range(self.banks):
                    m.d.comb += rows[o].eq(stage[o])
                m.d.comb += data.eq(rows[0])
            else:
                m.d.comb += data.eq(Array(readers[n])[last_bank] if self.banks > 1
                                    else readers[n][0])
        return m
