"""Stand-in accelerator cores for the host-link tests: same ``i``/``o`` byte streams."""

from amaranth import *
from amaranth.lib import wiring, stream
from amaranth.lib.wiring import In, Out


class EchoCore(wiring.Component):
    """Answers every byte with itself; ``stall`` holds ``i.ready`` low (a busy accelerator)."""
    i: In(stream.Signature(8))
    o: Out(stream.Signature(8))
    stall: In(1)

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.i.ready.eq((~self.o.valid | self.o.ready) & ~self.stall)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [self.o.payload.eq(self.i.payload), self.o.valid.eq(1)]
        return m
