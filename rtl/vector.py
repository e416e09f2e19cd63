"""The vector unit: every ``VecOp`` of a ``VEC`` instruction (``docs/intmath.md``).

The controller starts the unit with a one-cycle ``start`` pulse when the matmul
engine is idle and nothing else runs, and hands it the scratchpad and
accumulator ports for as long as ``busy`` is high. Bounds and unit presence are
the controller's checks: the unit assumes a legal instruction whose unit is
present (a VecOp whose unit is absent only takes one busy cycle).

Timing: ``busy`` is high from the cycle after ``start`` for exactly
``rtl.isa.vector_op_cycles(instr, geometry, pos)`` cycles (at least one), and
low otherwise. Every memory write and the ``tok_we`` pulse happen in a cycle in
which ``busy`` is high, so the instruction after it sees all its effects.

How it works
------------
Most operations are **row passes** over vectors in the vector layout. For each
row the unit reads its operand rows (the accumulator has one read port, so
two or three accumulator vectors take one cycle each; the rows read first are
latched into row buffers, the last one is used straight from the port, whose
data holds while its ``en`` is low), then streams the row through a lane
pipeline, ``vector_lanes`` elements a cycle, ``cols / vector_lanes`` cycles a
row. The next row is read while the previous one is still in the pipeline;
results are shifted into a row register and written whole when the row's last
lanes leave the pipeline. Reductions (max, sums, argmax) add the lanes up in a
tree and accumulate. SOFTMAX is three passes (max; sum of i-exp; output) with
a division between; LAYERNORM three passes (sum; sum of squares; output) with
three divisions and a square root between. The serial divider and square
root take one cycle a result bit. EMBED and PUT_COL are one element a cycle
(each element lives in its own scratchpad row), COPY_ACC and COPY_SP one row
a cycle; what they write is registered first (never block RAM data straight
into block RAM). Pass depths and the counts of serial steps are ``rtl.isa.VEC_*``.

``vector_lanes`` replicates the lane pipeline: REQ, ADD, MUL, GELU, SOFTMAX,
LAYERNORM and ARGMAX take ``vector_lanes`` elements a cycle; EMBED, PUT_COL
and the copies do not depend on it.

Multipliers per lane: one requantizer (the x * M of rq8/rq32: two 16x16
pieces) shared by REQ, ADD, MUL, GELU, SOFTMAX and LAYERNORM, whose pieces
also give EMBED its two table products (lane 0); MUL's 8x8 a * b in LUTs;
GELU's square and q * (y + ONE); SOFTMAX's i-exp square and e * f;
LAYERNORM's v * v / v * inv (one multiplier for both passes) and z * G (32 x
18). docs/rtl.md ("Vector unit") has the cycle counts, the pipelines and the
area per unit and lane.

The DSP multipliers are ``rtl/dsp.py``'s registered ones, of the kind the build
picks (``multiplier``; MULT18X18D on ECP5), each 18 x 18 at most: an operand
wider than that goes in as two pieces whose products are added in fabric.
GELU's two take their operands into the DSP's input registers, in place of the
fabric registers that held them; the requantizer's pieces, LAYERNORM's v * v /
v * inv (whose v, a variable shift and a saturation deep, stays a fabric
register) and z * G, whose operands are registers already, register only their
products. Either way a product arrives in
the same stage as with ``*`` between fabric registers, so the cycle counts do
not depend on the kind. SOFTMAX's e * f (22 x 20) and the i-exp square stay
``*``.
"""

import functools
import operator

from amaranth import *
from amaranth.lib import wiring, data
from amaranth.lib.wiring import In, Out

from .intmath import IExp, const_mul
from .dsp import LATENCY as DSP_LATENCY, check_kind, make_multiplier
from .isa import (Geometry, INSTRUCTION, NUM_PARAMS, VecOp, Flags, Param, VEC_DRAIN,
                  VEC_DIV_STEPS, VEC_SQRT_STEPS, VEC_ADDR_SETUP_CYCLES, SP_READ_LATENCY)
from .resetless import data_signal

__all__ = ["VectorUnit"]

# Row-pass kinds and the unit each belongs to.
PASS_UNIT = {
    "req": "elementwise", "add": "elementwise", "mul": "elementwise", "gelu": "gelu",
    "softmax_max": "softmax", "softmax_sum": "softmax", "softmax_out": "softmax",
    "layernorm_sum": "layernorm", "layernorm_var": "layernorm", "layernorm_out": "layernorm",
    "argmax": "argmax",
}
assert set(PASS_UNIT) == set(VEC_DRAIN)
SP_WRITERS = ("req", "mul", "gelu", "softmax_out", "layernorm_out")

RQ_STAGES = 4         # requantizer: partial products, sum and round, shift, saturate
RQ_PRODUCT_BITS = 48  # x (int32) * M (uint16) fits signed 48 bits


def _sat(value, bits):
    """Saturate a signed value to ``bits``: a check of its top bits, no comparator."""
    value = value.as_signed()
    if len(value) <= bits:
        return value
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return Mux(fits(value, bits), value[:bits].as_signed(), Mux(value[-1], lo, hi))


def fits(value, bits):
    """``value`` (signed) is representable in ``bits`` signed bits."""
    top = value[bits - 1:]
    return (top == 0) | (top == (1 << len(top)) - 1)


def lut_mul(a, b):
    """Signed ``a * b`` as shifted partial products (LUTs and carry chains, no DSP)."""
    a, b = a.as_signed(), b.as_signed()
    width = len(a) + len(b)
    terms = [Mux(b[i], a << i, 0) for i in range(len(b) - 1)]
    terms.append(Mux(b[-1], -(a << (len(b) - 1)), 0))     # the sign bit weighs -2**(n-1)
    return functools.reduce(operator.add, terms)[:width].as_signed()


def _tree(items, combine):
    while len(items) > 1:
        items = [combine(items[i], items[i + 1]) if i + 1 < len(items) else items[i]
                 for i in range(0, len(items), 2)]
    return items[0]


class VectorUnit(wiring.Component):
    """Members
    -------
    start : In(1)
        One-cycle pulse. ``instr``, ``pos``, ``tok`` and ``params`` are sampled
        in that cycle *and* must stay stable until ``busy`` falls.
    instr : In(INSTRUCTION)     the VEC instruction (``tag`` = VecOp)
    pos : In(16)                POS
    tok : In(16)                TOK[POS] (EMBED's token id)
    params : In(data.ArrayLayout(signed(32), NUM_PARAMS))   P[0..NUM_PARAMS-1]
    busy : Out(1)               registered; high the cycle after ``start``
    tok_we : Out(1)             one-cycle pulse (ARGMAX): TOK[POS+1] = ``tok_wdata``
    tok_wdata : Out(16)

    Scratchpad (``geometry.sp_width``-bit rows; both read ports of the
    scratchpad ``BankedMemory`` and its write port)::

        sp_r0_en, sp_r0_addr : Out(1), Out(16);  sp_r0_data : In(sp_width)
        sp_r1_en, sp_r1_addr : Out(1), Out(16);  sp_r1_data : In(sp_width)
        sp_w_en, sp_w_addr : Out(1), Out(16);    sp_w_data : Out(sp_width)

    Accumulator (``geometry.acc_row_width``-bit rows; its one read port and its
    write port; the unit needs no more read ports)::

        acc_r_en, acc_r_addr : Out(1), Out(16);  acc_r_data : In(acc_row_width)
        acc_w_en, acc_w_addr : Out(1), Out(16);  acc_w_data : Out(acc_row_width)

    Addresses are 16-bit row numbers; the controller connects their low bits
    to the memories. The enables are low whenever ``busy`` is low, so the
    controller may OR them with its own or mux on ``busy``. Accumulator reads
    have one cycle of latency, scratchpad reads ``SP_READ_LATENCY`` (two: the
    scratchpad registers its rows before the bank multiplexer,
    ``rtl/memory.py``), and the unit relies on a read port's data *holding*
    while its ``en`` is low (as ``lib.memory`` read ports and ``BankedMemory``
    do): nothing else may read those ports while the unit is busy. Nothing
    relies on read-during-write behaviour (the copies forward their own rows).

    Overlapping vectors: the result of REQ, ADD, MUL, GELU, SOFTMAX, LAYERNORM
    and EMBED may be an operand's rows exactly (in place) or overlap it from
    below (result base <= operand base): every operand row is read before the
    result row over it is written, as ``docs/intmath.md`` computes it. A result
    that overlaps an operand from above is streamed over rows not read yet, and
    is not defined. COPY_ACC and COPY_SP go row by row in order (an overlapping
    copy sees the rows it wrote). PUT_COL's source must not overlap its
    target rows.
    """

    def __init__(self, geometry: Geometry, *, multiplier="generic"):
        if not isinstance(geometry, Geometry):
            raise TypeError(f"geometry must be an rtl.isa.Geometry, not {geometry!r}")
        if geometry.input_width != 8 or geometry.acc_width != 32:
            raise ValueError("the vector unit needs input_width = 8 and acc_width = 32, not "
                             f"{geometry.input_width} and {geometry.acc_width}")
        self.geometry = geometry
        self.lanes = operator.index(geometry.vector_lanes)
        # The DSP kind (rtl.dsp.KINDS). iCE40's SB_MAC16 takes 16-bit operands and most of
        # these are 17 or 18 bits wide: there the unit keeps the generic kind.
        self.multiplier = check_kind(multiplier)
        if self.multiplier.startswith("ice40"):
            self.multiplier = "generic"
        sp_w, acc_w = geometry.sp_width, geometry.acc_row_width
        super().__init__({
            "start": In(1),
            "instr": In(INSTRUCTION),
            "pos": In(16),
            "tok": In(16),
            "params": In(data.ArrayLayout(signed(32), NUM_PARAMS)),
            "busy": Out(1),
            "tok_we": Out(1),
            "tok_wdata": Out(16),
            "sp_r0_en": Out(1), "sp_r0_addr": Out(16), "sp_r0_data": In(sp_w),
            "sp_r1_en": Out(1), "sp_r1_addr": Out(16), "sp_r1_data": In(sp_w),
            "sp_w_en": Out(1), "sp_w_addr": Out(16), "sp_w_data": Out(sp_w),
            "acc_r_en": Out(1), "acc_r_addr": Out(16), "acc_r_data": In(acc_w),
            "acc_w_en": Out(1), "acc_w_addr": Out(16), "acc_w_data": Out(acc_w),
        })

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        cols, L = g.cols, self.lanes
        S = cols // L                       # lane cycles a row
        units = set(g.units)
        ins = self.instr
        n16 = ins.count0
        perchan = (ins.flags & Flags.PERCHAN) != 0
        mult = ins.mult
        P = self.params

        kinds = [k for k in VEC_DRAIN if PASS_UNIT[k] in units]
        kind_id = {k: i for i, k in enumerate(kinds)}
        kind = Signal(range(max(len(kinds), 1) + 1))

        def is_kind(*names):
            hits = [kind == kind_id[k] for k in names if k in kind_id]
            return functools.reduce(operator.or_, hits) if hits else C(0, 1)

        def has(*names):
            return any(k in kind_id for k in names)

        depth = max((VEC_DRAIN[k] for k in kinds), default=1)

        # ------------------------------------------------------------ registers
        n_valid = Signal(18)       # elements (SOFTMAX: count0 + POS)
        rlimit = Signal(18)        # a pass covers the rows below this element
        mlimit = Signal(18)        # elements at or past this are masked
        row = Signal(16)           # row of the pass
        eidx = Signal(18)          # element index of the lane cycle's first lane
        rd = Signal(2)             # operand read of the row
        step = Signal(range(S)) if S > 1 else C(0, 1)
        drain = Signal(range(depth + 1))
        nrows = Signal(16)         # rows of the LAYERNORM vector (for beta's address)
        shift_c = Signal(range(RQ_PRODUCT_BITS + 1))
        half = Signal(RQ_PRODUCT_BITS)
        # EMBED/PUT_COL/COPY: the elements (rows) still to read, counted down from n past
        # zero into the drain, so that the state's tests are compares with constants.
        e_left = Signal(signed(18))

        # Operand reads and row buffers.
        # Rows and the lane pipelines' values are data registers (rtl/resetless.py):
        # the tag pipeline's valid flags qualify them.
        buf1 = data_signal(cols * 32)
        buf2 = data_signal(cols * 32)
        latch = Signal(2)          # 1: buf1, 2: buf2 take the accumulator port's data
        m.d.sync += latch.eq(0)
        with m.If(latch == 1):
            m.d.sync += buf1.eq(self.acc_r_data)
        with m.If(latch == 2):
            m.d.sync += buf2.eq(self.acc_r_data)

        def lanes_of(value, width, at=step):
            """The L lanes of ``width`` bits that the lane cycle ``at`` takes."""
            value = value[:cols * width]
            group = value.word_select(at, L * width) if S > 1 else value
            return [group[l * width:(l + 1) * width].as_signed() for l in range(L)]

        acc_lane = lanes_of(self.acc_r_data, 32)
        buf1_lane = lanes_of(buf1, 32)
        buf2_lane = lanes_of(buf2, 32)
        # A scratchpad row reaches the port SP_READ_LATENCY - 1 cycles after an
        # accumulator row would: MUL and GELU take their lanes that much after the lane
        # cycle (sp_step), and their pipelines are as much deeper (VEC_DRAIN). The row
        # holds on the port for the lane cycles of its row, shifted alike: the next
        # row's read (READ) comes after them and arrives as late.
        sp_late = SP_READ_LATENCY - 1
        sp_step = step
        for k in range(sp_late if S > 1 else 0):
            reg = Signal.like(step, name=f"sp_step{k + 1}")
            m.d.sync += reg.eq(sp_step)
            sp_step = reg
        sp0_lane = lanes_of(self.sp_r0_data, 8, sp_step)
        sp1_lane = lanes_of(self.sp_r1_data, 8, sp_step)

        # Tags travel with the lanes: stage k is the lane cycle's value k cycles later.
        lane_cycle = Signal()
        stages = range(1, depth + 1)
        tag_valid = [lane_cycle] + [Signal(name=f"tag_valid{k}") for k in stages]
        tag_last = [Signal(name="tag_last0")] + [Signal(name=f"tag_last{k}") for k in stages]
        tag_mask = [Signal(L, name="tag_mask0")] + [Signal(L, name=f"tag_mask{k}") for k in stages]
        flush = Signal()           # a new pass: lanes left from the last one are dropped
        for k in range(1, depth + 1):
            m.d.sync += [tag_valid[k].eq(tag_valid[k - 1] & ~flush),
                         tag_last[k].eq(tag_last[k - 1]), tag_mask[k].eq(tag_mask[k - 1])]
        m.d.comb += tag_last[0].eq(step == S - 1)
        m.d.comb += [tag_mask[0][l].eq(eidx + l < mlimit) for l in range(L)]
        # Rows are written in order: a counter gives the write address.
        wrow = Signal(16)
        wbase = Mux(is_kind("add"), ins.addr0, ins.addr2)
        eidx1 = Signal(18)
        m.d.sync += eidx1.eq(eidx)

        tap_valid, tap_last = Signal(), Signal()
        tap_mask = Signal(L)
        tap_addr = wbase + wrow
        with m.Switch(kind):
            for k in kinds:
                with m.Case(kind_id[k]):
                    d = VEC_DRAIN[k]
                    m.d.comb += [tap_valid.eq(tag_valid[d]), tap_last.eq(tag_last[d]),
                                 tap_mask.eq(tag_mask[d])]

        def dsp_product(name, a, pieces, latency=DSP_LATENCY):
            """``a`` times the sum of ``b << shift`` over ``pieces``: one registered DSP
            multiplier (``rtl/dsp.py``) per piece, their products added in fabric, ready
            ``latency`` cycles after the operands. At the default latency the DSP's own
            input registers stand where a fabric register held the operands, so the
            operands are fed a cycle earlier than the stage they belong to. Returns the
            sum and the products."""
            products = []
            for n, (b, shift) in enumerate(pieces):
                mul = make_multiplier(self.multiplier, len(a), len(b), latency=latency)
                m.submodules[f"{name}_{n}"] = mul
                m.d.comb += [mul.a.eq(a), mul.b.eq(b)]
                products.append(mul.p)
            return sum(p << shift for p, (_, shift) in zip(products, pieces)), products

        def split17(value):
            """A signed value wider than 18 bits as (low 17 bits, unsigned) + (the rest << 17):
            two operands that fit an 18 x 18 multiplier."""
            return [(Cat(value[:17], C(0, 1)).as_signed(), 0), (value[17:].as_signed(), 17)]

        def zext(value):
            """An unsigned value as a signed one a bit wider."""
            return Cat(value, C(0, 1)).as_signed()

        def delay(value, stages, name):
            """[value, value 1 cycle later, ...]: registers for stages 1..stages."""
            out = [value]
            for k in range(1, stages + 1):
                reg = Signal.like(value, name=f"{name}{k}", reset_less=True)
                m.d.sync += reg.eq(out[-1])
                out.append(reg)
            return out

        # Parameters computed once per instruction, and the reductions.
        mean = Signal(signed(33))
        inv = Signal(33)
        f = Signal(20)
        mx = Signal(signed(32))
        sum_e = Signal(41)
        sum_x = Signal(signed(50))
        sum_v = Signal(48)
        best_val = Signal(signed(32))
        best_idx = Signal(18)
        best_any = Signal()
        ln_sh = ins.count1[:5]

        # --------------------------------------------------------- lane pipelines
        out8 = []       # per lane: the int8 result at the tap of an sp-writing pass
        out32 = []      # per lane: ADD's int32 result (stage 6)
        red_max, red_sum_e, red_sum_x, red_sum_v, red_arg = [], [], [], [], []
        need_rq = has("req", "add", "mul", "gelu", "softmax_max", "layernorm_out")
        # EMBED's table entries (stage 2 of its own pipeline), multiplied by lane 0's
        # requantizer pieces: EMBED never runs beside another op.
        emb_a2, emb_b2 = Signal(signed(8)), Signal(signed(8))
        emb_products = None
        for l in range(L):
            def s(name, shape):
                return data_signal(shape, name=f"{name}_l{l}")

            a1 = s("a1", signed(32))
            m.d.sync += a1.eq(acc_lane[l])
            lane_out8 = s("out8", signed(8))
            m.d.comb += lane_out8.eq(0)
            rq_in = s("rq_in", signed(32))
            rq_m = s("rq_m", 16)
            rq_m_hi = s("rq_m_hi", 16)
            m.d.comb += [rq_in.eq(a1), rq_m.eq(mult), rq_m_hi.eq(rq_m)]

            if has("req", "add"):
                rqx1, rqm1 = s("rqx1", signed(32)), s("rqm1", 16)
                m.d.sync += [
                    rqx1.eq(Mux(is_kind("add"), buf1_lane[l], acc_lane[l])),
                    rqm1.eq(Mux(perchan, Mux(is_kind("add"), buf2_lane[l], buf1_lane[l])[:16], mult)),
                ]
                with m.If(is_kind("req", "add")):
                    m.d.comb += [rq_in.eq(rqx1), rq_m.eq(rqm1)]
            if has("mul"):
                qa1, qb1, p2 = s("qa1", signed(8)), s("qb1", signed(8)), s("p2", signed(16))
                # 8x8 in LUTs: too small to spend a DSP multiplier on.
                m.d.sync += [qa1.eq(sp0_lane[l]), qb1.eq(sp1_lane[l]), p2.eq(lut_mul(qa1, qb1))]
                with m.If(is_kind("mul")):
                    m.d.comb += rq_in.eq(p2)
            if has("gelu"):
                B, Cc, ONE = P[Param.GELU_B], P[Param.GELU_C], P[Param.GELU_ONE]
                q = delay(sp0_lane[l], 7, f"gelu_q_l{l}_")   # q[k]: stage k
                v2 = s("gelu_v2", signed(34))               # |q| + B; a + B = min(v, 0)
                m.d.sync += v2.eq(Mux(q[1] < 0, -q[1], q[1]) + B)
                # |a + B|, clamped at 2**16, goes into the square's DSP input registers
                # (stage 3), the square comes out of its output register (stage 4).
                au, big3 = s("gelu_au", 16), s("gelu_big3", 1)
                neg = -v2
                m.d.comb += au.eq(Mux(v2 < 0, neg[:16], 0))
                m.d.sync += big3.eq((v2 < 0) & (neg[16:] != 0))
                sq4, big4 = s("gelu_sq4", 32), s("gelu_big4", 1)
                sq, _ = dsp_product(f"gelu_sq_l{l}", zext(au), [(zext(au), 0)])
                m.d.comb += sq4.eq(sq)
                m.d.sync += big4.eq(big3)
                # C - (a + B)**2; past 2**32 the square saturates y whatever C is.
                w = Mux(big4, -(1 << 33), Cc - sq4)
                y5 = s("gelu_y5", signed(32))
                m.d.sync += y5.eq(_sat(Mux(q[4] > 0, w, Mux(q[4] < 0, -w, 0)), 32))
                # q * (y + ONE): y + ONE (33 bits) in two pieces into two DSPs' input
                # registers (stage 6), their products (stage 7) added before saturating.
                t = s("gelu_t", signed(33))
                m.d.comb += t.eq(y5 + ONE)
                g7 = s("gelu_g7", signed(41))
                gq, _ = dsp_product(f"gelu_g_l{l}", q[5], split17(t))
                m.d.comb += g7.eq(gq)
                g8 = s("gelu_g8", signed(32))
                m.d.sync += g8.eq(_sat(g7, 32))
                with m.If(is_kind("gelu")):
                    m.d.comb += rq_in.eq(g8)
            if has("layernorm_out"):
                G = delay(buf1_lane[l], 4, f"ln_g_l{l}_")
                Bt = delay(buf2_lane[l], 6, f"ln_b_l{l}_")
                diff2 = s("ln_diff2", signed(34))
                m.d.sync += diff2.eq(a1 - mean)
                # v * v (the variance pass) or v * inv (the output pass), inv (33 bits) in
                # two pieces; the variance pass has v in the low piece and 0 in the high
                # one. v is a fabric register (stage 3) and the DSPs register only their
                # products (stage 4): the variable shift and saturation before v are too
                # deep to share a cycle with the route to a DSP across the die (the
                # default's critical path at 55 MHz with v in the DSPs' input registers).
                v = s("ln_v", signed(16))
                m.d.sync += v.eq(_sat(diff2 >> ln_sh, 16))
                is_var = is_kind("layernorm_var")
                inv_lo, inv_hi = split17(inv.as_signed())
                mp, (mp_lo, _) = dsp_product(
                    f"ln_mp_l{l}", v, [(Mux(is_var, v, inv_lo[0]), 0),
                                       (Mux(is_var, 0, inv_hi[0]), 17)], latency=1)
                mp4 = s("ln_mp4", signed(50))
                m.d.comb += mp4.eq(mp)
                red_sum_v.append(Mux(tag_mask[4][l], mp_lo, 0))   # v * v: all in the low one
                # z * G on one 32 x 18 multiplier: whichever factor fits 18 bits takes the
                # narrow side; when neither does, |z * G| >= 2**34 saturates whatever beta is.
                # Stage 5 registers the chosen factors, so that the selection logic and the
                # route to the multiplier (a DSP the placer may put far from the lane: 5.7 ns
                # there and 4.9 ns back in one route, docs/fpga.md) do not share a cycle.
                z4 = mp4[16:48].as_signed()
                g_narrow, z_narrow = fits(G[4], 18), fits(z4, 18)
                wide = s("ln_wide5", signed(32))
                narrow = s("ln_narrow5", signed(18))
                fit5, neg5 = s("ln_fit5", 1), s("ln_neg5", 1)
                m.d.sync += [wide.eq(Mux(g_narrow, z4, G[4])),
                             narrow.eq(Mux(g_narrow, G[4][:18], z4[:18])),
                             fit5.eq(g_narrow | z_narrow), neg5.eq(z4[31] ^ G[4][31])]
                # The chosen factors are registers already: the DSPs register only their
                # products (stage 6), the 32-bit factor in two pieces.
                fit6, neg6 = s("ln_fit6", 1), s("ln_neg6", 1)
                m.d.sync += [fit6.eq(fit5), neg6.eq(neg5)]
                pg, _ = dsp_product(f"ln_pg_l{l}", narrow, split17(wide), latency=1)
                pg6 = s("ln_pg6", signed(51))
                m.d.comb += pg6.eq(Mux(fit6, pg, Mux(neg6, -(1 << 40), 1 << 40)))
                w7 = s("ln_w7", signed(32))
                m.d.sync += w7.eq(_sat(pg6 + Bt[6], 32))
                with m.If(is_kind("layernorm_out")):
                    m.d.comb += rq_in.eq(w7)
            if has("layernorm_sum"):
                red_sum_x.append(Mux(tag_mask[1][l], a1, 0))

            embed_here = l == 0 and "embed" in units
            if need_rq or embed_here:
                # Requantizer: x * M in 16-bit pieces, + half, >> shift, saturate.
                # Its operands are picked from registers by kind, so the two DSPs register
                # only their products.
                plo, phi = s("rq_plo", 32), s("rq_phi", signed(33))
                _, (lo,) = dsp_product(f"rq_lo_l{l}", zext(rq_in[:16]), [(zext(rq_m), 0)],
                                         latency=1)
                _, (hi,) = dsp_product(f"rq_hi_l{l}", rq_in[16:32].as_signed(),
                                         [(zext(rq_m_hi), 0)], latency=1)
                m.d.comb += [plo.eq(lo), phi.eq(hi)]
            if embed_here:
                # EMBED: (a + 128) * mult on the low piece, b * count1 on the high one.
                a_biased, b_wide = Signal(16), Signal(signed(16))
                m.d.comb += [a_biased.eq(emb_a2 + 128), b_wide.eq(emb_b2)]
                with m.If(ins.tag == VecOp.EMBED):
                    m.d.comb += [rq_in.eq(Cat(a_biased, b_wide)),
                                 rq_m.eq(mult), rq_m_hi.eq(ins.count1)]
                emb_products = (plo, phi)
            if need_rq:
                rsum = s("rq_sum", signed(RQ_PRODUCT_BITS + 1))
                m.d.sync += rsum.eq(plo + (phi << 16) + half)
                scaled = s("rq_scaled", signed(RQ_PRODUCT_BITS + 1))
                m.d.sync += scaled.eq(rsum >> shift_c)
                rq8, rq32 = s("rq8", signed(8)), s("rq32", signed(32))
                m.d.sync += [rq8.eq(_sat(scaled, 8)), rq32.eq(_sat(scaled, 32))]
                m.d.comb += lane_out8.eq(rq8)

            if has("add"):
                x5 = delay(a1, 4, f"add_x_l{l}_")[-1]
                add6 = s("add6", signed(32))
                m.d.sync += add6.eq(_sat(x5 + rq32, 32))
                out32.append(add6)
            if has("softmax_max"):
                red_max.append((tag_mask[5][l], rq32))
                t6 = s("sm_t6", 16)          # t = -d = min(max - x, 32768)
                dm = s("sm_dm", signed(34))
                m.d.comb += dm.eq(mx - rq32)
                m.d.sync += t6.eq(Mux(dm > 32768, 32768, dm))
                m.submodules[f"iexp{l}"] = iexp = IExp()
                m.d.comb += iexp.t.eq(t6)
                assert 6 + IExp.LATENCY == 10
                e10 = iexp.e
                red_sum_e.append(Mux(tag_mask[10][l], e10, 0))
                p11 = s("sm_p11", 42)
                m.d.sync += p11.eq(e10 * f)
                o12 = s("sm_o12", 8)
                rounded = (p11 + (1 << 32)) >> 33
                m.d.sync += o12.eq(Mux(rounded > 127, 127, rounded))
                with m.If(is_kind("softmax_out")):
                    m.d.comb += lane_out8.eq(o12)
            if has("argmax"):
                red_arg.append((tag_mask[1][l], a1, eidx1 + l))
            out8.append(lane_out8)

        # ----------------------------------------------------------- reductions
        if red_max:
            def max2(a, b):
                va, xa = a
                vb, xb = b
                return (va | vb, Mux(va & (~vb | (xa >= xb)), xa, xb))
            _, lane_max = _tree(red_max, max2)
            # Whether the lanes' max beats mx: each lane's compare, beside the tree, not
            # after it (one carry chain before the registers' enables, not two).
            beats = Cat(v & (x > mx) for v, x in red_max).any()
            with m.If(tap_valid & is_kind("softmax_max") & beats):
                m.d.sync += mx.eq(lane_max)
            with m.If(tap_valid & is_kind("softmax_sum")):
                m.d.sync += sum_e.eq(sum_e + _tree(red_sum_e, operator.add))
        if red_sum_x:
            with m.If(tap_valid & is_kind("layernorm_sum")):
                m.d.sync += sum_x.eq(sum_x + _tree(red_sum_x, operator.add))
            with m.If(tap_valid & is_kind("layernorm_var")):
                m.d.sync += sum_v.eq(sum_v + _tree(red_sum_v, operator.add))
        if red_arg:
            def arg2(a, b):  # a holds the lower indices: it wins ties
                va, xa, ia = a
                vb, xb, ib = b
                take_a = va & (~vb | (xa >= xb))
                return (va | vb, Mux(take_a, xa, xb), Mux(take_a, ia, ib))
            any_valid, lane_best, lane_idx = _tree(red_arg, arg2)
            beats = Cat(v & (x > best_val) for v, x, _ in red_arg).any()   # as SOFTMAX's
            with m.If(tap_valid & is_kind("argmax") & Mux(best_any, beats, any_valid)):
                m.d.sync += [best_any.eq(1), best_val.eq(lane_best), best_idx.eq(lane_idx)]

        # -------------------------------------------------------------- writers
        sp_pad = g.sp_width - cols * 8
        res_sp = data_signal(cols * 8)
        res_acc = data_signal(cols * 32)
        if has(*SP_WRITERS):
            new8 = Cat(*[Mux(tap_mask[l], out8[l], 0)[:8] for l in range(L)])
            row8 = Cat(res_sp[L * 8:], new8)
            with m.If(tap_valid & is_kind(*SP_WRITERS)):
                m.d.sync += res_sp.eq(row8)
                with m.If(tap_last):
                    m.d.comb += [self.sp_w_en.eq(1), self.sp_w_addr.eq(tap_addr),
                                 self.sp_w_data.eq(Cat(row8, C(0, sp_pad)))]
        if has("add"):
            new32 = Cat(*[Mux(tap_mask[l], out32[l], 0)[:32] for l in range(L)])
            row32 = Cat(res_acc[L * 32:], new32)
            with m.If(tap_valid & is_kind("add")):
                m.d.sync += res_acc.eq(row32)
                with m.If(tap_last):
                    m.d.comb += [self.acc_w_en.eq(1), self.acc_w_addr.eq(tap_addr),
                                 self.acc_w_data.eq(row32)]

        with m.If(tap_valid & tap_last):
            m.d.sync += wrow.eq(wrow + 1)

        # ---------------------------------------------------- serial arithmetic
        # Restoring division, one quotient bit a cycle; the quotient is known to
        # be below 2**steps, so the remainder starts as num >> steps.
        div_sel = Signal(2)
        DIV_SOFTMAX, DIV_MEAN, DIV_VAR, DIV_INV = range(4)
        d_rem = Signal(42)
        d_den = Signal(41)
        d_bits = Signal(32)
        d_q = Signal(32)
        d_cnt = Signal(6)
        d_neg = Signal()
        std = Signal(16)
        var = Signal(32)
        sq_op, sq_res, sq_one = Signal(32), Signal(32), Signal(32)
        sq_cnt = Signal(5)

        # EMBED/PUT_COL addresses: TOK[POS] and POS over cols, times n, added to the
        # bases (t_off from addr0, p_off from addr1); then they count the elements, so
        # the read addresses are registers, not sums (mod 2**16, as the ports' are).
        t_bits, p_bits = Signal(16), Signal(16)
        t_rem, p_rem = Signal(8), Signal(8)
        t_q, p_q = Signal(16), Signal(16)
        t_off, p_off = Signal(16), Signal(16)
        n_sh = Signal(16)
        a_cnt = Signal(range(VEC_ADDR_SETUP_CYCLES))
        e_lane = Signal(range(cols))
        e_row = Signal(16)
        dst = Signal(16)

        def acc_reads(reads, last_read, latch):
            """Read ``rd`` of ``reads`` ([(address, buffer)]) on the accumulator port;
            the last one is held on the port, the others go to buf1 or buf2."""
            with m.Switch(rd):
                for j, (addr, buf) in enumerate(reads):
                    with m.Case(j):
                        m.d.comb += [self.acc_r_en.eq(1), self.acc_r_addr.eq(addr)]
                        if buf:
                            m.d.sync += latch.eq(buf)
                        if j == len(reads) - 1:
                            m.d.comb += last_read.eq(1)

        def enter_pass(name, limit, masklimit):
            if name not in kind_id:
                m.next = "IDLE"
                return
            m.d.comb += flush.eq(1)
            m.d.sync += [kind.eq(kind_id[name]), row.eq(0), eidx.eq(0), rd.eq(0), wrow.eq(0),
                         rlimit.eq(limit), mlimit.eq(masklimit)]
            if S > 1:
                m.d.sync += step.eq(0)
            with m.If(limit == 0):
                m.d.sync += drain.eq(VEC_DRAIN[name] - 1)
                m.next = "DRAIN"
            with m.Else():
                m.next = "READ"

        def enter_div(sel):
            m.d.sync += div_sel.eq(sel)
            m.next = "DIV_LOAD"

        lane_mux8 = lambda value, lane: value[:cols * 8].word_select(lane, 8).as_signed() \
            if cols > 1 else value[:8].as_signed()
        if "embed" in units:
            # e_read: the element's rows are read; e1: they are on the ports (e_read is
            # e1 unless the scratchpad's read latency puts stages between them).
            e_layout = data.StructLayout({"valid": 1, "last": 1, "lane": range(cols), "row": 16})
            e_chain = [Signal(e_layout, name=f"e_read{k}") for k in range(sp_late)]
            e1 = Signal(e_layout)
            e2 = Signal.like(e1)
            e3 = Signal.like(e1)
            e_chain.append(e1)
            e_read = e_chain[0]
            m.d.sync += [e_read.valid.eq(0), e2.eq(e1), e3.eq(e2)]
            m.d.sync += [later.eq(earlier) for earlier, later in zip(e_chain, e_chain[1:])]
            m.d.sync += [
                         emb_a2.eq(lane_mux8(self.sp_r0_data, t_rem)),
                         emb_b2.eq(lane_mux8(self.sp_r1_data, p_rem))]
            plo3, phi3 = emb_products
            x3 = Signal(signed(32))    # |x| < 2**24: sat32 never bites
            m.d.comb += x3.eq(plo3 - (mult << 7) + phi3)
            with m.If(e3.valid):
                lanes = []
                for j in range(cols):
                    old = res_acc[j * 32:(j + 1) * 32]
                    lanes.append(Mux(e3.lane == j, x3.as_unsigned(), Mux(j < e3.lane, old, 0))[:32])
                new_row = Cat(*lanes)
                m.d.sync += res_acc.eq(new_row)
                with m.If(e3.last):
                    m.d.comb += [self.acc_w_en.eq(1), self.acc_w_addr.eq(ins.addr2 + e3.row),
                                 self.acc_w_data.eq(new_row)]
        if "elementwise" in units:
            # The merged row is registered before it is written: block RAM data never
            # goes straight back into block RAM (a path across the die on the 85F).
            # p_read: the element's rows are read, with their lane and destination;
            # p_on: they are on the read ports (sp_late cycles later).
            p_layout = data.StructLayout({"valid": 1, "lane": range(cols), "addr": 16})
            p_chain = [Signal(p_layout, name=f"p_stage{k}") for k in range(sp_late + 1)]
            p_read, p_on = p_chain[0], p_chain[-1]
            pv = p_on.valid
            pw = Signal()          # the merged row is written
            p_lane = p_on.lane
            p_addr = p_on.addr
            p_waddr = Signal(16)
            p_row = data_signal(g.sp_width)
            m.d.sync += [p_read.valid.eq(0), pw.eq(pv)]
            m.d.sync += [later.eq(earlier) for earlier, later in zip(p_chain, p_chain[1:])]
            with m.If(pv):
                src = lane_mux8(self.sp_r0_data, p_lane)
                old = self.sp_r1_data
                new = Cat(*[Mux(p_rem == j, src.as_unsigned(), old[j * 8:(j + 1) * 8])[:8]
                            for j in range(cols)],
                          old[cols * 8:])
                m.d.sync += [p_row.eq(new), p_waddr.eq(p_addr)]
            with m.If(pw):
                m.d.comb += [self.sp_w_en.eq(1), self.sp_w_addr.eq(p_waddr),
                             self.sp_w_data.eq(p_row)]
            # ------------------------------------ COPY_ACC, COPY_SP: a row a cycle
            # A row is read (A), waits for the scratchpad's registered read (sp_late
            # stages W), arrives on the port and is registered (B), and is written from the
            # register (C), so no block RAM output drives a block RAM input. COPY_ACC's
            # row, a cycle early on its port, is registered as often (acc_late) so both
            # copies share the pipeline. Copies go row by row, in order: a row whose
            # source is the destination of one of the rows ahead of it (in W, B or C when
            # it is read: not written yet, or written in that very cycle) takes that
            # row's data, the nearest first: c_hist[j] holds the data of the row j + 1
            # ahead when the row reaches B.
            ahead_n = sp_late + 2
            c_layout = data.StructLayout({"valid": 1, "addr": 16, "fwd": ahead_n})
            c_stage = [Signal(c_layout, name=f"c_stage{j}") for j in range(sp_late + 1)]
            c_b = c_stage[-1]      # B: the row is on the port
            cw = Signal()          # C holds a row
            c_waddr = Signal(16)   # C's destination
            c_hist = [data_signal(g.acc_row_width, name=f"c_hist{j}") for j in range(ahead_n)]
            m.d.sync += [c_stage[0].valid.eq(0), cw.eq(c_b.valid)]
            m.d.sync += [later.eq(earlier) for earlier, later in zip(c_stage, c_stage[1:])]
            m.d.sync += [later.eq(earlier) for earlier, later in zip(c_hist, c_hist[1:])]
            acc_late = self.acc_r_data
            for k in range(sp_late):
                reg = data_signal(g.acc_row_width, name=f"c_acc{k + 1}")
                m.d.sync += reg.eq(acc_late)
                acc_late = reg
            c_port = Mux(ins.tag == VecOp.COPY_SP, self.sp_r0_data, acc_late)
            c_data = c_hist[0]
            with m.If(c_b.valid):
                choice = c_port
                for j in reversed(range(ahead_n)):
                    choice = Mux(c_b.fwd[j], c_hist[j], choice)
                m.d.sync += [c_data.eq(choice), c_waddr.eq(c_b.addr)]
            with m.If(cw):
                with m.If(ins.tag == VecOp.COPY_SP):
                    m.d.comb += [self.sp_w_en.eq(1), self.sp_w_addr.eq(c_waddr),
                                 self.sp_w_data.eq(c_data[:g.sp_width])]
                with m.Else():
                    m.d.comb += [self.acc_w_en.eq(1), self.acc_w_addr.eq(c_waddr),
                                 self.acc_w_data.eq(c_data)]

        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    m.next = "SETUP"
            with m.State("SETUP"):
                use_pos = (ins.tag == VecOp.SOFTMAX) & ((ins.flags & Flags.POS) != 0)
                nv = Signal(18)
                m.d.comb += nv.eq(n16 + Mux(use_pos, self.pos, 0))
                clamped = Mux(ins.shift > RQ_PRODUCT_BITS, RQ_PRODUCT_BITS, ins.shift)
                m.d.sync += [n_valid.eq(nv), shift_c.eq(clamped),
                             half.eq(Cat(*[clamped == k + 1 for k in range(RQ_PRODUCT_BITS)])),
                             mx.eq(-(1 << 31)), sum_e.eq(0), sum_x.eq(0), sum_v.eq(0),
                             best_any.eq(0), best_idx.eq(0),
                             t_bits.eq(self.tok), p_bits.eq(self.pos), t_rem.eq(0), p_rem.eq(0),
                             t_off.eq(ins.addr0), p_off.eq(ins.addr1), n_sh.eq(n16),
                             a_cnt.eq(0), e_left.eq(n16),
                             e_lane.eq(0), e_row.eq(0),
                             dst.eq(Mux(ins.tag == VecOp.COPY_SP,
                                        ins.addr1 + Mux((ins.flags & Flags.POS) != 0, self.pos, 0),
                                        ins.addr2))]
                with m.Switch(ins.tag):
                    for op, name in ((VecOp.REQ, "req"), (VecOp.ADD, "add"), (VecOp.MUL, "mul"),
                                     (VecOp.GELU, "gelu"), (VecOp.SOFTMAX, "softmax_max"),
                                     (VecOp.LAYERNORM, "layernorm_sum"),
                                     (VecOp.ARGMAX, "argmax")):
                        with m.Case(op):
                            enter_pass(name, nv, nv)
                    with m.Case(VecOp.EMBED, VecOp.PUT_COL):
                        m.next = "ADDR" if "embed" in units or "elementwise" in units else "IDLE"
                    with m.Case(VecOp.COPY_ACC, VecOp.COPY_SP):
                        m.next = "COPY" if "elementwise" in units else "IDLE"
                    with m.Default():
                        m.next = "IDLE"

            # -------------------------------------------------------- row passes
            with m.State("READ"):
                # Accumulator rows a pass reads, in order: (base, buffer); the last
                # stays on the port. PERCHAN adds the multipliers' row.
                a0, a1_, a2 = ins.addr0 + row, ins.addr1 + row, ins.addr2 + row
                acc_plan = {
                    "req": ([(a0, 0)], [(a1_, 1), (a0, 0)]),
                    "add": ([(a1_, 1), (a0, 0)], [(a1_, 1), (a2, 2), (a0, 0)]),
                    "layernorm_out": ([(a1_, 1), (ins.addr1 + nrows + row, 2), (a0, 0)],) * 2,
                }
                last_read = Signal()
                with m.Switch(kind):
                    for k in kinds:
                        with m.Case(kind_id[k]):
                            if k in acc_plan:
                                plain, with_perchan = acc_plan[k]
                                with m.If(perchan):
                                    acc_reads(with_perchan, last_read, latch)
                                with m.Else():
                                    acc_reads(plain, last_read, latch)
                            elif k in ("mul", "gelu"):
                                m.d.comb += [self.sp_r0_en.eq(1), self.sp_r0_addr.eq(a0),
                                             self.sp_r1_en.eq(k == "mul"),
                                             self.sp_r1_addr.eq(ins.addr1 + row),
                                             last_read.eq(1)]
                            else:   # one accumulator vector at addr0, read while valid
                                m.d.comb += [self.acc_r_en.eq(eidx < n_valid),
                                             self.acc_r_addr.eq(a0), last_read.eq(1)]
                with m.If(last_read):
                    m.next = "LANE"
                with m.Else():
                    m.d.sync += rd.eq(rd + 1)
            with m.State("LANE"):
                m.d.comb += lane_cycle.eq(1)
                m.d.sync += eidx.eq(eidx + L)
                if S > 1:
                    m.d.sync += step.eq(step + 1)
                with m.If(step == S - 1):
                    m.d.sync += [row.eq(row + 1), rd.eq(0)]
                    if S > 1:
                        m.d.sync += step.eq(0)
                    with m.If(eidx + L < rlimit):
                        m.next = "READ"
                    with m.Else():
                        with m.Switch(kind):
                            for k in kinds:
                                with m.Case(kind_id[k]):
                                    m.d.sync += drain.eq(VEC_DRAIN[k] - 1)
                        m.next = "DRAIN"
            with m.State("DRAIN"):
                m.d.sync += drain.eq(drain - 1)
                with m.If(drain == 0):
                    with m.Switch(kind):
                        for k in kinds:
                            with m.Case(kind_id[k]):
                                if k == "softmax_max":
                                    enter_pass("softmax_sum", n_valid, n_valid)
                                elif k == "softmax_sum":
                                    enter_div(DIV_SOFTMAX)
                                elif k == "layernorm_sum":
                                    m.d.sync += nrows.eq(row)
                                    enter_div(DIV_MEAN)
                                elif k == "layernorm_var":
                                    enter_div(DIV_VAR)
                                elif k == "argmax":
                                    m.next = "TOKW"
                                else:
                                    m.next = "IDLE"

            # ---------------------------------------------------- serial phases
            if "softmax" in units or "layernorm" in units:
                with m.State("DIV_LOAD"):
                    steps_of = {DIV_SOFTMAX: VEC_DIV_STEPS["softmax"], DIV_MEAN: VEC_DIV_STEPS["mean"],
                                DIV_VAR: VEC_DIV_STEPS["var"], DIV_INV: VEC_DIV_STEPS["inv"]}
                    with m.Switch(div_sel):
                        with m.Case(DIV_SOFTMAX):
                            q = steps_of[DIV_SOFTMAX]
                            m.d.sync += [d_rem.eq((1 << 40) >> q), d_bits.eq(0), d_den.eq(sum_e)]
                        with m.Case(DIV_MEAN):
                            q = steps_of[DIV_MEAN]
                            neg = sum_x < 0
                            num = Mux(neg, -sum_x + n16 - 1, sum_x)[:50]
                            m.d.sync += [d_rem.eq(num >> q), d_bits.eq(num[:q] << (32 - q)),
                                         d_den.eq(n16), d_neg.eq(neg)]
                        with m.Case(DIV_VAR):
                            q = steps_of[DIV_VAR]
                            m.d.sync += [d_rem.eq(sum_v >> q), d_bits.eq(sum_v[:q] << (32 - q)),
                                         d_den.eq(n16)]
                        with m.Case(DIV_INV):
                            q = steps_of[DIV_INV]
                            low = (1 << 31) & ((1 << q) - 1)
                            m.d.sync += [d_rem.eq((1 << 31) >> q), d_bits.eq(low << (32 - q)),
                                         d_den.eq(std)]
                    m.d.sync += [d_cnt.eq(Array([C(steps_of[i] - 1, 6) for i in range(4)])[div_sel]),
                                 d_q.eq(0)]
                    m.next = "DIV"
                with m.State("DIV"):
                    rem2 = Cat(d_bits[31], d_rem)
                    ge = rem2 >= d_den
                    q_next = Cat(ge, d_q[:31])
                    m.d.sync += [d_rem.eq(Mux(ge, rem2 - d_den, rem2)), d_q.eq(q_next),
                                 d_bits.eq(d_bits << 1), d_cnt.eq(d_cnt - 1)]
                    with m.If(d_cnt == 0):
                        with m.Switch(div_sel):
                            with m.Case(DIV_SOFTMAX):
                                m.d.sync += f.eq(q_next[:VEC_DIV_STEPS["softmax"]])
                                enter_pass("softmax_out", Mux(n_valid > ins.count1, n_valid, ins.count1),
                                           n_valid)
                            with m.Case(DIV_MEAN):
                                m.d.sync += mean.eq(Mux(d_neg, -q_next, q_next))
                                enter_pass("layernorm_var", n_valid, n_valid)
                            with m.Case(DIV_VAR):
                                m.d.sync += [sq_op.eq(q_next), sq_res.eq(0), sq_one.eq(1 << 30),
                                             sq_cnt.eq(VEC_SQRT_STEPS - 1)]
                                m.next = "SQRT"
                            with m.Case(DIV_INV):
                                m.d.sync += inv.eq(q_next)
                                enter_pass("layernorm_out", n_valid, n_valid)
                with m.State("SQRT"):
                    # Digit by digit: res ends as floor(sqrt(var)); one bit a cycle.
                    trial = sq_res + sq_one
                    take = sq_op >= trial
                    res_next = Mux(take, (sq_res >> 1) + sq_one, sq_res >> 1)
                    m.d.sync += [sq_op.eq(Mux(take, sq_op - trial, sq_op)), sq_res.eq(res_next),
                                 sq_one.eq(sq_one >> 2), sq_cnt.eq(sq_cnt - 1)]
                    with m.If(sq_cnt == 0):
                        m.d.sync += std.eq(Mux(res_next == 0, 1, res_next))
                        enter_div(DIV_INV)
            if "argmax" in units:
                with m.State("TOKW"):
                    m.d.comb += [self.tok_we.eq(1), self.tok_wdata.eq(best_idx)]
                    m.next = "IDLE"

            # ---------------------------------- EMBED, PUT_COL: one element a cycle
            if "embed" in units or "elementwise" in units:
                with m.State("ADDR"):
                    m.d.sync += a_cnt.eq(a_cnt + 1)
                    half_cycles = VEC_ADDR_SETUP_CYCLES // 2
                    with m.If(a_cnt < half_cycles):
                        for bits, rem, quo in ((t_bits, t_rem, t_q), (p_bits, p_rem, p_q)):
                            r2 = Cat(bits[15], rem)
                            ge = r2 >= cols
                            m.d.sync += [rem.eq(Mux(ge, r2 - cols, r2)), quo.eq(Cat(ge, quo[:15])),
                                         bits.eq(bits << 1)]
                    with m.Else():
                        for quo, off in ((t_q, t_off), (p_q, p_off)):
                            m.d.sync += [off.eq(off + Mux(quo[0], n_sh, 0)), quo.eq(quo >> 1)]
                        m.d.sync += n_sh.eq(n_sh << 1)
                    with m.If(a_cnt == VEC_ADDR_SETUP_CYCLES - 1):
                        m.next = "EMBED" if "embed" in units else "IDLE"
                        if "elementwise" in units:
                            with m.If(ins.tag == VecOp.PUT_COL):
                                m.next = "PUT"
            if "embed" in units:
                with m.State("EMBED"):
                    m.d.sync += e_left.eq(e_left - 1)
                    with m.If(e_left > 0):
                        m.d.comb += [self.sp_r0_en.eq(1), self.sp_r0_addr.eq(t_off),
                                     self.sp_r1_en.eq(1), self.sp_r1_addr.eq(p_off)]
                        m.d.sync += [t_off.eq(t_off + 1), p_off.eq(p_off + 1)]
                        m.d.sync += [e_read.valid.eq(1), e_read.lane.eq(e_lane),
                                     e_read.row.eq(e_row),
                                     e_read.last.eq((e_lane == cols - 1) | (e_left == 1))]
                        with m.If(e_lane == cols - 1):
                            m.d.sync += [e_lane.eq(0), e_row.eq(e_row + 1)]
                        with m.Else():
                            m.d.sync += e_lane.eq(e_lane + 1)
                    with m.If(e_left == -(2 + sp_late)):
                        m.next = "IDLE"
            if "elementwise" in units:
                with m.State("PUT"):
                    m.d.sync += e_left.eq(e_left - 1)
                    with m.If(e_left > 0):
                        m.d.comb += [self.sp_r0_en.eq(1), self.sp_r0_addr.eq(ins.addr0 + e_row),
                                     self.sp_r1_en.eq(1), self.sp_r1_addr.eq(p_off)]
                        m.d.sync += [p_read.valid.eq(1), p_read.lane.eq(e_lane),
                                     p_read.addr.eq(p_off), p_off.eq(p_off + 1)]
                        with m.If(e_lane == cols - 1):
                            m.d.sync += [e_lane.eq(0), e_row.eq(e_row + 1)]
                        with m.Else():
                            m.d.sync += e_lane.eq(e_lane + 1)
                    with m.If(e_left == -(1 + sp_late)):
                        m.next = "IDLE"

                with m.State("COPY"):
                    m.d.sync += e_left.eq(e_left - 1)
                    with m.If(e_left > 0):
                        src = t_off         # addr0, counted up (as EMBED's)
                        m.d.sync += t_off.eq(t_off + 1)
                        with m.If(ins.tag == VecOp.COPY_SP):
                            m.d.comb += [self.sp_r0_en.eq(1), self.sp_r0_addr.eq(src)]
                            m.d.sync += dst.eq(dst + ins.count1)
                        with m.Else():
                            m.d.comb += [self.acc_r_en.eq(1), self.acc_r_addr.eq(src)]
                            m.d.sync += dst.eq(dst + 1)
                        ahead = [(st.valid, st.addr) for st in c_stage] + [(cw, c_waddr)]
                        m.d.sync += [c_stage[0].valid.eq(1), c_stage[0].addr.eq(dst),
                                     c_stage[0].fwd.eq(Cat(*[v & (a == src) for v, a in ahead]))]
                    with m.If(e_left == -(1 + sp_late)):
                        m.next = "IDLE"
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m
