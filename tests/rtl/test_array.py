"""Amaranth-simulator tests of the PEs and the systolic array, against torch."""

import pytest
import torch
from amaranth.sim import Simulator

from rtl.array import SystolicArray
from rtl.pe import WeightStationaryPE, OutputStationaryPE, PRODUCT_STAGES


def _run(dut, testbench, *, deadline_cycles=10_000):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run_until(deadline_cycles * 1e-6)


def test_ws_pe_multiplies_with_the_swapped_in_weight():
    """Product of a_in and the weight at cycle t, plus psum_in at t+S, is psum_out at t+S+1
    (S = PRODUCT_STAGES)."""
    dut = WeightStationaryPE(input_width=8, acc_width=32)
    # (w_load, w_data, a_in, swap_in) at cycle t; psum_in given at t+S.
    beats = [(1, -7, 0, 0, 0), (0, 0, 5, 1, 100), (1, 3, -128, 0, 1), (0, 0, 127, 1, -5), (0, 0, 2, 0, 0)]
    seen = []

    async def bench(ctx):
        psums = [0] * PRODUCT_STAGES
        for t, (load, w, a, swap, psum) in enumerate(beats + [(0, 0, 0, 0, 0)] * 3):
            ctx.set(dut.w_load, load); ctx.set(dut.w_data, w)
            ctx.set(dut.a_in, a); ctx.set(dut.valid_in, 1); ctx.set(dut.swap_in, swap)
            psums.append(psum)
            ctx.set(dut.psum_in, psums.pop(0))
            await ctx.tick()
            seen.append(ctx.get(dut.psum_out))

    _run(dut, bench, deadline_cycles=30)
    # Beat 1 swaps in -7; beat 2 keeps it while 3 loads into the shadow; beat 3 swaps 3 in.
    s = PRODUCT_STAGES
    assert seen[1 + s:4 + s] == [100 + 5 * -7, 1 + -128 * -7, -5 + 127 * 3]
    assert seen[4 + s] == 0 + 2 * 3


def test_os_pe_accumulates_and_captures():
    dut = OutputStationaryPE(input_width=8, acc_width=32)
    seen = []

    async def bench(ctx):
        ctx.set(dut.valid_in, 1)
        for t, (a, b) in enumerate([(3, 4), (-128, -128), (127, -1)]):
            ctx.set(dut.a_in, a); ctx.set(dut.b_in, b)
            ctx.set(dut.first_in, t == 0); ctx.set(dut.last_in, t == 2)
            await ctx.tick()
        ctx.set(dut.valid_in, 0)
        await ctx.tick().repeat(PRODUCT_STAGES)
        seen.append(ctx.get(dut.result))
        ctx.set(dut.shift, 1); ctx.set(dut.result_in, 42)
        await ctx.tick()
        seen.append(ctx.get(dut.result))

    _run(dut, bench, deadline_cycles=20)
    assert seen == [12 + 16384 - 127, 42]


def _run_ws(rows, cols, tiles, *, iw=8, aw=32, weight_rows=1, lead=0, gap=0):
    """Stream the (W, A) tiles back to back, as close as the array allows: tile t's swap
    beat at s_t = s_(t-1) + max(beats, chunks) + gap, its weight chunk c presented at
    s_t - lead + c. Return the result rows (tag, c) in order."""
    dut = SystolicArray(rows, cols, dataflow="ws", input_width=iw, acc_width=aw, tag_width=16,
                        weight_rows=weight_rows)
    chunks = dut.weight_chunks
    beats, weights, s = {}, {}, 0
    for n, (w, a) in enumerate(tiles):
        for t in range(a.shape[0]):
            beats[s + t] = (t == 0, [int(x) for x in a[t]], t)
        for c in range(chunks):
            part = [[int(x) for x in w[r]] if r < rows else [0] * cols
                    for r in range(c * weight_rows, (c + 1) * weight_rows)]
            assert s - lead + c not in weights
            weights[s - lead + c] = (c, part)
        s += max(a.shape[0], chunks) + gap
    end = s + 4 * (rows + cols)
    out = []

    async def bench(ctx):
        for cycle in range(min(min(weights), 0), end):
            valid = cycle in beats
            swap, a, tag = beats.get(cycle, (0, [0] * rows, 0))
            ctx.set(dut.in_valid, valid); ctx.set(dut.in_swap, swap)
            ctx.set(dut.in_a, a); ctx.set(dut.in_tag, tag)
            chunk, part = weights.get(cycle, (0, [[0] * cols] * weight_rows))
            ctx.set(dut.w_load, cycle in weights); ctx.set(dut.w_chunk, chunk)
            ctx.set(dut.w_data, part)
            await ctx.tick()

    async def collect(ctx):
        async for _, _, valid, c, tag in ctx.tick().sample(dut.out_valid, dut.out_c, dut.out_tag):
            if valid:
                out.append((tag, [int(x) for x in c]))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.add_process(collect)
    sim.run_until((end - min(min(weights), 0) + 2) * 1e-6)
    return out


def _ws_tiles(rows, cols, ms, seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(-128, 128, (rows, cols), generator=g),
             torch.randint(-128, 128, (m, rows), generator=g)) for m in ms]


@pytest.mark.parametrize("rows,cols,weight_rows", [
    (1, 1, 1), (2, 2, 2), (3, 5, 2), (4, 8, 1), (4, 8, 2), (4, 8, 4), (5, 3, 4), (8, 8, 8)])
def test_ws_weight_wave_back_to_back(rows, cols, weight_rows):
    """Tiles of one beat start every max(1, chunks) cycles: each tile's weights, written
    as a wave behind the previous tile's swap, reach every PE in time."""
    tiles = _ws_tiles(rows, cols, (1, 1, 3, 1, 2, 1, 1), seed=rows * 100 + cols * 10 + weight_rows)
    out = _run_ws(rows, cols, tiles, weight_rows=weight_rows)
    assert [c for _, c in out] == [row for w, a in tiles for row in (a @ w).tolist()]


@pytest.mark.parametrize("weight_rows", [1, 2, 4])
def test_ws_weight_window_is_exactly_between_the_swaps(weight_rows):
    """Chunk 0 may come from one cycle after the previous tile's swap beat (lead = spacing
    - 1) up to the tile's own swap beat (lead = 0); one cycle more either way breaks."""
    rows, cols, m = 4, 3, 3
    tiles = _ws_tiles(rows, cols, (m,) * 4, seed=7 + weight_rows)
    expected = [row for w, a in tiles for row in (a @ w).tolist()]
    spacing = max(m, -(-rows // weight_rows))
    for lead in (0, spacing - 1):
        assert [c for _, c in _run_ws(rows, cols, tiles, weight_rows=weight_rows, lead=lead)] \
            == expected
    for lead in (-1, spacing):
        assert [c for _, c in _run_ws(rows, cols, tiles, weight_rows=weight_rows, lead=lead)] \
            != expected


@pytest.mark.parametrize("rows,cols", [(1, 1), (2, 2), (3, 5), (4, 8)])
def test_ws_array_matches_torch(rows, cols):
    g = torch.Generator().manual_seed(rows * 100 + cols)
    tiles = []
    for m in (1, 7):
        w = torch.randint(-128, 128, (rows, cols), generator=g)
        a = torch.randint(-128, 128, (m, rows), generator=g)
        tiles.append((w, a))
    out = _run_ws(rows, cols, tiles)
    expected = [row for w, a in tiles for row in (a @ w).tolist()]
    assert [c for _, c in out] == expected
    assert [t for t, _ in out] == [t for _, a in tiles for t in range(a.shape[0])]


def test_ws_array_extremes_16bit():
    rows, cols = 2, 3
    w = torch.full((rows, cols), -32768)
    a = torch.full((4, rows), -32768)
    out = _run_ws(rows, cols, [(w, a)], iw=16, aw=48)
    assert [c for _, c in out] == (a @ w).tolist()


def _run_os(rows, cols, tiles, *, spacing):
    dut = SystolicArray(rows, cols, dataflow="os", tag_width=16)
    out = []

    async def bench(ctx):
        for n, (a, b) in enumerate(tiles):          # a: rows x k, b: k x cols
            k = a.shape[1]
            for t in range(k):
                ctx.set(dut.in_valid, 1)
                ctx.set(dut.in_first, t == 0); ctx.set(dut.in_last, t == k - 1)
                ctx.set(dut.in_a, [int(x) for x in a[:, t]]); ctx.set(dut.in_b, [int(x) for x in b[t]])
                ctx.set(dut.in_tag, n)
                await ctx.tick()
            ctx.set(dut.in_valid, 0)
            if spacing > k:
                await ctx.tick().repeat(spacing - k)

    async def collect(ctx):
        async for _, _, valid, c, row, tag in ctx.tick().sample(dut.out_valid, dut.out_c, dut.out_row, dut.out_tag):
            if valid:
                out.append((tag, row, [int(x) for x in c]))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.add_process(collect)
    sim.run_until((sum(a.shape[1] + spacing for a, _ in tiles) + 4 * (rows + cols)) * 1e-6)
    return dut, out


@pytest.mark.parametrize("rows,cols", [(1, 1), (2, 2), (4, 3), (3, 4)])
def test_os_array_matches_torch(rows, cols):
    g = torch.Generator().manual_seed(rows * 10 + cols)
    tiles = [(torch.randint(-128, 128, (rows, k), generator=g),
              torch.randint(-128, 128, (k, cols), generator=g)) for k in (1, 9, 2 * rows + cols + 3)]
    spacing = 2 * rows + cols - 1
    dut, out = _run_os(rows, cols, tiles, spacing=spacing)
    assert dut.os_spacing == spacing
    got = {}
    for tag, row, c in out:
        got.setdefault(tag, {})[row] = c
    for n, (a, b) in enumerate(tiles):
        c = (a @ b).tolist()
        assert [got[n][r] for r in range(rows)] == c
    # Bottom row first, one row a cycle.
    assert [row for tag, row, _ in out if tag == 0] == list(reversed(range(rows)))
