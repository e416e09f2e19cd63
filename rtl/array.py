"""The systolic array: a rows x cols grid of PEs with input skew and output deskew.

Weight-stationary (``dataflow="ws"``): the array holds a weight tile
``W[rows, cols]``. One beat carries an activation row ``a[rows]``;
``latency`` cycles later the array gives ``c[j] = sum_i a[i] * W[i, j]``.
Weights are written into shadow registers (``w_load``) while the previous tile
streams; the beat with ``in_swap`` switches to them. They come ``weight_rows``
rows a cycle (a *chunk*: rows ``w_chunk * weight_rows`` on, from the
scratchpad's wide read) and travel as a diagonal wave, the way the swap beat
does: row ``i`` of chunk ``c`` is delayed ``i - c`` cycles and reaches PE
column ``j`` ``j`` cycles later still. A tile whose chunk ``c`` is presented
``c`` cycles after its first (``w0``) writes PE(i, j) in cycle
``w0 + i + j``; its swap beat, presented at ``s``, takes the shadow in cycle
``s + 1 + i + j``. So the write lands in time when ``w0 <= s``, and only
after the previous tile's swap took the old shadow when ``w0 > s_prev``: any
``w0`` in ``(s_prev, s]`` is safe for every PE at once, so a tile may start
every cycle. (``weight_rows = 1`` is the row-a-cycle load, with no row delays.)
Output-stationary (``dataflow="os"``): beat ``t`` carries the column ``a[rows]``
of ``A[:, t]`` and the row ``b[cols]`` of ``B[t, :]``; every PE accumulates its
``C[i, j]``. ``in_first`` starts a tile and ``in_last`` ends it; the finished
tile leaves the array ``latency`` cycles after the last beat, one row a
cycle, bottom row first (``out_row`` says which). Two last beats must be at
least ``os_spacing`` cycles apart so the result chain is free.

Both: ``in_tag`` travels with a beat (WS) or with the last beat (OS) and comes
out as ``out_tag`` beside the results it belongs to. ``multiplier`` picks every
PE's multiplier (a kind from :mod:`rtl.dsp`); all kinds have the same latency.
"""

import operator

from amaranth import *
from amaranth.lib import wiring, data
from amaranth.lib.wiring import In, Out

from .dsp import check_kind
from .pe import WeightStationaryPE, OutputStationaryPE, PRODUCT_STAGES

__all__ = ["SystolicArray"]


def _delay(m, signal, cycles, name, *, data=False):
    """``signal`` delayed by ``cycles`` registers (0: the signal itself); ``data``:
    reset-less registers (``rtl/resetless.py``), for values their flags qualify."""
    for n in range(cycles):
        reg = Signal.like(signal, name=f"{name}_d{n + 1}", reset_less=data)
        m.d.sync += reg.eq(signal)
        signal = reg
    return signal


def _taps(m, signal, cycles, name, *, data=False):
    """``[signal, signal delayed 1, ..., delayed cycles]``: one register chain."""
    taps = [signal]
    for n in range(cycles):
        reg = Signal.like(taps[-1], name=f"{name}_d{n + 1}", reset_less=data)
        m.d.sync += reg.eq(taps[-1])
        taps.append(reg)
    return taps


class SystolicArray(wiring.Component):
    """Members (WS)
    ------------
    in_valid, in_swap : In(1); in_a : In(ArrayLayout(signed(input_width), rows))
    in_tag : In(tag_width)
    w_load : In(1); w_chunk : In(range(ceil(rows / weight_rows)))
    w_data : In(ArrayLayout(ArrayLayout(signed(input_width), cols), weight_rows))
    out_valid : Out(1); out_c : Out(ArrayLayout(signed(acc_width), cols)); out_tag : Out(tag_width)

    Members (OS)
    ------------
    in_valid, in_first, in_last : In(1); in_a (rows lanes), in_b (cols lanes); in_tag
    out_valid, out_c, out_tag as above; out_row : Out(range(rows))
    """

    def __init__(self, rows, cols, *, dataflow="ws", input_width=8, acc_width=32, tag_width=1,
                 multiplier="generic", weight_rows=1):
        self.rows = operator.index(rows)
        self.cols = operator.index(cols)
        for name, value in (("rows", self.rows), ("cols", self.cols)):
            if not 1 <= value <= 64:
                raise ValueError(f"{name} must be from 1 to 64, not {value!r}")
        if dataflow not in ("ws", "os"):
            raise ValueError(f"dataflow must be 'ws' or 'os', not {dataflow!r}")
        self.dataflow = dataflow
        self.input_width = operator.index(input_width)
        self.acc_width = operator.index(acc_width)
        self.tag_width = operator.index(tag_width)
        self.weight_rows = operator.index(weight_rows)
        if not 1 <= self.weight_rows <= self.rows:
            raise ValueError(f"weight_rows must be from 1 to rows ({self.rows}), "
                             f"not {self.weight_rows!r}")
        self.weight_chunks = -(-self.rows // self.weight_rows)
        try:
            self.multiplier = check_kind(multiplier)
        except ValueError:
            self._MustUse__silence = True   # never built: no "never used" warning
            raise
        iw, aw = self.input_width, self.acc_width
        ports = {
            "in_valid": In(1),
            "in_a": In(data.ArrayLayout(signed(iw), self.rows)),
            "in_tag": In(self.tag_width),
            "out_valid": Out(1),
            "out_c": Out(data.ArrayLayout(signed(aw), self.cols)),
            "out_tag": Out(self.tag_width),
        }
        if dataflow == "ws":
            ports.update({
                "in_swap": In(1),
                "w_load": In(1),
                "w_chunk": In(range(self.weight_chunks)),
                "w_data": In(data.ArrayLayout(data.ArrayLayout(signed(iw), self.cols),
                                              self.weight_rows)),
            })
        else:
            ports.update({
                "in_b": In(data.ArrayLayout(signed(iw), self.cols)),
                "in_first": In(1),
                "in_last": In(1),
                "out_row": Out(range(self.rows)),
            })
        super().__init__(ports)

    # Inputs registered without a reset (rtl/resetless.py): in_valid qualifies them.
    _DATA_INPUTS = ("in_a", "in_tag", "in_b")

    @property
    def latency(self) -> int:
        """Cycles from a beat to its first result row (``Geometry.array_latency``):
        an input register, the skew, the PEs' product registers, the sum's path."""
        return self.rows + self.cols + PRODUCT_STAGES

    @property
    def os_spacing(self) -> int:
        """OS: the fewest cycles between two last beats (``Geometry.os_spacing``)."""
        return 2 * self.rows + self.cols - 1

    def elaborate(self, platform):
        m = self._elaborate_ws() if self.dataflow == "ws" else self._elaborate_os()
        return m

    def _registered_inputs(self, m):
        """Every input through one register: the scratchpad's read data comes
        straight from block RAM, and its clock-to-out would otherwise sit in
        front of the first multiplier."""
        names = ["in_valid", "in_a", "in_tag"] + (
            ["in_swap"] if self.dataflow == "ws" else ["in_b", "in_first", "in_last"])
        regs = {}
        for name in names:
            port = getattr(self, name)
            reg = Signal.like(port, name=f"{name}_r", reset_less=name in self._DATA_INPUTS)
            m.d.sync += reg.eq(port)
            regs[name] = reg
        return regs

    def _elaborate_ws(self):
        m = Module()
        rows, cols = self.rows, self.cols
        i_ = self._registered_inputs(m)
        pes = [[WeightStationaryPE(input_width=self.input_width, acc_width=self.acc_width,
                                   multiplier=self.multiplier)
                for _ in range(cols)] for _ in range(rows)]
        # The weight wave (module docstring): row i = c * W + o of chunk c reaches PE(i, j)
        # i - c + j cycles after it is presented. One delay line per signal, tapped.
        W = self.weight_rows
        delay = [i - i // W for i in range(rows)]
        load = _taps(m, self.w_load, max(delay) + cols - 1, "w_load")
        chunk = _taps(m, self.w_chunk, max(delay) + cols - 1, "w_chunk")
        lanes = {}
        for o in range(W):
            longest = max((delay[i] for i in range(o, rows, W)), default=0)
            for j in range(cols):
                lanes[o, j] = _taps(m, self.w_data[o][j], longest + j, f"w_data{o}_c{j}",
                                    data=True)
        for i in range(rows):
            a = _delay(m, i_["in_a"][i], i, f"skew_a{i}", data=True)
            valid = _delay(m, i_["in_valid"], i, f"skew_v{i}")
            swap = _delay(m, i_["in_swap"], i, f"skew_s{i}")
            for j in range(cols):
                pe = pes[i][j]
                m.submodules[f"pe_{i}_{j}"] = pe
                m.d.comb += [
                    pe.a_in.eq(a), pe.valid_in.eq(valid), pe.swap_in.eq(swap),
                    pe.psum_in.eq(pes[i - 1][j].psum_out if i else 0),
                    pe.w_load.eq(load[delay[i] + j] & (chunk[delay[i] + j] == i // W)),
                    pe.w_data.eq(lanes[i % W, j][delay[i] + j]),
                ]
                a, valid, swap = pe.a_out, pe.valid_out, pe.swap_out
        for j in range(cols):
            m.d.comb += self.out_c[j].eq(_delay(m, pes[rows - 1][j].psum_out, cols - 1 - j,
                                                f"deskew_c{j}", data=True))
        m.d.comb += [
            self.out_valid.eq(_delay(m, i_["in_valid"], self.latency - 1, "out_valid")),
            self.out_tag.eq(_delay(m, i_["in_tag"], self.latency - 1, "out_tag", data=True)),
        ]
        return m

    def _elaborate_os(self):
        m = Module()
        rows, cols = self.rows, self.cols
        i_ = self._registered_inputs(m)
        pes = [[OutputStationaryPE(input_width=self.input_width, acc_width=self.acc_width,
                                   multiplier=self.multiplier)
                for _ in range(cols)] for _ in range(rows)]
        shift = Signal()
        b_top = [_delay(m, i_["in_b"][j], j, f"skew_b{j}", data=True) for j in range(cols)]
        for i in range(rows):
            a = _delay(m, i_["in_a"][i], i, f"skew_a{i}", data=True)
            valid = _delay(m, i_["in_valid"], i, f"skew_v{i}")
            first = _delay(m, i_["in_first"], i, f"skew_f{i}")
            last = _delay(m, i_["in_last"], i, f"skew_l{i}")
            for j in range(cols):
                pe = pes[i][j]
                m.submodules[f"pe_{i}_{j}"] = pe
                m.d.comb += [
                    pe.a_in.eq(a), pe.valid_in.eq(valid),
                    pe.first_in.eq(first), pe.last_in.eq(last),
                    pe.b_in.eq(pes[i - 1][j].b_out if i else b_top[j]),
                    pe.shift.eq(shift),
                    pe.result_in.eq(pes[i - 1][j].result if i else 0),
                ]
                a, valid, first, last = pe.a_out, pe.valid_out, pe.first_out, pe.last_out

        # The last beat's results are all in place latency cycles after it.
        done = _delay(m, i_["in_valid"] & i_["in_last"], self.latency - 1, "done")
        done_tag = _delay(m, i_["in_tag"], self.latency - 1, "done_tag", data=True)
        remaining = Signal(range(rows + 1))
        held_tag = Signal(self.tag_width, reset_less=True)
        m.d.comb += shift.eq(done | (remaining != 0))
        with m.If(done):
            m.d.sync += [remaining.eq(rows - 1), held_tag.eq(done_tag)]
        with m.Elif(remaining != 0):
            m.d.sync += remaining.eq(remaining - 1)
        m.d.comb += [
            self.out_valid.eq(shift),
            self.out_row.eq(Mux(done, rows - 1, remaining - 1)),
            self.out_tag.eq(Mux(done, done_tag, held_tag)),
        ]
        for j in range(cols):
            m.d.comb += self.out_c[j].eq(pes[rows - 1][j].result)
        return m
