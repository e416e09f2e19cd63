"""Requantization of accumulator lanes: bias, fixed-point scale, rounding, saturation.

One lane a cycle through six registered stages (``LATENCY``): the output link
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

from .dsp import check_kind, make_multiplier
from .isa import REQUANT_LATENCY
from .resetless import data_reg, data_signal

__all__ = ["Requantizer"]


class Requantizer(wiring.Component):
    """Members
    -------
    in_valid : In(1); in_acc, in_bias : In(signed(acc_width))
    add_bias : In(1); mult : In(16) (unsigned); shift : In(6)   (held for a whole instruction)
    out_valid : Out(1); out_raw : Out(signed(acc_width)); out_q : Out(signed(input_width))
    """

    LATENCY = REQUANT_LATENCY

    def __init__(self, *, input_width=8, acc_width=32, mult_width=16, shift_width=6,
                 multiplier="generic"):
        self.input_width = operator.index(input_width)
        self.acc_width = operator.index(acc_width)
        if self.input_width not in (4, 8, 16):
            raise ValueError(f"input_width must be 4, 8 or 16, not {self.input_width!r}")
        if not 2 * self.input_width <= self.acc_width <= 64:
            raise ValueError(f"acc_width must be from {2 * self.input_width} to 64, "
                             f"not {self.acc_width!r}")
        self.mult_width = operator.index(mult_width)
        self.shift_width = operator.index(shift_width)
        # The pieces' DSP kind (rtl.dsp.KINDS); each DSP registers only its product.
        self.multiplier = check_kind(multiplier)
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
        width = aw + 1 + self.mult_width          # the product's bits
        # Every register but the valid chain is data (rtl/resetless.py).
        x = data_signal(signed(aw + 1))
        rounded = data_signal(signed(width + 1))
        scaled = data_signal(signed(width + 1))
        # A shift of `width` or more leaves 0 whatever the product (its magnitude
        # is below 2**(width-1), so adding half of 2**shift and flooring gives 0);
        # clamping it keeps the rounding term, and the adder, `width` bits wide.
        shift = data_signal(range(width + 1))
        half = data_signal(width)

        # 1: bias. The shift and the rounding term depend only on the held shift
        # field, but registers keep their decoders off the adder's path.
        m.d.sync += x.eq(self.in_acc + Mux(self.add_bias, self.in_bias, 0))
        clamped = Mux(self.shift > width, width, self.shift)
        m.d.sync += [shift.eq(clamped),
                     half.eq(Mux(clamped == 0, 0, (C(1, 1) << clamped) >> 1))]
        # 2: scale, as 16-bit pieces of x times the 16-bit multiplier: each piece
        # is one DSP multiplier on iCE40 (16x16) and ECP5 (18x18), where a 33x16
        # product spans several DSPs joined by slow adders. Pieces are unsigned
        # but the top one, which carries the sign.
        pieces = []
        for n, low in enumerate(range(0, aw + 1, 16)):
            chunk = x[low:low + 16]
            if low + 16 >= aw + 1:
                chunk = chunk.as_signed()
            partial = data_signal(signed(len(chunk) + self.mult_width + 1), name=f"partial{n}")
            if len(chunk) > 1 and self.multiplier.startswith("ecp5"):
                # x is a register already: the DSP registers only the product. (Yosys
                # packs the generic register into iCE40's SB_MAC16 by itself.)
                mul = make_multiplier(self.multiplier, len(chunk) + (not chunk.shape().signed),
                                      self.mult_width + 1, latency=1)
                m.submodules[f"piece{n}"] = mul
                a = chunk if chunk.shape().signed else Cat(chunk, C(0, 1)).as_signed()
                m.d.comb += [mul.a.eq(a), mul.b.eq(Cat(self.mult, C(0, 1)).as_signed()),
                             partial.eq(mul.p)]
            else:
                m.d.sync += partial.eq(chunk * self.mult)
            pieces.append((partial, low))
        # 3: add the pieces in two halves, the rounding term with the upper one.
        lower = data_signal(signed(width + 1))
        upper = data_signal(signed(width + 1))
        m.d.sync += lower.eq(sum(part << low for part, low in pieces[:2]))
        m.d.sync += upper.eq(sum((part << low for part, low in pieces[2:]), half))
        # 4: round half up (the sum of both halves). 5: arithmetic shift.
        m.d.sync += rounded.eq(lower + upper)
        shift_delayed = [data_signal(range(width + 1), name=f"shift_d{n}") for n in range(3)]
        m.d.sync += [shift_delayed[0].eq(shift), shift_delayed[1].eq(shift_delayed[0]),
                     shift_delayed[2].eq(shift_delayed[1])]
        m.d.sync += scaled.eq(rounded >> shift_delayed[2])
        # 6: saturate.
        lo, hi = -(1 << (iw - 1)), (1 << (iw - 1)) - 1
        data_reg(m, self.out_q, Mux(scaled < lo, lo, Mux(scaled > hi, hi, scaled)))

        raw, valid = x, self.in_valid
        for n in range(self.LATENCY - 2):
            raw_next = data_signal(signed(aw), name=f"raw{n}")
            m.d.sync += raw_next.eq(raw)
            raw = raw_next
        for n in range(self.LATENCY - 1):
            valid_next = Signal(name=f"valid{n}")
            m.d.sync += valid_next.eq(valid)
            valid = valid_next
        data_reg(m, self.out_raw, raw)
        m.d.sync += self.out_valid.eq(valid)
        return m
