"""The requantizer against a torch integer reference of rtl/isa.py's formula."""

import pytest
import torch
from amaranth.sim import Simulator

from rtl.requant import Requantizer


def torch_requant(acc, bias, mult, shift, input_width):
    """Round half up (towards +inf), then saturate; exact.

    torch int64 for acc_width <= 32; wider accumulators times a 16-bit multiplier
    can pass 2**63, so those lanes are done with Python integers."""
    lo, hi = -(1 << (input_width - 1)), (1 << (input_width - 1)) - 1
    x = acc.to(torch.int64) + bias.to(torch.int64)
    if int(x.abs().max()) < (1 << 46) and shift < 62:
        y = torch.div(x * mult + ((1 << shift) >> 1), 1 << shift, rounding_mode="floor")
        return y.clamp(lo, hi)
    y = [(v * mult + ((1 << shift) >> 1)) >> shift for v in x.tolist()]
    return torch.tensor([min(max(v, lo), hi) for v in y])


def run_lanes(dut, lanes, biases, *, add_bias, mult, shift):
    got = []

    async def bench(ctx):
        ctx.set(dut.add_bias, add_bias); ctx.set(dut.mult, mult); ctx.set(dut.shift, shift)
        for a, b in zip(lanes, biases):
            ctx.set(dut.in_valid, 1); ctx.set(dut.in_acc, a); ctx.set(dut.in_bias, b)
            await ctx.tick()
            if ctx.get(dut.out_valid):
                got.append((ctx.get(dut.out_raw), ctx.get(dut.out_q)))
        ctx.set(dut.in_valid, 0)
        for _ in range(Requantizer.LATENCY):
            await ctx.tick()
            if ctx.get(dut.out_valid):
                got.append((ctx.get(dut.out_raw), ctx.get(dut.out_q)))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return got


@pytest.mark.parametrize("input_width,acc_width,multiplier",
                         [(8, 32, "generic"), (4, 16, "generic"), (16, 48, "generic"),
                          (8, 32, "ecp5-model"), (16, 48, "ecp5-model")])
@pytest.mark.parametrize("mult,shift", [(1, 0), (40000, 20), (65535, 63), (12345, 1), (3, 7)])
def test_requantizer_matches_torch(input_width, acc_width, multiplier, mult, shift):
    """Against torch; ``ecp5-model`` puts MULT18X18D's model in the pieces' multipliers."""
    g = torch.Generator().manual_seed(mult + shift + input_width)
    lo, hi = -(1 << (acc_width - 1)), (1 << (acc_width - 1)) - 1
    acc = torch.cat([torch.randint(lo, hi, (24,), generator=g),
                     torch.tensor([lo, hi, 0, -1, 1, (1 << shift) >> 1, -((1 << shift) >> 1)])])
    acc = acc.clamp(lo, hi)
    bias = torch.randint(lo, hi, acc.shape, generator=g)
    bias[-7:] = torch.tensor([lo, hi, 0, 0, 0, 0, 0])
    for add_bias in (0, 1):
        dut = Requantizer(input_width=input_width, acc_width=acc_width, multiplier=multiplier)
        got = run_lanes(dut, acc.tolist(), bias.tolist(), add_bias=add_bias, mult=mult, shift=shift)
        b = bias if add_bias else torch.zeros_like(bias)
        q = torch_requant(acc, b, mult, shift, input_width)
        raw = (acc.to(torch.int64) + b)
        raw = ((raw - lo) % (1 << acc_width)) + lo      # wraps like int32 addition
        assert [x for x, _ in got] == raw.tolist()
        assert [y for _, y in got] == q.tolist()


def test_requantizer_rounds_half_up():
    dut = Requantizer()
    # 5/2 = 2.5 -> 3, -5/2 = -2.5 -> -2, 3/2 = 1.5 -> 2, -3/2 -> -1
    got = run_lanes(dut, [5, -5, 3, -3, 1000, -1000], [0] * 6, add_bias=0, mult=1, shift=1)
    assert [q for _, q in got] == [3, -2, 2, -1, 127, -128]
