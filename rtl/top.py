"""The Accelerator top: host byte streams in and out, controller, array, memories.

PLACEHOLDER while the controller lands: it echoes every input byte through
a one-byte register (so it has the final ``clk``/``rst`` ports). The
signature is final: ``i`` takes the host's bytes (instructions and payloads,
see ``rtl/isa.py``), ``o`` gives the replies.
"""

from amaranth import *
from amaranth.lib import wiring, stream
from amaranth.lib.wiring import In, Out

from .isa import Geometry

__all__ = ["Accelerator"]


class Accelerator(wiring.Component):
    def __init__(self, geometry: Geometry):
        if not isinstance(geometry, Geometry):
            raise TypeError(f"geometry must be an rtl.isa.Geometry, not {geometry!r}")
        self.geometry = geometry
        super().__init__({
            "i": In(stream.Signature(8)),
            "o": Out(stream.Signature(8)),
        })

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [self.o.payload.eq(self.i.payload), self.o.valid.eq(1)]
        return m
