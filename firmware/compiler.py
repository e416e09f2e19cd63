"""Compile an integer matmul into a :class:`~firmware.program.Program`.

``C[M, N] = A[M, K] @ B[K, N]`` (plus an optional bias per column, optionally
requantized) is cut into pieces that the array takes in one MATMUL each, as
``rtl/isa.py`` describes the dataflows:

* weight-stationary (WS): a B tile is ``k <= rows`` scratchpad rows of ``cols``
  lanes; an A piece is ``m`` scratchpad rows of ``k`` lanes, ``m`` as large as
  the accumulator allows (a larger ``m`` spreads the cost of loading the
  weights over more rows); K tiles accumulate with ``Flags.ACCUMULATE``.
* output-stationary (OS): an A piece is A transposed, ``k`` rows of
  ``m <= rows`` lanes; a B tile is ``k`` rows of ``cols`` lanes; ``k`` is all of
  K when it fits in the scratchpad.

Operands are loaded in blocks: a block of M units (all of their K pieces) and a
block of N tiles share the scratchpad; whichever block is reused across the
other loop stays resident, and the block sizes and loop order are chosen to
load the fewest bytes (an estimate of cycles, see :func:`_estimate`). When not
even one unit and one tile fit, pieces are streamed and reloaded per MATMUL.
"""

from dataclasses import dataclass
import math

import numpy as np

from rtl.isa import Geometry, Instruction, Opcode, Flags, HOST_FETCH_CYCLES
from .packing import pack_rows, pack_acc_lanes, signed_range
from .program import Program, Placement

__all__ = ["compile_matmul", "Plan", "plan_matmul", "DEFAULT_SYNC_TAG", "k_loop"]

DEFAULT_SYNC_TAG = 0xA5
MAX_K_LOOP = 256    # tiles one MATMUL's K loop runs (tag = R - 1 is 8 bits)


def k_loop(g: Geometry, *, a_row, a_step, b_row, acc_row, m, K, accumulate=False) -> list:
    """WS MATMULs for ``acc[acc_row : acc_row + m] (+)= A @ B`` over all of ``K``: K is cut
    into pieces of ``rows``; piece p's A rows start at ``a_row + p * a_step``, its B rows
    (k of them) at ``b_row + p * rows``. The full pieces go in K loops (rtl/isa.py: tag, mult)
    of up to 256 tiles, a short last piece in a MATMUL of its own. ``accumulate``: the
    first piece adds to the accumulator rows too."""
    R = g.rows
    full, rest = divmod(K, R)
    words = []
    for p in range(0, full, MAX_K_LOOP):
        reps = min(full - p, MAX_K_LOOP)
        words.append(Instruction(Opcode.MATMUL, flags=Flags.ACCUMULATE if accumulate or p else 0,
                                 addr0=a_row + p * a_step, addr1=b_row + p * R, addr2=acc_row,
                                 count0=m, count1=R, tag=reps - 1,
                                 mult=a_step if reps > 1 else 0))
    if rest:
        words.append(Instruction(Opcode.MATMUL,
                                 flags=Flags.ACCUMULATE if accumulate or full else 0,
                                 addr0=a_row + full * a_step, addr1=b_row + full * R,
                                 addr2=acc_row, count0=m, count1=rest))
    return words


@dataclass(frozen=True)
class Plan:
    """How a matmul is cut. ``unit_rows`` is the M rows of one MATMUL; ``segments`` are
    (k0, k) slices of K, one MATMUL each per (unit, tile); ``units_per_block`` and
    ``tiles_per_block`` are the resident operand blocks; ``order`` is "m" when M blocks are
    the outer loop, "n" when N blocks are; ``streaming`` reloads both pieces per MATMUL."""
    dataflow: str
    unit_rows: int
    segments: tuple
    units_per_block: int
    tiles_per_block: int
    order: str
    streaming: bool = False


def _segments(total, size):
    return tuple((k0, min(size, total - k0)) for k0 in range(0, total, size))


def _a_unit_stride(g: Geometry, plan_unit_rows, segments):
    # Scratchpad rows of all the K pieces of one M unit.
    if g.dataflow == "ws":
        return plan_unit_rows * len(segments)
    return sum(k for _, k in segments)


def _estimate(g: Geometry, M, K, N, plan: Plan) -> int:
    """Cycles to choose among plans, after ``firmware/cycles.py``: loads are serial at one
    byte a cycle (16 per instruction word); the engine runs each (unit, tile)'s MATMULs back
    to back, a MATMUL taking the longest of its fetch, its beats and (WS) its weight load
    plus the guard; every run is charged a drain (an overestimate now that outputs are
    batched between drains, the same for every plan with the same unit). Stores are the
    same for every plan and left out. It only ranks plans; the cycle model is the measure."""
    units = math.ceil(M / plan.unit_rows)
    tiles = math.ceil(N / g.cols)
    m_blocks = math.ceil(units / plan.units_per_block)
    n_blocks = math.ceil(tiles / plan.tiles_per_block)
    a_rows = M * len(plan.segments) if g.dataflow == "ws" else units * K
    b_rows = tiles * K
    if plan.streaming:
        a_loaded, b_loaded = a_rows * tiles, b_rows * units
        loads = 2 * units * tiles * len(plan.segments)
    elif plan.order == "m":
        a_loaded = a_rows
        b_loaded = b_rows * (1 if n_blocks == 1 else m_blocks)
        loads = m_blocks * units + (tiles if n_blocks == 1 else m_blocks * tiles)
    else:
        b_loaded = b_rows
        a_loaded = a_rows * (1 if m_blocks == 1 else n_blocks)
        loads = n_blocks * tiles + (units if m_blocks == 1 else n_blocks * units)
    fetch = HOST_FETCH_CYCLES + 1
    R, C = g.rows, g.cols
    m = min(plan.unit_rows, M)
    if g.dataflow == "ws":
        run = sum(max(fetch, m, k + R + C + 2) for _, k in plan.segments)
        run += plan.segments[0][1] + 2 + R + C + 1
    else:
        run = sum(max(fetch, k, 2 * R + C - 1) for _, k in plan.segments) + 2 * R + C + 1
    return (a_loaded + b_loaded) * g.sp_row_bytes + fetch * loads + run * units * tiles


def plan_matmul(g: Geometry, M: int, K: int, N: int) -> Plan:
    """The cheapest plan (by :func:`_estimate`) that fits the scratchpad and accumulator."""
    S, D = g.sp_depth, g.acc_depth
    tiles = math.ceil(N / g.cols)
    if g.dataflow == "ws":
        segments = _segments(K, g.rows)
        limit = min(M, D)
        unit_choices = {limit} | {math.ceil(M / j) for j in range(1, 9)} | \
            {1 << p for p in range(16) if (1 << p) <= limit}
        unit_choices = {u for u in unit_choices if 1 <= u <= limit}
    else:
        segments = _segments(K, K)
        unit_choices = {min(M, g.rows)}
    best = None
    for unit_rows in sorted(unit_choices):
        units = math.ceil(M / unit_rows)
        stride = _a_unit_stride(g, unit_rows, segments)
        per_block = sorted({units} | {1 << p for p in range(17) if (1 << p) < units})
        for units_per_block in per_block:
            room = S - units_per_block * stride
            if room < K:
                continue
            tiles_per_block = min(tiles, room // K)
            for order in ("m", "n"):
                plan = Plan(g.dataflow, unit_rows, segments, units_per_block, tiles_per_block, order)
                cost = _estimate(g, M, K, N, plan)
                if best is None or cost < best[0]:
                    best = (cost, plan)
    # Streaming: one A piece and one B piece in two fixed slots, reloaded per MATMUL. It wins
    # when the resident blocks would force tiny MATMULs (a small scratchpad, a long K).
    if g.dataflow == "ws":
        streams = [Plan("ws", u, segments, 1, 1, "m", streaming=True)
                   for u in unit_choices if u + g.rows <= S]
    else:
        streams = [Plan("os", min(M, g.rows), _segments(K, min(K, S // 2)), 1, 1, "m",
                        streaming=True)]
    for plan in streams:
        cost = _estimate(g, M, K, N, plan)
        if best is None or cost < best[0]:
            best = (cost, plan)
    return best[1]


def _as_int_matrix(name, value, width):
    array = np.asarray(value)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, not shape {array.shape}")
    if array.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, not {array.dtype}")
    if 0 in array.shape:
        raise ValueError(f"{name} must not be empty, not shape {array.shape}")
    low, high = signed_range(width)
    if array.min() < low or array.max() > high:
        raise ValueError(f"{name} must hold {width}-bit values {low}..{high}, "
                         f"not {array.min()}..{array.max()}")
    return array.astype(np.int64)


def compile_matmul(geometry: Geometry, a, b, bias=None, mult_shift=None, *,
                   tag: int = DEFAULT_SYNC_TAG) -> Program:
    """Program for ``a @ b (+ bias)``; raw ``acc_width`` results, or requantized to
    ``input_width`` with ``mult_shift = (mult, shift)`` (see ``rtl/isa.py``).

    ``a`` is M x K and ``b`` K x N integers of ``input_width`` bits; ``bias`` has N
    integers of ``acc_width`` bits. The program ends with ``SYNC tag``.
    """
    g = geometry
    a = _as_int_matrix("a", a, g.input_width)
    b = _as_int_matrix("b", b, g.input_width)
    M, K = a.shape
    if b.shape[0] != K:
        raise ValueError(f"a is {M}x{K} but b is {b.shape[0]}x{b.shape[1]}; "
                         f"b must have {K} rows")
    N = b.shape[1]
    if bias is not None:
        bias = np.asarray(bias)
        if bias.shape != (N,) or bias.dtype.kind not in "iu":
            raise ValueError(f"bias must be {N} integers, not shape {bias.shape} of {bias.dtype}")
        low, high = signed_range(g.acc_width)
        if bias.min() < low or bias.max() > high:
            raise ValueError(f"bias must hold {g.acc_width}-bit values {low}..{high}")
        bias = bias.astype(np.int64)
    store_flags, mult, shift = 0, 0, 0
    if mult_shift is not None:
        mult, shift = (int(v) for v in mult_shift)
        if not 0 <= mult < 1 << 16 or not 0 <= shift < 1 << 6:
            raise ValueError(f"mult must be 0..65535 and shift 0..63, not {mult}, {shift}")
        store_flags |= Flags.REQUANT
    if bias is not None:
        store_flags |= Flags.BIAS
    if not 0 <= tag < 256:
        raise ValueError(f"the SYNC tag must be 0..255, not {tag}")

    plan = plan_matmul(g, M, K, N)
    program = Program(g, result_shape=(M, N),
                      result_width=g.input_width if mult_shift is not None else g.acc_width)
    _Emitter(g, program, plan, a, b, bias, store_flags, mult, shift).run()
    program.add(Instruction(Opcode.SYNC, tag=tag))
    return program


class _Emitter:
    def __init__(self, g, program, plan, a, b, bias, store_flags, mult, shift):
        self.g, self.program, self.plan = g, program, plan
        self.a, self.b, self.bias = a, b, bias
        self.store_flags, self.mult, self.shift = store_flags, mult, shift
        M, K = a.shape
        N = b.shape[1]
        self.units = [(r, min(plan.unit_rows, M - r)) for r in range(0, M, plan.unit_rows)]
        self.tiles = [(c, min(g.cols, N - c)) for c in range(0, N, g.cols)]
        self.K = K
        self.a_stride = _a_unit_stride(g, plan.unit_rows, plan.segments)
        self.bias_tile = None

    # Pieces: the rows one MATMUL reads.
    def a_piece(self, unit, segment):
        (r0, m), (k0, k) = unit, segment
        block = self.a[r0:r0 + m, k0:k0 + k]
        return block if self.g.dataflow == "ws" else block.T

    def a_piece_offset(self, index, segment):
        return index * self.plan.unit_rows if self.g.dataflow == "ws" else segment[0]

    def b_piece(self, tile, segment):
        (c0, n), (k0, k) = tile, segment
        return self.b[k0:k0 + k, c0:c0 + n]

    def load(self, row, values):
        if len(values) == 0:
            return
        # LOAD_SP takes at most 65535 rows per instruction.
        for start in range(0, len(values), 0xFFFF):
            part = values[start:start + 0xFFFF]
            self.program.add(Instruction(Opcode.LOAD_SP, addr0=row + start, count0=len(part)),
                             pack_rows(part, self.g.input_width, self.g.sp_lanes))

    def load_a_block(self, units, base):
        for u, unit in enumerate(units):
            pieces = [self.a_piece(unit, s) for s in self.plan.segments]
            if self.g.dataflow == "ws" and unit[1] < self.plan.unit_rows and len(pieces) > 1:
                # A short last unit still occupies unit_rows per piece; load piece by piece.
                for i, (piece, s) in enumerate(zip(pieces, self.plan.segments)):
                    self.load(base + u * self.a_stride + self.a_piece_offset(i, s), piece)
            else:
                lanes = max(p.shape[1] for p in pieces)
                rows = np.concatenate([np.pad(p, ((0, 0), (0, lanes - p.shape[1])))
                                       for p in pieces])
                self.load(base + u * self.a_stride, rows)

    def load_b_block(self, tiles, base):
        for t, tile in enumerate(tiles):
            self.load(base + t * self.K, self.b[:, tile[0]:tile[0] + tile[1]])

    def matmul(self, unit, a_row, b_row, segment, accumulate, acc_row=0):
        m, k = unit[1], segment[1]
        flags = Flags.ACCUMULATE if accumulate else 0
        self.program.add(Instruction(Opcode.MATMUL, flags=flags, addr0=a_row, addr1=b_row,
                                     addr2=acc_row, count0=m, count1=k))

    def store(self, unit, tile, acc_row=0):
        g = self.g
        if self.bias is not None and self.bias_tile != tile:
            lanes = np.zeros(g.cols, dtype=np.int64)
            lanes[:tile[1]] = self.bias[tile[0]:tile[0] + tile[1]]
            self.program.add(Instruction(Opcode.SET_BIAS), pack_acc_lanes(lanes, g.acc_width))
            self.bias_tile = tile
        self.program.add(
            Instruction(Opcode.STORE, flags=self.store_flags, addr0=acc_row,
                        count0=unit[1], mult=self.mult, shift=self.shift),
            place=Placement(unit[0], tile[0], unit[1], tile[1]))

    def compute(self, units, unit_base, tiles, tile_base):
        # The MATMULs of as many (tile, unit) outputs as the accumulator holds go first and
        # their STOREs after, so the engine drains (and a STORE waits for it) once a batch,
        # not once an output: in OS, where an output is one rows x cols tile, that drain is
        # most of the overhead.
        rows = self.plan.unit_rows
        per_batch = max(1, self.g.acc_depth // rows)
        outputs = [(t, tile, u, unit) for t, tile in enumerate(tiles) for u, unit in enumerate(units)]
        for first in range(0, len(outputs), per_batch):
            batch = outputs[first:first + per_batch]
            for slot, (t, tile, u, unit) in enumerate(batch):
                if self.g.dataflow == "ws":
                    for ins in k_loop(self.g, a_row=unit_base + u * self.a_stride, a_step=rows,
                                      b_row=tile_base + t * self.K, acc_row=slot * rows,
                                      m=unit[1], K=self.K):
                        self.program.add(ins)
                    continue
                for i, segment in enumerate(self.plan.segments):
                    a_row = unit_base + u * self.a_stride + self.a_piece_offset(i, segment)
                    b_row = tile_base + t * self.K + segment[0]
                    self.matmul(unit, a_row, b_row, segment, accumulate=i > 0,
                                acc_row=slot * rows)
            for slot, (t, tile, u, unit) in enumerate(batch):
                self.store(unit, tile, acc_row=slot * rows)

    def run(self):
        plan = self.plan
        if plan.streaming:
            return self.run_streaming()
        u_per, t_per = plan.units_per_block, plan.tiles_per_block
        m_blocks = [self.units[i:i + u_per] for i in range(0, len(self.units), u_per)]
        n_blocks = [self.tiles[i:i + t_per] for i in range(0, len(self.tiles), t_per)]
        b_base, a_base = 0, t_per * self.K
        loaded_a = loaded_b = None
        outer, inner = (m_blocks, n_blocks) if plan.order == "m" else (n_blocks, m_blocks)
        for x in range(len(outer)):
            for y in range(len(inner)):
                mi, ni = (x, y) if plan.order == "m" else (y, x)
                if loaded_a != mi:
                    self.load_a_block(m_blocks[mi], a_base)
                    loaded_a = mi
                if loaded_b != ni:
                    self.load_b_block(n_blocks[ni], b_base)
                    loaded_b = ni
                self.compute(m_blocks[mi], a_base, n_blocks[ni], b_base)

    def run_streaming(self):
        plan = self.plan
        longest = max(k for _, k in plan.segments)
        b_row = 0
        a_row = longest  # B slot first: k rows; the A slot follows
        for tile in self.tiles:
            for unit in self.units:
                for i, segment in enumerate(plan.segments):
                    self.load(b_row, self.b_piece(tile, segment))
                    self.load(a_row, self.a_piece(unit, segment))
                    self.matmul(unit, a_row, b_row, segment, accumulate=i > 0)
                self.store(unit, tile)
