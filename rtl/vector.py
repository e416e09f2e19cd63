"""The vector unit: every ``VecOp`` of a ``VEC`` instruction (``docs/intmath.md``).

The controller starts the unit with a one-cycle ``start`` pulse when the matmul
engine is idle and nothing else runs, and hands it the scratchpad and
accumulator ports for as long as ``busy`` is high. Bounds and unit presence are
the controller's checks: the unit assumes a legal instruction whose unit is
present.

Timing: ``busy`` is high from the cycle after ``start`` for exactly
``rtl.isa.vector_op_cycles(instr, geometry, pos)`` cycles (at least one), and
low otherwise. Every memory write and the ``tok_we`` pulse happen in a cycle in
which ``busy`` is high, so the instruction after it sees all its effects.
"""

import operator

from amaranth import *
from amaranth.lib import wiring, data
from amaranth.lib.wiring import In, Out

from .isa import Geometry, INSTRUCTION, NUM_PARAMS

__all__ = ["VectorUnit"]


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
    controller may OR them with its own or mux on ``busy``. Reads have one
    cycle of latency, and the unit relies on a read port's data *holding*
    while its ``en`` is low (as ``lib.memory`` read ports and ``BankedMemory``
    do): nothing else may read those ports while the unit is busy. The unit
    relies on no read-during-write behaviour of either memory.
    """

    def __init__(self, geometry: Geometry):
        if not isinstance(geometry, Geometry):
            raise TypeError(f"geometry must be an rtl.isa.Geometry, not {geometry!r}")
        if geometry.input_width != 8 or geometry.acc_width != 32:
            raise ValueError("the vector unit needs input_width = 8 and acc_width = 32, not "
                             f"{geometry.input_width} and {geometry.acc_width}")
        self.geometry = geometry
        self.lanes = operator.index(geometry.vector_lanes)
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
        # Skeleton: the interface is final; the datapath follows.
        m = Module()
        busy = Signal()
        m.d.sync += busy.eq(self.start)
        m.d.comb += self.busy.eq(busy)
        return m
