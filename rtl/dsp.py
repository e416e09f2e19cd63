"""Registered multipliers: a DSP primitive per FPGA family, or the generic ``*``.

Every multiplier here computes ``p = a * b`` (signed) :data:`LATENCY` cycles after
its operands: one register on the operands and one on the product. ``latency=1``
keeps only the product's register, for operands that a multiplexer picks from
registers already (the vector unit's requantizer): the route to the DSP block and
its multiply share a cycle, the route back starts the next one. The generic
one builds those registers in fabric around Amaranth's ``*`` (Yosys maps the
``*`` to a DSP block, but leaves the registers in fabric, so the routing
between them and the DSP is in every path). The family ones instantiate the DSP
block with its own registers on:

* ``"ecp5"``: ``MULT18X18D`` with ``REG_INPUTA_CLK``, ``REG_INPUTB_CLK`` and
  ``REG_OUTPUT_CLK`` on ``CLK0`` (``CE0`` high, ``RST0`` low; no pipeline register);
  operands up to 18 bits. At ``latency=1`` the input registers are off.
* ``"ice40"``: ``SB_MAC16`` in 16x16 mode with ``A_REG``/``B_REG`` and the registers
  after its 8x8 partial products (``TOP_8x8_MULT_REG``, ``BOT_8x8_MULT_REG``,
  ``PIPELINE_16x16_MULT_REG1``), the 16x16 product on both output halves
  (``TOPOUTPUT_SELECT = BOTOUTPUT_SELECT = 3``); operands up to 16 bits. Yosys'
  ``ice40_dsp`` pass rewrites the register parameters of every ``SB_MAC16`` it
  meets from the fabric flip-flops around it, so an instantiated one loses its
  registers (A_REG = B_REG = 0, CLK = 0: a combinational multiplier, the wrong
  latency). This kind therefore gives Yosys reset-less registers around ``*``,
  which that pass packs into exactly this configuration (``tests/rtl/test_dsp.py``
  synthesizes it and checks the parameters and the products). At ``latency=1`` it is
  the generic kind's product register around ``*`` (reset-less), which the same pass
  packs as far as it can.

The primitives cannot be simulated, so each has a behavioural model written in
Amaranth (:class:`MULT18X18DModel`, :class:`SB_MAC16Model`) with the
primitive's pins and parameters; the kinds ``"ecp5-model"`` and
``"ice40-model"`` wire it in place of the primitive (for ECP5 through the same
pin mapping as the ``Instance``). Simulations use those or ``"generic"``; the
build elaborates the primitive (``gen.build`` picks the kind from the board's
family).

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
    """``p = a * b`` (signed), ``latency`` cycles after ``a`` and ``b`` (:data:`LATENCY`,
    or 1: the product's register only).

    Members
    -------
    a : In(signed(a_width))
    b : In(signed(b_width))
    p : Out(signed(a_width + b_width))
    """

    MAX_WIDTH = 64

    def __init__(self, a_width, b_width, *, latency=LATENCY):
        self.a_width = operator.index(a_width)
        self.b_width = operator.index(b_width)
        if latency not in (1, LATENCY):
            self._MustUse__silence = True
            raise ValueError(f"{type(self).__name__}: latency must be 1 or {LATENCY}, "
                             f"not {latency!r}")
        self.latency = latency
        for name, width in (("a_width", self.a_width), ("b_width", self.b_width)):
            if not 2 <= width <= self.MAX_WIDTH:
                self._MustUse__silence = True   # never built: no "never used" warning
                raise ValueError(f"{type(self).__name__}: {name} must be from 2 to "
                                 f"{self.MAX_WIDTH}, not {width!r}")
        super().__init__({"a": In(signed(self.a_width)), "b": In(signed(self.b_width)),
                          "p": Out(signed(self.a_width + self.b_width))})


class GenericMultiplier(Multiplier):
    """Fabric registers around Amaranth's ``*``; Yosys chooses the multiplier."""

    def __init__(self, a_width, b_width, *, latency=LATENCY, reset_less=False):
        super().__init__(a_width, b_width, latency=latency)
        self.reset_less = bool(reset_less)

    def elaborate(self, platform):
        m = Module()
        product = Signal.like(self.p, name="product", reset_less=self.reset_less)
        if self.latency == 1:
            m.d.sync += product.eq(self.a * self.b)
        else:
            a_reg = Signal.like(self.a, name="a_reg", reset_less=self.reset_less)
            b_reg = Signal.like(self.b, name="b_reg", reset_less=self.reset_less)
            m.d.sync += [a_reg.eq(self.a), b_reg.eq(self.b), product.eq(a_reg * b_reg)]
        m.d.comb += self.p.eq(product)
        return m


class _PrimitiveMultiplier(Multiplier):
    """A family primitive: the pin mapping is shared by the Instance and the model."""

    def __init__(self, a_width, b_width, *, model=False, latency=LATENCY):
        super().__init__(a_width, b_width, latency=latency)
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

    @property
    def params(self):
        """:data:`PARAMS`, with the input registers off at ``latency=1``."""
        if self.latency == LATENCY:
            return dict(self.PARAMS)
        return {**self.PARAMS, "REG_INPUTA_CLK": "NONE", "REG_INPUTB_CLK": "NONE"}

    def elaborate(self, platform):
        m = Module()
        # The pins: operands sign-extended to 18 bits, the product's low bits from P.
        a_pins, b_pins, p_pins = Signal(18), Signal(18), Signal(36)
        m.d.comb += [a_pins.eq(self.a), b_pins.eq(self.b), self.p.eq(p_pins)]
        if self.model:
            m.submodules.mult = dsp = MULT18X18DModel(self.params)
            m.d.comb += [dsp.A.eq(a_pins), dsp.B.eq(b_pins), dsp.SIGNEDA.eq(1),
                         dsp.SIGNEDB.eq(1), p_pins.eq(dsp.P)]
            return m
        ports = {f"p_{key}": value for key, value in self.params.items()}
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
    high bytes carry the ``A_SIGNED``/``B_SIGNED`` sign), through the registers that are
    enabled: ``A_REG``/``B_REG`` on the inputs, ``TOP_8x8_MULT_REG``, ``BOT_8x8_MULT_REG``
    and ``PIPELINE_16x16_MULT_REG1`` on the partial products, ``PIPELINE_16x16_MULT_REG2``
    on their sum (``CE`` high, every hold and reset low).
    """

    def __init__(self, params: dict):
        for key, allowed in (("MODE_8x8", (0,)), ("TOPOUTPUT_SELECT", (3,)),
                             ("BOTOUTPUT_SELECT", (3,))):
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
        f = stage(f, "TOP_8x8_MULT_REG", "rF")
        j = stage(j, "PIPELINE_16x16_MULT_REG1", "rJ")
        k = stage(k, "PIPELINE_16x16_MULT_REG1", "rK")
        g = stage(g, "BOT_8x8_MULT_REG", "rG")
        k_e = k.as_signed() if p.get("A_SIGNED", 0) else k
        j_e = j.as_signed() if p.get("B_SIGNED", 0) else j
        product = Signal(32)
        m.d.comb += product.eq(g + (k_e << 8) + (j_e << 8) + (f << 16))
        m.d.comb += self.O.eq(stage(product, "PIPELINE_16x16_MULT_REG2", "rH"))
        return m


class ICE40Multiplier(_PrimitiveMultiplier):
    """``SB_MAC16`` with its input and partial-product registers, through Yosys'
    ``ice40_dsp`` (see the module docstring for why not an ``Instance``)."""

    MAX_WIDTH = 16
    # The SB_MAC16 configuration that ice40_dsp packs these registers into.
    PARAMS = {"A_REG": 1, "B_REG": 1, "TOP_8x8_MULT_REG": 1, "BOT_8x8_MULT_REG": 1,
              "PIPELINE_16x16_MULT_REG1": 1, "PIPELINE_16x16_MULT_REG2": 0,
              "TOPOUTPUT_SELECT": 3, "BOTOUTPUT_SELECT": 3, "MODE_8x8": 0,
              "A_SIGNED": 1, "B_SIGNED": 1}

    def elaborate(self, platform):
        m = Module()
        if self.model:
            a_pins, b_pins = Signal(16), Signal(16)
            m.submodules.mac = dsp = SB_MAC16Model(self.PARAMS)
            m.d.comb += [a_pins.eq(self.a), b_pins.eq(self.b), dsp.A.eq(a_pins),
                         dsp.B.eq(b_pins), self.p.eq(dsp.O)]
            return m
        # No reset: ice40_dsp packs only plain flip-flops ($dff) into the DSP.
        a_reg = Signal.like(self.a, name="a_reg", reset_less=True)
        b_reg = Signal.like(self.b, name="b_reg", reset_less=True)
        product = Signal.like(self.p, name="product", reset_less=True)
        m.d.sync += [a_reg.eq(self.a), b_reg.eq(self.b), product.eq(a_reg * b_reg)]
        m.d.comb += self.p.eq(product)
        return m


def check_kind(kind: str) -> str:
    """``kind`` if it is one of :data:`KINDS`; a ValueError that lists them otherwise."""
    if kind not in KINDS:
        raise ValueError(f"multiplier must be one of {', '.join(KINDS)}, not {kind!r}")
    return kind


def make_multiplier(kind: str, a_width: int, b_width: int, *,
                    latency: int = LATENCY) -> Multiplier:
    """A registered ``a_width`` x ``b_width`` signed multiplier of ``kind`` (one of
    :data:`KINDS`), its product ``latency`` cycles after its operands."""
    family, _, model = check_kind(kind).partition("-")
    if family == "generic":
        return GenericMultiplier(a_width, b_width, latency=latency)
    if family == "ice40" and latency == 1:
        # ice40_dsp packs a product register around `*` into the SB_MAC16 by itself.
        return GenericMultiplier(a_width, b_width, latency=1, reset_less=True)
    cls = {"ecp5": ECP5Multiplier, "ice40": ICE40Multiplier}[family]
    return cls(a_width, b_width, model=model == "model", latency=latency)
