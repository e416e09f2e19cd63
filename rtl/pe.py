"""Processing elements of the systolic array, one per dataflow."""

import operator

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .dsp import LATENCY, check_kind, make_multiplier
from .resetless import data_reg

__all__ = ["WeightStationaryPE", "OutputStationaryPE", "PRODUCT_STAGES"]

# Registers from the operands to the product (DSP input and output registers).
PRODUCT_STAGES = LATENCY


def _check_widths(input_width, acc_width):
    input_width = operator.index(input_width)
    acc_width = operator.index(acc_width)
    if input_width not in (4, 8, 16):
        raise ValueError(f"input_width must be 4, 8 or 16, not {input_width!r}")
    if not 2 * input_width <= acc_width <= 64:
        raise ValueError(f"acc_width must be from {2 * input_width} to 64, not {acc_width!r}")
    return input_width, acc_width


class WeightStationaryPE(wiring.Component):
    """A weight-stationary PE: ``psum_out <= psum_in + a_in * weight``, in two stages.

    The multiplier has registers on its inputs and its output (``PRODUCT_STAGES``),
    so neither it, the routing to a DSP block, nor the adder chain sets the
    clock alone; ``multiplier`` (a kind from :mod:`rtl.dsp`) says whether they
    are fabric registers around ``*`` or the DSP block's own. ``psum_in`` is
    used ``PRODUCT_STAGES`` cycles after ``a_in``, which is exactly when the PE
    above delivers it: the partial sum still advances one PE a cycle.

    The weight is double-buffered. ``w_load`` writes ``w_data`` into the shadow
    register; the beat that carries ``swap_in`` multiplies with the shadow and
    makes it the active weight, so the next tile's weights load while the
    current tile still streams. Activations and their flags pass to the right
    and partial sums downwards, each through one register.

    Members
    -------
    a_in, a_out : signed(input_width)      activation from the left / to the right
    valid_in, valid_out, swap_in, swap_out : 1
    psum_in, psum_out : signed(acc_width)  partial sum from above / below
    w_load : In(1), w_data : In(signed(input_width))
    """

    def __init__(self, *, input_width=8, acc_width=32, multiplier="generic"):
        self.input_width, self.acc_width = _check_widths(input_width, acc_width)
        self.multiplier = check_kind(multiplier)
        iw, aw = self.input_width, self.acc_width
        super().__init__({
            "a_in": In(signed(iw)), "valid_in": In(1), "swap_in": In(1),
            "a_out": Out(signed(iw)), "valid_out": Out(1), "swap_out": Out(1),
            "psum_in": In(signed(aw)), "psum_out": Out(signed(aw)),
            "w_load": In(1), "w_data": In(signed(iw)),
        })

    def elaborate(self, platform):
        m = Module()
        # Data registers are reset-less (rtl/resetless.py): only the flags need the reset.
        shadow = Signal(signed(self.input_width), reset_less=True)
        active = Signal(signed(self.input_width), reset_less=True)
        m.submodules.mul = mul = make_multiplier(self.multiplier, self.input_width,
                                                 self.input_width)
        with m.If(self.w_load):
            m.d.sync += shadow.eq(self.w_data)
        with m.If(self.valid_in & self.swap_in):
            m.d.sync += active.eq(shadow)
        m.d.comb += [mul.a.eq(self.a_in), mul.b.eq(Mux(self.swap_in, shadow, active))]
        m.d.sync += [
            self.valid_out.eq(self.valid_in),
            self.swap_out.eq(self.valid_in & self.swap_in),
        ]
        data_reg(m, self.a_out, self.a_in)
        data_reg(m, self.psum_out, self.psum_in + mul.p)
        return m


class OutputStationaryPE(wiring.Component):
    """An output-stationary PE: accumulates ``a_in * b_in`` in place.

    ``first_in`` starts a new sum; on ``last_in`` the finished sum is copied to
    the result register, so the next tile can accumulate while the results
    shift down the column (``shift``: ``result <= result_in``). The multiplier
    has registered inputs and output (as in the WS PE), so the sum, and the
    result, land ``PRODUCT_STAGES`` cycles after the operands pass.

    Members
    -------
    a_in, a_out : signed(input_width)  activation from the left / to the right
    valid_in, first_in, last_in (and the *_out registers) : 1
    b_in, b_out : signed(input_width)  operand from above / below
    shift : In(1)
    result_in, result : signed(acc_width)  the result chain from above / this PE's result
    """

    def __init__(self, *, input_width=8, acc_width=32, multiplier="generic"):
        self.input_width, self.acc_width = _check_widths(input_width, acc_width)
        self.multiplier = check_kind(multiplier)
        iw, aw = self.input_width, self.acc_width
        super().__init__({
            "a_in": In(signed(iw)), "valid_in": In(1), "first_in": In(1), "last_in": In(1),
            "a_out": Out(signed(iw)), "valid_out": Out(1), "first_out": Out(1), "last_out": Out(1),
            "b_in": In(signed(iw)), "b_out": Out(signed(iw)),
            "shift": In(1),
            "result_in": In(signed(aw)), "result": Out(signed(aw)),
        })

    def elaborate(self, platform):
        m = Module()
        acc = Signal(signed(self.acc_width), reset_less=True)
        total = Signal(signed(self.acc_width))
        m.submodules.mul = mul = make_multiplier(self.multiplier, self.input_width,
                                                 self.input_width)
        flags = [(Signal(name=f"valid{n}"), Signal(name=f"first{n}"), Signal(name=f"last{n}"))
                 for n in range(PRODUCT_STAGES)]
        m.d.comb += [mul.a.eq(self.a_in), mul.b.eq(self.b_in)]
        previous = (self.valid_in, self.first_in, self.last_in)
        for stage in flags:
            m.d.sync += [reg.eq(value) for reg, value in zip(stage, previous)]
            previous = stage
        valid, first, last = flags[-1]
        m.d.comb += total.eq(Mux(first, 0, acc) + mul.p)
        with m.If(valid):
            m.d.sync += acc.eq(total)
        result = Signal.like(self.result, reset_less=True)
        m.d.comb += self.result.eq(result)
        with m.If(valid & last):
            m.d.sync += result.eq(total)
        with m.Elif(self.shift):
            m.d.sync += result.eq(self.result_in)
        data_reg(m, self.a_out, self.a_in)
        data_reg(m, self.b_out, self.b_in)
        m.d.sync += [
            self.valid_out.eq(self.valid_in),
            self.first_out.eq(self.first_in),
            self.last_out.eq(self.last_in),
        ]
        return m
