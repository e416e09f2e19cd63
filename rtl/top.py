"""The Accelerator top: host byte streams in and out, controller, array, memories.

``i`` takes the host's bytes (instruction words and their payloads, see
``rtl/isa.py``); ``o`` gives the replies. A UART host link (``boards/``) or a
testbench drives these two streams.
"""

from amaranth import *
from amaranth.lib import wiring

from .isa import Geometry, SP_READ_LATENCY
from .array import SystolicArray
from .memory import BankedMemory
from .requant import Requantizer
from .controller import Controller, host_ports
from .vector import VectorUnit

__all__ = ["Accelerator"]


class Accelerator(wiring.Component):
    """Members
    -------
    i : In(stream.Signature(8))
    o : Out(stream.Signature(8))
    busy : Out(1)   the controller has work in flight (for a status LED)
    """

    def __init__(self, geometry: Geometry, *, multiplier="generic"):
        if not isinstance(geometry, Geometry):
            raise TypeError(f"geometry must be an rtl.isa.Geometry, not {geometry!r}")
        self.geometry = geometry
        # Every DSP multiplier's kind (rtl.dsp.KINDS): the PEs', the requantizer's and the
        # vector unit's; the timing is the same whichever it is.
        self.multiplier = multiplier
        super().__init__(host_ports())

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        m.submodules.scratchpad = scratchpad = BankedMemory(
            width=g.sp_lanes * g.input_width, depth=g.sp_depth, banks=g.sp_banks, read_ports=2,
            wide_ports=(1,) if g.dataflow == "ws" else (), latency=SP_READ_LATENCY)
        m.submodules.accumulator = accumulator = BankedMemory(
            width=g.cols * g.acc_width, depth=g.acc_depth, banks=g.banks, read_ports=1,
            transparent=True)
        m.submodules.array = array = SystolicArray(
            g.rows, g.cols, dataflow=g.dataflow, input_width=g.input_width,
            acc_width=g.acc_width, tag_width=33, multiplier=self.multiplier,
            weight_rows=min(g.sp_banks, g.rows) if g.dataflow == "ws" else 1)
        m.submodules.requantizer = requantizer = Requantizer(
            input_width=g.input_width, acc_width=g.acc_width, multiplier=self.multiplier)
        vector = None
        if g.units:
            m.submodules.vector = vector = VectorUnit(g, multiplier=self.multiplier)
        m.submodules.controller = controller = Controller(
            g, scratchpad=scratchpad, accumulator=accumulator, array=array,
            requantizer=requantizer, vector=vector)
        wiring.connect(m, wiring.flipped(self.i), controller.i)
        wiring.connect(m, controller.o, wiring.flipped(self.o))
        m.d.comb += self.busy.eq(controller.busy)
        return m
