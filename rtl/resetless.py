"""Reset-less data registers.

Only control state (FSM states, valid flags, counters that gate writes) needs
the ``sync`` reset. Data registers are qualified by that state, and on an FPGA
every flip-flop starts at its init value when the device is configured anyway;
the reset only runs once more, when the PLL locks. Giving the data registers a
reset anyway made the reset synchronizer drive the LSR pin of 16,871 of the
default design's 19,013 flip-flops (HEAD 483e594): the most congested net of
its route, in fabric routing across the whole die, and a slice's two
flip-flops must share their LSR net, so reset and reset-less registers do not
pack together (docs/fpga.md).
"""

from amaranth import Signal

__all__ = ["data_reg", "data_signal"]


def data_signal(shape, **kwargs):
    """A reset-less ``Signal``: a data register (see the module docstring)."""
    return Signal(shape, reset_less=True, **kwargs)


def data_reg(m, out, value):
    """Register ``value`` into ``out`` through a reset-less register.

    ``out`` may be a port whose signal has a reset (a component's ``Out``
    member): the register is a reset-less signal of the same shape, and ``out``
    follows it combinationally.
    """
    reg = Signal.like(out, reset_less=True, name=f"{out.name}_reg")
    m.d.sync += reg.eq(value)
    m.d.comb += out.eq(reg)
    return reg
