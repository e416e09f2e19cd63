"""Banked memories: every bank reachable, reads one (or two) cycles late, transparency for
read-modify-write."""

import gc
import random
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


@pytest.mark.parametrize("banks", [1, 2, 8])
def test_registered_reads_arrive_two_cycles_late_and_hold(banks):
    """latency=2 (the scratchpad): a read issued in cycle c is on the port from cycle
    c + 2 until the next read's row arrives, on the plain and the wide port alike; it
    sees the memory as it was before the writes of cycle c. Random reads, writes and
    idle cycles, against a model of the rows."""
    depth, width = 8 * banks, 16
    dut = BankedMemory(width=width, depth=depth, banks=banks, read_ports=2, wide_ports=(1,),
                       latency=2)
    rng = random.Random(banks)
    image = [rng.randrange(1 << width) for _ in range(depth)]
    mismatches = []

    async def bench(ctx):
        for addr, value in enumerate(image):
            ctx.set(dut.w_en, 1); ctx.set(dut.w_addr, addr); ctx.set(dut.w_data, value)
            await ctx.tick()
        model = list(image)
        # port -> [(cycle the row arrives, rows it returns)], and what the port shows now.
        flight = {0: [], 1: []}
        shown = {0: None, 1: None}
        for cycle in range(300):
            w = rng.random() < 0.5
            w_addr, w_data = rng.randrange(depth), rng.randrange(1 << width)
            ctx.set(dut.w_en, w); ctx.set(dut.w_addr, w_addr); ctx.set(dut.w_data, w_data)
            for n in (0, 1):
                en = rng.random() < 0.6
                addr = rng.randrange(depth)
                ctx.set(getattr(dut, f"r{n}_en"), en); ctx.set(getattr(dut, f"r{n}_addr"), addr)
                if en:
                    rows = [model[(addr + k) % depth] for k in range(banks if n else 1)]
                    flight[n].append((cycle + 2, addr, rows))
            if w:
                model[w_addr] = w_data
            await ctx.tick()
            for n in (0, 1):
                while flight[n] and flight[n][0][0] == cycle + 1:
                    shown[n] = flight[n].pop(0)
                if shown[n] is None:
                    continue
                _, addr, rows = shown[n]
                got = [ctx.get(getattr(dut, f"r{n}_data"))]
                if n:
                    got = [ctx.get(x) for x in dut.r1_rows]
                # The wide port's rows past the end are garbage.
                valid = min(len(rows), depth - addr)
                if got[:valid] != rows[:valid]:
                    mismatches.append((cycle + 1, n, addr, got, rows))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert not mismatches, mismatches[:3]


def test_bad_parameters_name_themselves():
    with warnings.catch_warnings():
        # The half-built objects are never elaborated; Amaranth says so when they are freed.
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="banks must be"):
            BankedMemory(width=8, depth=8, banks=3)
        with pytest.raises(ValueError, match="depth must be a positive multiple of banks"):
            BankedMemory(width=8, depth=6, banks=4)
        with pytest.raises(ValueError, match="latency must be 1 or 2"):
            BankedMemory(width=8, depth=8, latency=3)
        with pytest.raises(ValueError, match="transparent read .* needs latency 1"):
            BankedMemory(width=8, depth=8, transparent=True, latency=2)
        gc.collect()
