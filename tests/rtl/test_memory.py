"""Banked memories: every bank reachable, reads one cycle late, transparency for read-modify-write."""

import gc
import warnings

import pytest
from amaranth.sim import Simulator

from rtl.memory import BankedMemory


@pytest.mark.parametrize("banks", [1, 2, 4])
def test_banked_memory_write_then_read_every_row(banks):
    depth = 16
    dut = BankedMemory(width=24, depth=depth, banks=banks, read_ports=2)
    seen = {0: [], 1: []}

    async def bench(ctx):
        for addr in range(depth):
            ctx.set(dut.w_en, 1); ctx.set(dut.w_addr, addr); ctx.set(dut.w_data, addr * 1000 + 7)
            await ctx.tick()
        ctx.set(dut.w_en, 0)
        for addr in range(depth):
            ctx.set(dut.r0_en, 1); ctx.set(dut.r0_addr, addr)
            ctx.set(dut.r1_en, 1); ctx.set(dut.r1_addr, depth - 1 - addr)
            await ctx.tick()
            seen[0].append(ctx.get(dut.r0_data)); seen[1].append(ctx.get(dut.r1_data))
        # With en low the data holds.
        ctx.set(dut.r0_en, 0)
        await ctx.tick()
        seen[0].append(ctx.get(dut.r0_data))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen[0] == [a * 1000 + 7 for a in range(depth)] + [(depth - 1) * 1000 + 7]
    assert seen[1] == [a * 1000 + 7 for a in reversed(range(depth))]


@pytest.mark.parametrize("banks", [1, 2, 4, 8])
def test_wide_port_reads_banks_consecutive_rows(banks):
    """A wide port returns rows addr .. addr + banks - 1 for every addr, aligned or not
    (rows past the end are garbage); its r_data is the row at addr."""
    depth = 24 if banks != 8 else 32
    dut = BankedMemory(width=16, depth=depth, banks=banks, read_ports=2, wide_ports=(1,))
    seen = []

    async def bench(ctx):
        for addr in range(depth):
            ctx.set(dut.w_en, 1); ctx.set(dut.w_addr, addr); ctx.set(dut.w_data, addr * 100 + 3)
            await ctx.tick()
        ctx.set(dut.w_en, 0)
        ctx.set(dut.r1_en, 1)
        for addr in range(depth):
            ctx.set(dut.r1_addr, addr)
            await ctx.tick()
            seen.append((ctx.get(dut.r1_data), [ctx.get(x) for x in dut.r1_rows]))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    for addr, (first, rows) in enumerate(seen):
        assert first == addr * 100 + 3
        valid = min(banks, depth - addr)
        assert rows[:valid] == [a * 100 + 3 for a in range(addr, addr + valid)]


def test_transparent_read_sees_the_write_of_the_same_cycle():
    dut = BankedMemory(width=8, depth=8, banks=2, read_ports=1, transparent=True)
    got = []

    async def bench(ctx):
        ctx.set(dut.w_en, 1); ctx.set(dut.w_addr, 3); ctx.set(dut.w_data, 42)
        ctx.set(dut.r0_en, 1); ctx.set(dut.r0_addr, 3)
        await ctx.tick()
        got.append(ctx.get(dut.r0_data))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == [42]


def test_bad_parameters_name_themselves():
    with warnings.catch_warnings():
        # The half-built objects are never elaborated; Amaranth says so when they are freed.
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="banks must be"):
            BankedMemory(width=8, depth=8, banks=3)
        with pytest.raises(ValueError, match="depth must be a positive multiple of banks"):
            BankedMemory(width=8, depth=6, banks=4)
        gc.collect()
