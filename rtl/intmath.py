"""Integer datapaths of the vector unit that are tested on their own (docs/intmath.md)."""

import functools
import operator

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["IExp", "const_mul"]


def const_mul(value, constant):
    """``value * constant`` as a sum of shifts: adders, no multiplier for a constant."""
    terms = [value << n for n in range(constant.bit_length()) if constant >> n & 1]
    return functools.reduce(operator.add, terms)


class IExp(wiring.Component):
    """i-exp of docs/intmath.md on ``t = -d`` in [0, 32768], ``LATENCY`` registered stages::

        z = (t * 1477) >> 20;  r = t - z * 710;  L = (1385 - r)**2 + 1006157
        e = L >> z if z < 32 else 0          (e < 2**22)

    Members
    -------
    t : In(16)    -d, from 0 to 32768
    e : Out(22)   ``LATENCY`` cycles later
    """

    LATENCY = 4

    def __init__(self):
        super().__init__({"t": In(16), "e": Out(22)})

    def elaborate(self, platform):
        m = Module()
        # 1: z = floor(t / 710) nearly (r may come out as -2 .. 709).
        z1, t1 = Signal(6), Signal(16)
        m.d.sync += [z1.eq(const_mul(self.t, 1477) >> 20), t1.eq(self.t)]
        # 2: the remainder.
        r2, z2 = Signal(signed(12)), Signal(6)
        m.d.sync += [r2.eq(t1 - const_mul(z1, 710)), z2.eq(z1)]
        # 3: the polynomial (an 11-bit square).
        base = Signal(11)
        m.d.comb += base.eq(1385 - r2)
        l3, z3 = Signal(22), Signal(6)
        m.d.sync += [l3.eq(base * base + 1006157), z3.eq(z2)]
        # 4: exp(p) >> z.
        m.d.sync += self.e.eq(Mux(z3 < 32, l3 >> z3, 0))
        return m
