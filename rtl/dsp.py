"""Registered multipliers: a DSP primitive per FPGA family, or the generic ``*``.

Every multiplier here computes ``p = a * b`` (signed) :data:`LATENCY` cycles after
its operands: one register on the operands and one on the product. The generic
one builds those registers in fabric around Amaranth's ``*`` (Yosys maps the
``*`` to a DSP block, but leaves the registers in fabric, so the routing
between them and the DSP is in every path). The family ones instantiate the DSP
block with its own registers on:

* ``"ecp5"``: ``MULT18X18D`` with ``REG_INPUTA_CLK``, ``REG_INPUTB_CLK`` and
  ``REG_OUTPUT_CLK`` on ``CLK0`` (``CE0`` high, ``RST0`` low; no pipeline register);
  operands up to 18 bits.
* ``"ice40"``: ``SB_MAC16`` in 16x16 mode with ``A_REG``/``B_REG`` and the 16x16
  product register (``PIPELINE_16x16_MULT_REG2``) on both output halves
  (``TOPOUTPUT_SELECT = BOTOUTPUT_SELECT = 3``); operands up to 16 bits.

The primitives cannot be simulated, so each has a behavioural model written in
Amaranth (:class:`MULT18X18DModel`, :class:`SB_MAC16Model`) with the
primitive's pins and parameters; the kinds ``"ecp5-model"`` and
``"ice40-model"`` wire it in place of the ``Instance``, through the same pin
mapping. Simulations use those or ``"generic"``; the build elaborates the
``Instance`` (``gen.build`` picks the kind from the board's family).

The DSP registers have no reset (the generic ones do): a product is only ever
read on a beat whose operands went in :data:`LATENCY` cycles before, and a reset
net to every DSP block would be one more long net.
"""

import operator

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["LATENCY", "KINDS", "MULTIPLIERS", "Multiplier", "GenericMultiplier",
           "ECP5Multiplier", "ICE40Multiplier", "MULT18X18DModel", "SB_MAC16Model",
           "check_kind", "make_multiplier"]

# Registers from the operands to the product: the DSP's input and output registers.
LATENCY = 2

# What a config may ask for ("auto" is resolved by gen.build), and what the RTL takes.
MULTIPLIERS = ("generic", "ecp5", "ice40")
KINDS = MULTIPLIERS + ("ecp5-model", "ice40-model")


class Multiplier(wiring.Component):
    """``p = a * b`` (signed), :data:`LATENCY` cycles after ``a`` and ``b``.

    Members
    -------
    a : In(signed(a_width))
    b : In(signed(b_width))
    p : Out(signed(a_width + b_width))
    """

    MAX_WIDTH = 64

    def __init__(self, a_width, b_width):
        self.a_width = operator.index(a_width)
        self.b_width = operator.index(b_width)
        for name, width in (("a_width", self.a_width), ("b_width", self.b_width)):
            if not 2 <= width <= self.MAX_WIDTH:
                self._MustUse__silence = True   # never built: no "never used" warning
                raise ValueError(f"{type(self).__name__}: {name} must be from 2 to "
                                 f"{self.MAX_WIDTH}, not {width!r}")
        super().__init__({"a": In(signed(self.a_width)), "b": In(signed(self.b_width)),
                          "p": Out(signed(self.a_width + self.b_width))})


class GenericMultiplier(Multiplier):
    """Fabric registers around Amaranth's ``*``; Yosys chooses the multiplier."""

    def elaborate(self, platform):
        m = Module()
        a_reg = Signal.like(self.a, name="a_reg")
        b_reg = Signal.like(self.b, name="b_reg")
        product = Signal.like(self.p, name="product")
        m.d.sync += [a_reg.eq(self.a), b_reg.eq(self.b), product.eq(a_reg * b_reg)]
        m.d.comb += self.p.eq(product)
        return m


class _PrimitiveMultiplier(Multiplier):
    """A family primitive: the pin mapping is shared by the Instance and the model."""

    def __init__(self, a_width, b_width, *, model=False):
        super().__init__(a_width, b_width)
        self.model = bool(model)


class MULT18X18DModel(wiring.Component):
    """Behavioural model of the ECP5 ``MULT18X18D`` for the parameters
    :class:`ECP5Multiplier` uses: ``P = A * B`` over 18-bit operands, each signed
    when its ``SIGNED*`` pin is high, through the input registers and the output
    register that ``REG_INPUTA_CLK``/``REG_INPUTB_CLK``/``REG_OUTPUT_CLK`` enable
    (``CE0`` high, ``RST0`` low, ``C`` unused, no pipeline register).
    """

    def __init__(self, params: dict):
        for key, allowed in (("REG_INPUTA_CLK", ("NONE", "CLK0")),
                             ("REG_INPUTB_CLK", ("NONE", "CLK0")),
                             ("REG_PIPELINE_CLK", ("NONE",)),
                             ("REG_OUTPUT_CLK", ("NONE", "CLK0"))):
            if params.get(key, "NONE") not in allowed:
                self._MustUse__silence = True
                raise ValueError(f"MULT18X18DModel: {key} = {params[key]!r} is not modelled")
        self.params = dict(params)
        super().__init__({"A": In(18), "B": In(18), "SIGNEDA": In(1), "SIGNEDB": In(1),
                          "P": Out(36)})

    def elaborate(self, platform):
        m = Module()

        def stage(value, key, name):
            if self.params.get(key, "NONE") == "NONE":
                return value
            reg = Signal.like(value, name=name, reset_less=True)
            m.d.sync += reg.eq(value)
            return reg

        a = stage(Cat(self.A, self.SIGNEDA), "REG_INPUTA_CLK", "a_reg")
        b = stage(Cat(self.B, self.SIGNEDB), "REG_INPUTB_CLK", "b_reg")
        # An operand is signed or not by its own SIGNED pin: extend it by one bit to say so.
        a_ext = Cat(a[:18], a[17] & a[18]).as_signed()
        b_ext = Cat(b[:18], b[17] & b[18]).as_signed()
        product = Signal(36)
        m.d.comb += product.eq(a_ext * b_ext)
        m.d.comb += self.P.eq(stage(product, "REG_OUTPUT_CLK", "p_reg"))
        return m


class ECP5Multiplier(_PrimitiveMultiplier):
    """``MULT18X18D`` with its input and output registers (see the module docstring)."""

    MAX_WIDTH = 18
    PARAMS = {
        "REG_INPUTA_CLK": "CLK0", "REG_INPUTA_CE": "CE0", "REG_INPUTA_RST": "RST0",
        "REG_INPUTB_CLK": "CLK0", "REG_INPUTB_CE": "CE0", "REG_INPUTB_RST": "RST0",
        "REG_INPUTC_CLK": "NONE",
        "REG_PIPELINE_CLK": "NONE",
        "REG_OUTPUT_CLK": "CLK0", "REG_OUTPUT_CE": "CE0", "REG_OUTPUT_RST": "RST0",
        "RESETMODE": "SYNC", "GSR": "DISABLED",
    }

    def elaborate(self, platform):
        m = Module()
        # The pins: operands sign-extended to 18 bits, the product's low bits from P.
        a_pins, b_pins, p_pins = Signal(18), Signal(18), Signal(36)
        m.d.comb += [a_pins.eq(self.a), b_pins.eq(self.b), self.p.eq(p_pins)]
        if self.model:
            m.submodules.mult = dsp = MULT18X18DModel(self.PARAMS)
            m.d.comb += [dsp.A.eq(a_pins), dsp.B.eq(b_pins), dsp.SIGNEDA.eq(1),
                         dsp.SIGNEDB.eq(1), p_pins.eq(dsp.P)]
            return m
        ports = {f"p_{key}": value for key, value in self.PARAMS.items()}
        ports.update({f"i_A{n}": a_pins[n] for n in range(18)})
        ports.update({f"i_B{n}": b_pins[n] for n in range(18)})
        ports.update({f"i_C{n}": C(0, 1) for n in range(18)})
        ports.update({f"o_P{n}": p_pins[n] for n in range(36)})
        m.submodules.mult = Instance(
            "MULT18X18D", **ports,
            i_SIGNEDA=C(1, 1), i_SIGNEDB=C(1, 1), i_SOURCEA=C(0, 1), i_SOURCEB=C(0, 1),
            i_CLK0=ClockSignal(), i_CE0=C(1, 1), i_RST0=C(0, 1))
        return m


class SB_MAC16Model(wiring.Component):
    """Behavioural model of the iCE40 ``SB_MAC16`` in 16x16 mode (``MODE_8x8 = 0``) with
    both outputs selecting the 16x16 product (``TOPOUTPUT_SELECT = BOTOUTPUT_SELECT = 3``):
    ``O = A * B`` from four 8x8 partial products, as the hard block forms them (only the
    high bytes carry the ``A_SIGNED``/``B_SIGNED`` sign), through the ``A_REG``/``B_REG``
    input registers and the ``PIPELINE_16x16_MULT_REG2`` product register where enabled
    (``CE`` high, every hold and reset low).
    """

    def __init__(self, params: dict):
        for key, allowed in (("MODE_8x8", (0,)), ("TOPOUTPUT_SELECT", (3,)),
                             ("BOTOUTPUT_SELECT", (3,)), ("PIPELINE_16x16_MULT_REG1", (0,))):
            if int(params.get(key, 0)) not in allowed:
                self._MustUse__silence = True
                raise ValueError(f"SB_MAC16Model: {key} = {params[key]!r} is not modelled")
        self.params = {key: int(value) for key, value in params.items()}
        super().__init__({"A": In(16), "B": In(16), "O": Out(32)})

    def elaborate(self, platform):
        m = Module()
        p = self.params

        def stage(value, key, name):
            if not p.get(key, 0):
                return value
            reg = Signal.like(value, name=name, reset_less=True)
            m.d.sync += reg.eq(value)
            return reg

        a = stage(self.A, "A_REG", "rA")
        b = stage(self.B, "B_REG", "rB")
        # Ah = {A_SIGNED ? {8{A[15]}} : 8'b0, A[15:8]}; the low bytes are unsigned.
        ah = a[8:].as_signed() if p.get("A_SIGNED", 0) else a[8:]
        bh = b[8:].as_signed() if p.get("B_SIGNED", 0) else b[8:]
        al, bl = a[:8], b[:8]
        f, j, k, g = Signal(16), Signal(16), Signal(16), Signal(16)
        m.d.comb += [f.eq(ah * bh), j.eq(al * bh), k.eq(ah * bl), g.eq(al * bl)]
        k_e = k.as_signed() if p.get("A_SIGNED", 0) else k
        j_e = j.as_signed() if p.get("B_SIGNED", 0) else j
        product = Signal(32)
        m.d.comb += product.eq(g + (k_e << 8) + (j_e << 8) + (f << 16))
        m.d.comb += self.O.eq(stage(product, "PIPELINE_16x16_MULT_REG2", "rH"))
        return m


class ICE40Multiplier(_PrimitiveMultiplier):
    """``SB_MAC16`` with its input and product registers (see the module docstring)."""

    MAX_WIDTH = 16
    PARAMS = {
        "NEG_TRIGGER": C(0, 1), "A_REG": C(1, 1), "B_REG": C(1, 1), "C_REG": C(0, 1),
        "D_REG": C(0, 1), "TOP_8x8_MULT_REG": C(0, 1), "BOT_8x8_MULT_REG": C(0, 1),
        "PIPELINE_16x16_MULT_REG1": C(0, 1), "PIPELINE_16x16_MULT_REG2": C(1, 1),
        "TOPOUTPUT_SELECT": C(3, 2), "TOPADDSUB_LOWERINPUT": C(0, 2),
        "TOPADDSUB_UPPERINPUT": C(0, 1), "TOPADDSUB_CARRYSELECT": C(0, 2),
        "BOTOUTPUT_SELECT": C(3, 2), "BOTADDSUB_LOWERINPUT": C(0, 2),
        "BOTADDSUB_UPPERINPUT": C(0, 1), "BOTADDSUB_CARRYSELECT": C(0, 2),
        "MODE_8x8": C(0, 1), "A_SIGNED": C(1, 1), "B_SIGNED": C(1, 1),
    }

    def elaborate(self, platform):
        m = Module()
        a_pins, b_pins, o_pins = Signal(16), Signal(16), Signal(32)
        m.d.comb += [a_pins.eq(self.a), b_pins.eq(self.b), self.p.eq(o_pins)]
        if self.model:
            m.submodules.mac = dsp = SB_MAC16Model({k: v.value for k, v in self.PARAMS.items()})
            m.d.comb += [dsp.A.eq(a_pins), dsp.B.eq(b_pins), o_pins.eq(dsp.O)]
            return m
        low = {name: C(0, 1) for name in (
            "AHOLD", "BHOLD", "CHOLD", "DHOLD", "IRSTTOP", "IRSTBOT", "ORSTTOP", "ORSTBOT",
            "OLOADTOP", "OLOADBOT", "ADDSUBTOP", "ADDSUBBOT", "OHOLDTOP", "OHOLDBOT",
            "CI", "ACCUMCI", "SIGNEXTIN")}
        m.submodules.mac = Instance(
            "SB_MAC16", **{f"p_{key}": value for key, value in self.PARAMS.items()},
            **{f"i_{name}": value for name, value in low.items()},
            i_CLK=ClockSignal(), i_CE=C(1, 1), i_A=a_pins, i_B=b_pins,
            i_C=C(0, 16), i_D=C(0, 16), o_O=o_pins)
        return m


def check_kind(kind: str) -> str:
    """``kind`` if it is one of :data:`KINDS`; a ValueError that lists them otherwise."""
    if kind not in KINDS:
        raise ValueError(f"multiplier must be one of {', '.join(KINDS)}, not {kind!r}")
    return kind


def make_multiplier(kind: str, a_width: int, b_width: int) -> Multiplier:
    """A registered ``a_width`` x ``b_width`` signed multiplier of ``kind`` (one of
    :data:`KINDS`)."""
    family, _, model = check_kind(kind).partition("-")
    if family == "generic":
        return GenericMultiplier(a_width, b_width)
    cls = {"ecp5": ECP5Multiplier, "ice40": ICE40Multiplier}[family]
    return cls(a_width, b_width, model=model == "model")
