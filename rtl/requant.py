"""Requantization of accumulator lanes: bias, fixed-point scale, rounding, saturation.

One lane a cycle through four registered stages (``LATENCY``): the output link
carries a byte a cycle at most, so a single multiplier keeps up with it and
keeps DSP use to one multiplier whatever the array size. The arithmetic is
the one ``rtl/isa.py`` states (round half up, i.e. towards +infinity)::

    x   = acc + (bias if add_bias else 0)        exact
    raw = x wrapped to acc_width
    y   = floor((x * mult + 2**(shift-1)) / 2**shift)   (no rounding term when shift == 0)
    q   = clamp(y, -2**(input_width-1), 2**(input_width-1) - 1)
"""

import operator

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .isa import REQUANT_LATENCY

__all__ = ["Requantizer"]


class Requantizer(wiring.Component):
    """Members
    -------
    in_valid : In(1); in_acc, in_bias : In(signed(acc_width))
    add_bias : In(1); mult : In(16) (unsigned); shift : In(6)   (held for a whole instruction)
    out_valid : Out(1); out_raw : Out(signed(acc_width)); out_q : Out(signed(input_width))
    """

    LATENCY = REQUANT_LATENCY

    def __init__(self, *, input_width=8, acc_width=32, mult_width=16, shift_width=6):
        self.input_width = operator.index(input_width)
        self.acc_width = operator.index(acc_width)
        if self.input_width not in (4, 8, 16):
            raise ValueError(f"input_width must be 4, 8 or 16, not {self.input_width!r}")
        if not 2 * self.input_width <= self.acc_width <= 64:
            raise ValueError(f"acc_width must be from {2 * self.input_width} to 64, "
                             f"not {self.acc_width!r}")
        self.mult_width = operator.index(mult_width)
        self.shift_width = operator.index(shift_width)
        super().__init__({
            "in_valid": In(1),
            "in_acc": In(signed(self.acc_width)),
            "in_bias": In(signed(self.acc_width)),
            "add_bias": In(1),
            "mult": In(self.mult_width),
            "shift": In(self.shift_width),
            "out_valid": Out(1),
            "out_raw": Out(signed(self.acc_width)),
            "out_q": Out(signed(self.input_width)),
        })

    def elaborate(self, platform):
        m = Module()
        aw, iw = self.acc_width, self.input_width
        x = Signal(signed(aw + 1))
        product = Signal(signed(aw + 1 + self.mult_width))
        scaled = Signal(signed(aw + 1 + self.mult_width))
        raw = [Signal(signed(aw), name=f"raw{n}") for n in range(2)]
        valid = [Signal(name=f"valid{n}") for n in range(3)]

        # Stage 1: bias.
        m.d.sync += x.eq(self.in_acc + Mux(self.add_bias, self.in_bias, 0))
        # Stage 2: scale.
        m.d.sync += product.eq(x * self.mult)
        # Stage 3: round half up, arithmetic shift.
        half = Signal(unsigned(2 ** self.shift_width))
        m.d.comb += half.eq(Mux(self.shift == 0, 0, (C(1, 1) << self.shift) >> 1))
        m.d.sync += scaled.eq((product + half) >> self.shift)
        # Stage 4: saturate.
        lo, hi = -(1 << (iw - 1)), (1 << (iw - 1)) - 1
        with m.If(scaled < lo):
            m.d.sync += self.out_q.eq(lo)
        with m.Elif(scaled > hi):
            m.d.sync += self.out_q.eq(hi)
        with m.Else():
            m.d.sync += self.out_q.eq(scaled)

        m.d.sync += [raw[0].eq(x), raw[1].eq(raw[0]), self.out_raw.eq(raw[1])]
        m.d.sync += [valid[0].eq(self.in_valid), valid[1].eq(valid[0]), valid[2].eq(valid[1]),
                     self.out_valid.eq(valid[2])]
        return m
