"""The vector unit (rtl/vector.py) against a torch integer reference of docs/intmath.md.

The reference below is written from docs/intmath.md alone (torch int64, no code
shared with rtl/ or firmware/). The testbench models the scratchpad and the
accumulator in Python as rtl/top.py builds them: synchronous reads whose data
holds while ``en`` is low, writes at the clock edge; a scratchpad read of the
row written in the same cycle returns the old row, an accumulator read the new
one (transparent). Every run checks, besides the data:

* the whole memory images after the instruction (nothing outside the result
  changed), and that every row the unit touched lies inside
  ``rtl.isa.footprint``;
* the cycle count against ``rtl.isa.vector_op_cycles``;
* that no port is driven outside ``busy``.

Realistic data (``test_realistic_*``): synthetic activations with the statistics
of a trained Transformer's (stated at each test), requantized with calibrated
scales; at least half of each unit's outputs are neither saturated nor zero.
"""

import math

import pytest
import torch
from amaranth.sim import Simulator

from rtl.intmath import IExp
from rtl.isa import (Geometry, Instruction, Opcode, VecOp, Flags, Param, NUM_PARAMS, UNITS,
                     SP_READ_LATENCY, footprint, vector_op_cycles, vector_rows)
from rtl.vector import VectorUnit


# ------------------------------------------------------------- torch reference

I32_MIN, I32_MAX = -2**31, 2**31 - 1


def rq(x, m, s, lo, hi):
    """Round half up, then saturate (docs/intmath.md). x, m: int64 tensors or ints."""
    x = torch.as_tensor(x, dtype=torch.int64)
    y = x * m if s == 0 else (x * m + (1 << (s - 1))) >> s
    return y.clamp(lo, hi)


def rq8(x, m, s):
    return rq(x, m, s, -128, 127)


def rq32(x, m, s):
    return rq(x, m, s, I32_MIN, I32_MAX)


def sat32(x):
    return x.clamp(I32_MIN, I32_MAX)


def sat16(x):
    return x.clamp(-2**15, 2**15 - 1)


def iexp(d):
    """d in [-32768, 0] (int64 tensor) -> e."""
    t = -d
    z = (t * 1477) >> 20
    r = t - z * 710
    big = (1385 - r) ** 2 + 1006157
    return torch.where(z < 32, big >> z.clamp(max=31), torch.zeros_like(big))


def igelu(q, b, c, one, mult, shift):
    q = q.to(torch.int64)
    a = torch.minimum(q.abs(), torch.tensor(-b))
    y = sat32(torch.sign(q) * (c - (a + b) ** 2))
    g = sat32(q * (y + one))
    return rq8(g, mult, shift)


def isoftmax(x, n, total, mult, shift):
    if n == 0:
        return torch.zeros(total, dtype=torch.int64)
    xs = rq32(x[:n], mult, shift)
    e = iexp((xs - xs.max()).clamp(min=-32768))
    f = (1 << 40) // int(e.sum())
    out = ((e * f + (1 << 32)) >> 33).clamp(max=127)
    return torch.cat([out, torch.zeros(total - n, dtype=torch.int64)])


def ilayernorm(x, gamma, beta, sh, mult, shift):
    n = len(x)
    mean = torch.div(x.sum(), n, rounding_mode="floor")
    ys = sat16((x - mean) >> sh)
    var = int((ys * ys).sum()) // n
    std = max(math.isqrt(var), 1)
    inv = (1 << 31) // std
    z = (ys * inv) >> 16
    return rq8(sat32(z * gamma + beta), mult, shift)


class Memories:
    """Scratchpad and accumulator images: int64 tensors [depth, lanes]."""

    def __init__(self, g, sp, acc):
        self.g, self.sp, self.acc = g, sp.clone(), acc.clone()

    def clone(self):
        return Memories(self.g, self.sp, self.acc)

    def vec(self, mem, base, n):
        cols = self.g.cols
        rows = vector_rows(n, cols)
        return getattr(self, mem)[base:base + rows, :cols].reshape(-1)[:n].clone()

    def put_vec(self, mem, base, values):
        cols = self.g.cols
        n = len(values)
        rows = vector_rows(n, cols)
        buf = torch.zeros(rows * cols, dtype=torch.int64)
        buf[:n] = values
        image = getattr(self, mem)
        image[base:base + rows] = 0
        image[base:base + rows, :cols] = buf.view(rows, cols)

    def column(self, base, v, n):
        """Entry v of the column table at ``base`` (n elements)."""
        cols = self.g.cols
        first = base + (v // cols) * n
        return self.sp[first:first + n, v % cols].clone()


def reference(g, ins, mems, pos=0, tok=0, params=(0,) * NUM_PARAMS):
    """Apply VEC ``ins``; returns (new Memories, TOK[POS+1] or None)."""
    out = mems.clone()
    op, n = VecOp(ins.tag), ins.count0
    rows = vector_rows(n, g.cols)
    perchan = bool(ins.flags & Flags.PERCHAN)
    if op == VecOp.REQ:
        m = (mems.vec("acc", ins.addr1, n) & 0xFFFF) if perchan else ins.mult
        out.put_vec("sp", ins.addr2, rq8(mems.vec("acc", ins.addr0, n), m, ins.shift))
    elif op == VecOp.ADD:
        m = (mems.vec("acc", ins.addr2, n) & 0xFFFF) if perchan else ins.mult
        x = mems.vec("acc", ins.addr0, n)
        out.put_vec("acc", ins.addr0, sat32(x + rq32(mems.vec("acc", ins.addr1, n), m, ins.shift)))
    elif op == VecOp.MUL:
        a, b = mems.vec("sp", ins.addr0, n), mems.vec("sp", ins.addr1, n)
        out.put_vec("sp", ins.addr2, rq8(a * b, ins.mult, ins.shift))
    elif op == VecOp.GELU:
        out.put_vec("sp", ins.addr2, igelu(mems.vec("sp", ins.addr0, n), params[Param.GELU_B],
                                           params[Param.GELU_C], params[Param.GELU_ONE],
                                           ins.mult, ins.shift))
    elif op == VecOp.SOFTMAX:
        valid = n + (pos if ins.flags & Flags.POS else 0)
        total = max(valid, ins.count1)
        out.put_vec("sp", ins.addr2, isoftmax(mems.vec("acc", ins.addr0, valid), valid, total,
                                              ins.mult, ins.shift))
    elif op == VecOp.LAYERNORM:
        if n:
            x = mems.vec("acc", ins.addr0, n)
            gamma = mems.vec("acc", ins.addr1, n)
            beta = mems.vec("acc", ins.addr1 + rows, n)
            out.put_vec("sp", ins.addr2, ilayernorm(x, gamma, beta, ins.count1 % 32,
                                                    ins.mult, ins.shift))
    elif op == VecOp.EMBED:
        x = mems.column(ins.addr0, tok, n) * ins.mult + mems.column(ins.addr1, pos, n) * ins.count1
        out.put_vec("acc", ins.addr2, sat32(x))
    elif op == VecOp.ARGMAX:
        x = mems.vec("acc", ins.addr0, n)
        return out, int((x == x.max()).nonzero()[0]) if n else 0
    elif op == VecOp.COPY_ACC:       # row by row, in order (overlaps see earlier rows)
        for r in range(n):
            out.acc[ins.addr2 + r] = out.acc[ins.addr0 + r]
    elif op == VecOp.COPY_SP:
        first = ins.addr1 + (pos if ins.flags & Flags.POS else 0)
        for r in range(n):
            out.sp[first + r * ins.count1] = out.sp[ins.addr0 + r]
    elif op == VecOp.PUT_COL:
        first = ins.addr1 + (pos // g.cols) * n
        out.sp[first:first + n, pos % g.cols] = mems.vec("sp", ins.addr0, n)
    return out, None


# ------------------------------------------------------------------ testbench

def _pack(row, width):
    value = 0
    for i, x in enumerate(row.tolist()):
        value |= (int(x) & ((1 << width) - 1)) << (i * width)
    return value


def _unpack(value, lanes, width):
    out = []
    for i in range(lanes):
        x = (value >> (i * width)) & ((1 << width) - 1)
        out.append(x - (1 << width) if x >> (width - 1) else x)
    return out


def run_ops(g, mems, jobs, multiplier="generic"):
    """Run VEC ``jobs`` one after another on one VectorUnit (its DSP multipliers of kind
    ``multiplier``); returns per job (Memories after it, TOK write or None, busy cycles).
    Each job is a dict: ins, and optionally pos, tok, params."""
    dut = VectorUnit(g, multiplier=multiplier)
    sp = [_pack(r, 8) for r in mems.sp]
    acc = [_pack(r, 32) for r in mems.acc]
    results = []
    ports = ["sp_r0", "sp_r1", "acc_r"]

    def touched_ok(job, memory, row):
        for mem, first, nrows in footprint(job["ins"], g, job.get("pos", 0), job.get("tok", 0)):
            if mem == memory and first <= row < first + nrows:
                return True
        return False

    async def bench(ctx):
        for job in jobs:
            ins = job["ins"]
            ctx.set(dut.instr, {name: getattr(ins, name) if name != "opcode" else ins.opcode
                                for name in ("opcode", "flags", "addr0", "addr1", "addr2", "count0",
                                             "count1", "mult", "shift", "tag", "reserved")})
            ctx.set(dut.pos, job.get("pos", 0))
            ctx.set(dut.tok, job.get("tok", 0))
            params = list(job.get("params", (0,) * NUM_PARAMS))
            ctx.set(dut.params, params)
            ctx.set(dut.start, 1)
            for p in ports + ["sp_w", "acc_w"]:
                assert not ctx.get(getattr(dut, p + "_en")), f"{p} driven in the start cycle"
            await ctx.tick()
            ctx.set(dut.start, 0)
            cycles, tok_write = 0, None
            arriving = []       # scratchpad rows in flight: [ticks left, port, value]
            while ctx.get(dut.busy):
                cycles += 1
                assert cycles < 200_000
                reads, reads_at = {}, {}
                for p in ports:
                    if ctx.get(getattr(dut, p + "_en")):
                        addr = ctx.get(getattr(dut, p + "_addr"))
                        memory = "acc" if p == "acc_r" else "sp"
                        assert touched_ok(job, memory, addr), f"{ins}: {p} reads row {addr}"
                        reads[p] = (acc if memory == "acc" else sp)[addr]
                        reads_at[p] = addr
                writes = []
                for p, image, memory in (("sp_w", sp, "sp"), ("acc_w", acc, "acc")):
                    if ctx.get(getattr(dut, p + "_en")):
                        addr = ctx.get(getattr(dut, p + "_addr"))
                        assert touched_ok(job, memory, addr), f"{ins}: {p} writes row {addr}"
                        writes.append((image, addr, ctx.get(getattr(dut, p + "_data"))))
                if ctx.get(dut.tok_we):
                    assert tok_write is None
                    tok_write = ctx.get(dut.tok_wdata)
                await ctx.tick()
                for image, addr, value in writes:
                    image[addr] = value
                # The accumulator's reads: one cycle, transparent. The scratchpad's: read
                # before write, on the port SP_READ_LATENCY cycles after the read.
                for p, value in reads.items():
                    if p == "acc_r":
                        ctx.set(dut.acc_r_data, acc[reads_at[p]])
                    else:
                        arriving.append([SP_READ_LATENCY, p, value])
                for row in arriving:
                    row[0] -= 1
                    if row[0] == 0:
                        ctx.set(getattr(dut, row[1] + "_data"), row[2])
                arriving = [row for row in arriving if row[0] > 0]
            for p in ports + ["sp_w", "acc_w"]:
                assert not ctx.get(getattr(dut, p + "_en")), f"{p} driven after busy"
            assert not ctx.get(dut.tok_we)
            after = Memories(g, torch.tensor([_unpack(r, g.sp_lanes, 8) for r in sp]),
                             torch.tensor([_unpack(r, g.cols, 32) for r in acc]))
            results.append((after, tok_write, cycles))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return results


def check_ops(g, mems, jobs, multiplier="generic"):
    """Run ``jobs`` on the RTL and the reference; compare memories, TOK and cycles."""
    got = run_ops(g, mems, jobs, multiplier)
    state = mems
    for job, (after, tok_write, cycles) in zip(jobs, got):
        expect, tok_expect = reference(g, job["ins"], state, job.get("pos", 0), job.get("tok", 0),
                                       job.get("params", (0,) * NUM_PARAMS))
        name = f"{VecOp(job['ins'].tag).name} {job['ins']} pos={job.get('pos', 0)}"
        assert torch.equal(after.sp, expect.sp), f"{name}: scratchpad differs"
        assert torch.equal(after.acc, expect.acc), f"{name}: accumulator differs"
        assert tok_write == tok_expect, f"{name}: TOK write {tok_write} != {tok_expect}"
        assert cycles == vector_op_cycles(job["ins"], g, job.get("pos", 0)), \
            f"{name}: {cycles} cycles, vector_op_cycles says " \
            f"{vector_op_cycles(job['ins'], g, job.get('pos', 0))}"
        state = after
    return got


def vec(op, **fields):
    return Instruction(Opcode.VEC, tag=op, **fields)


def random_acc(gen, shape, extreme=True):
    """int32 lanes: a mix of full-range, small and boundary values."""
    full = torch.randint(I32_MIN, I32_MAX + 1, shape, generator=gen, dtype=torch.int64)
    small = torch.randint(-3000, 3000, shape, generator=gen, dtype=torch.int64)
    pick = torch.randint(0, 4 if extreme else 2, shape, generator=gen)
    edge = torch.tensor([I32_MIN, I32_MAX, 0, -1])[torch.randint(0, 4, shape, generator=gen)]
    return torch.where(pick == 0, full, torch.where(pick == 1, small,
                       torch.where(pick == 2, edge, small * 1000)))


def random_memories(g, gen):
    sp = torch.randint(-128, 128, (g.sp_depth, g.sp_lanes), generator=gen, dtype=torch.int64)
    sp[::7] = torch.tensor([-128, 127])[torch.randint(0, 2, (g.sp_lanes,), generator=gen)]
    acc = random_acc(gen, (g.acc_depth, g.cols))
    return Memories(g, sp, acc)


GEOMETRIES = {
    "8x8_l1": Geometry(rows=4, cols=8, scratchpad_kib=1, accumulator_kib=2, units=UNITS),
    "8x8_l4": Geometry(rows=4, cols=8, scratchpad_kib=1, accumulator_kib=2, units=UNITS,
                       vector_lanes=4),
    # sp_lanes = 6 > cols = 5: scratchpad lanes past cols are written 0; cols not a power of 2.
    "8x8_l8": Geometry(rows=4, cols=8, scratchpad_kib=1, accumulator_kib=2, units=UNITS,
                       vector_lanes=8),
    "6x5_l5": Geometry(rows=6, cols=5, scratchpad_kib=0.5, accumulator_kib=1.25, units=UNITS,
                       vector_lanes=5),
    "6x5_l1": Geometry(rows=6, cols=5, scratchpad_kib=0.5, accumulator_kib=1.25, units=UNITS),
}


# ----------------------------------------------------------------------- tests

def test_iexp_every_input():
    """i-exp on every d in [-32768, 0], driven straight into its datapath."""
    dut = IExp()
    ts = list(range(0, 32769))
    got = []

    async def bench(ctx):
        for k in range(len(ts) + IExp.LATENCY):
            if k < len(ts):
                ctx.set(dut.t, ts[k])
            await ctx.tick()
            if k + 1 >= IExp.LATENCY:
                got.append(ctx.get(dut.e))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    expect = iexp(-torch.tensor(ts, dtype=torch.int64))
    assert torch.equal(torch.tensor(got[:len(ts)]), expect)


def test_gelu_every_input():
    """i-GELU on all 256 int8 inputs: calibrated parameters and extreme ones."""
    g = GEOMETRIES["8x8_l1"]
    gen = torch.Generator().manual_seed(3)
    mems = random_memories(g, gen)
    mems.put_vec("sp", 0, torch.arange(-128, 128))
    jobs = []
    s_in = 4.0 / 127                     # input scale: |x| <= 4
    s = s_in / math.sqrt(2)
    b = math.floor(-1.769 / s)
    c = one = math.floor(1 / (0.2888 * s * s))
    for params, mult, shift in [
        ((b, c, one), 40000, 31),
        ((b, c, one), 1, 0),
        ((-2**31, I32_MAX, I32_MAX), 65535, 40),
        ((-70000, -5, 2**30), 1234, 20),
        ((5, 100, -100), 3, 2),            # B > 0: a + B = 0
        ((-1, I32_MIN, I32_MIN), 65535, 63),
    ]:
        p = list(params) + [0] * (NUM_PARAMS - 3)
        jobs.append({"ins": vec(VecOp.GELU, addr0=0, addr2=40, count0=256, mult=mult, shift=shift),
                     "params": p})
    check_ops(g, mems, jobs)


def _elementwise_jobs(g, gen):
    cols = g.cols
    jobs = []
    for n in (0, 1, cols - 1, cols, 2 * cols + 3):
        for shift in (0, 17, 40):
            mult = int(torch.randint(0, 65536, (1,), generator=gen))
            jobs.append({"ins": vec(VecOp.REQ, addr0=2, addr2=30, count0=n, mult=mult, shift=shift)})
        jobs.append({"ins": vec(VecOp.REQ, flags=Flags.PERCHAN, addr0=5, addr1=9, addr2=33,
                                count0=n, shift=23)})
        jobs.append({"ins": vec(VecOp.ADD, addr0=1, addr1=6, count0=n, mult=30000, shift=14)})
        jobs.append({"ins": vec(VecOp.ADD, flags=Flags.PERCHAN, addr0=12, addr1=0, addr2=20,
                                count0=n, shift=3)})
        jobs.append({"ins": vec(VecOp.MUL, addr0=3, addr1=8, addr2=20, count0=n, mult=40000,
                                shift=int(torch.randint(0, 30, (1,), generator=gen)))})
    jobs.append({"ins": vec(VecOp.COPY_ACC, addr0=3, addr2=20, count0=5)})
    jobs.append({"ins": vec(VecOp.COPY_ACC, addr0=3, addr2=20, count0=0)})
    jobs.append({"ins": vec(VecOp.COPY_SP, addr0=1, addr1=40, count0=4, count1=3)})
    jobs.append({"ins": vec(VecOp.COPY_SP, flags=Flags.POS, addr0=1, addr1=40, count0=3,
                            count1=1), "pos": 7})
    for pos in (0, cols - 1, 3 * cols + 2):
        jobs.append({"ins": vec(VecOp.PUT_COL, addr0=2, addr1=10, count0=cols + 2), "pos": pos})
    jobs.append({"ins": vec(VecOp.PUT_COL, addr0=2, addr1=10, count0=0), "pos": 3})
    return jobs


@pytest.mark.parametrize("name", ["8x8_l1", "8x8_l4", "8x8_l8", "6x5_l5"])
def test_elementwise_random(name):
    g = GEOMETRIES[name]
    gen = torch.Generator().manual_seed(11)
    check_ops(g, random_memories(g, gen), _elementwise_jobs(g, gen))


def _softmax_jobs(g, gen):
    cols = g.cols
    jobs = []
    for n, total, pos, flags, mult, shift in [
        (0, 0, 0, 0, 1, 0),                    # nothing
        (0, 2 * cols + 1, 0, 0, 1, 0),         # fully masked row, zero padded
        (1, cols, 0, 0, 1, 0),
        (cols + 3, 0, 0, 0, 1, 0),
        (2, 3 * cols, 5, Flags.POS, 1, 3),     # causal: n = 2 + POS
        (cols, cols + 1, 0, 0, 65535, 40),
        (2 * cols + 1, 0, 0, 0, 12345, 20),
        (0, 4, 2 * cols, Flags.POS, 3, 1),     # count0 = 0, all from POS
    ]:
        jobs.append({"ins": vec(VecOp.SOFTMAX, flags=flags, addr0=2, addr2=20, count0=n,
                                count1=total, mult=mult, shift=shift), "pos": pos})
    return jobs


def _layernorm_jobs(g, gen, mems):
    cols = g.cols
    jobs = []
    for n, sh, mult, shift in [(1, 0, 1, 0), (cols, 4, 300, 20), (2 * cols + 3, 20, 65535, 63),
                               (cols - 1 or 1, 31, 5000, 25), (0, 0, 1, 0)]:
        jobs.append({"ins": vec(VecOp.LAYERNORM, addr0=1, addr1=8, addr2=30, count0=n, count1=sh,
                                mult=mult, shift=shift)})
    return jobs


@pytest.mark.parametrize("name", ["8x8_l1", "8x8_l4", "8x8_l8", "6x5_l5"])
def test_softmax_layernorm_argmax_random(name):
    g = GEOMETRIES[name]
    gen = torch.Generator().manual_seed(5)
    mems = random_memories(g, gen)
    # Rows that a softmax sees in practice too: small spread, ties, -inf-like masks.
    mems.acc[2] = torch.tensor([5, 5, -7, 5, 0, 1000, -1000, 3][:g.cols])
    jobs = _softmax_jobs(g, gen) + _layernorm_jobs(g, gen, mems)
    for n in (0, 1, g.cols, 2 * g.cols + 1):
        jobs.append({"ins": vec(VecOp.ARGMAX, addr0=2, count0=n), "pos": 4})
    mems.acc[12] = 7      # ties: the first index wins, within a lane cycle and across them
    mems.acc[13] = 7
    jobs.append({"ins": vec(VecOp.ARGMAX, addr0=12, count0=g.cols + 2)})
    mems.acc[14] = 3      # the max of a later lane cycle only ties the one found first
    mems.acc[14, min(2, g.cols - 1)] = 9
    mems.acc[15] = 9
    jobs.append({"ins": vec(VecOp.ARGMAX, addr0=14, count0=2 * g.cols)})
    check_ops(g, mems, jobs)


@pytest.mark.parametrize("name", ["8x8_l1", "6x5_l5"])
def test_embed_random(name):
    g = GEOMETRIES[name]
    gen = torch.Generator().manual_seed(9)
    jobs = []
    for n, tok, pos, mult, scale in [(g.cols, 3, 0, 65535, 65535), (2 * g.cols + 1, 2 * g.cols + 1, 1, 1, 0),
                                     (1, 0, g.cols, 777, 3), (0, 4, 2, 1, 1)]:
        jobs.append({"ins": vec(VecOp.EMBED, addr0=2, addr1=40, addr2=5, count0=n, count1=scale,
                                mult=mult), "pos": pos, "tok": tok})
    check_ops(g, random_memories(g, gen), jobs)


def test_layernorm_sqrt_and_mean_edges():
    """Constant rows (var = 0, std = 1), negative means, and the full int32 range."""
    g = GEOMETRIES["8x8_l1"]
    gen = torch.Generator().manual_seed(2)
    mems = random_memories(g, gen)
    mems.acc[0:2] = -5                           # constant: var 0
    mems.acc[2:4] = torch.tensor([I32_MIN, I32_MAX] * 8).view(2, 8)
    mems.acc[4:6] = -torch.arange(16).view(2, 8) * 1_000_003 - 7   # negative mean, not exact
    # One outlier in 40: z = 6.2 * 2**15 is wider than 18 bits, so z * G takes each
    # branch (G narrow, G wide: saturated) with the full-range gammas at row 10.
    mems.acc[20:25] = 3
    mems.acc[22, 5] = 30_000
    mems.acc[15:20] = torch.randint(-1000, 1000, (5, 8), generator=gen)   # beta of n = 40
    jobs = [{"ins": vec(VecOp.LAYERNORM, addr0=a, addr1=10, addr2=30, count0=n, count1=sh,
                        mult=7000, shift=22)}
            for a, n, sh in [(0, 16, 0), (2, 16, 31), (2, 13, 0), (4, 16, 3), (4, 11, 17),
                             (20, 40, 0), (20, 40, 5)]]
    # int32 results in full: mult / 2**shift = 2**-25 keeps saturated sums inside int8.
    jobs.append({"ins": vec(VecOp.LAYERNORM, addr0=20, addr1=10, addr2=30, count0=40,
                            mult=1, shift=25)})
    check_ops(g, mems, jobs)


# ------------------------------------------------------------ realistic data

def _fraction_interior(values, lo=-128, hi=127):
    values = torch.as_tensor(values)
    return float(((values != 0) & (values != lo) & (values != hi)).float().mean())


def _mult_shift(ratio):
    """(mult, shift) with mult < 2**16 and mult / 2**shift ~ ratio."""
    shift = 0
    while ratio * 2 ** (shift + 1) < 65536 and shift < 63:
        shift += 1
    return int(round(ratio * 2 ** shift)), shift


def test_realistic_data():
    """Calibrated scales on synthetic Transformer activations, d_model = 64 (8 rows).

    * REQ: int32 GEMM outputs of int8 activations (N(0, 30)) and weights
      (N(0, 20)) over k = 64, scaled so that 4 sigma is 127.
    * ADD: a residual stream (N(0, 2**16)) plus a projection's output.
    * MUL: the GLU product of two int8 vectors (N(0, 40)), scaled to 4 sigma.
    * GELU: N(0, 1) pre-activations at input scale 4/127, output scale 4/127.
    * SOFTMAX: scaled dot products with N(0, 1) scores in fixed point 2**-12
      over 40 keys (count0 = 8 + POS = 32), causal by POS, padded to 64.
    * LAYERNORM: a residual row with two outlier channels (x 8), gamma around
      1.0 (2**8 fixed point), beta around 0 (N(0, 0.1) in the z*gamma scale),
      output at 4 sigma = 127.
    * EMBED: int8 token and position tables (N(0, 30)), token scale 2**8 and
      position scale 2**7 (the int32 residual stream's fixed point).
    * ARGMAX: logits = the GEMM outputs (int32).
    At least half of each unit's outputs are neither 0 nor saturated (ARGMAX
    has one output: it must equal torch.argmax of the logits).
    """
    g = Geometry(rows=4, cols=8, scratchpad_kib=2, accumulator_kib=2, units=UNITS)
    gen = torch.Generator().manual_seed(21)
    d, rows = 64, 8
    mems = random_memories(g, gen)
    # Accumulator rows: gemm 0, resid 8, scores 16, ln 24, gamma 32, beta 40, embed out 48.
    a = (torch.randn(d, 64, generator=gen) * 30).round().clamp(-127, 127)
    w = (torch.randn(64, generator=gen) * 20).round().clamp(-127, 127)
    gemm = (a @ w).to(torch.int64)
    mems.put_vec("acc", 0, gemm)
    mult_req, shift_req = _mult_shift(127 / (4 * float(gemm.float().std())))
    resid = (torch.randn(d, generator=gen) * 2**16).round().to(torch.int64)
    mems.put_vec("acc", 8, resid)
    scores = (torch.randn(d, generator=gen) * 2**12).round().to(torch.int64)
    mems.put_vec("acc", 16, scores)
    ln = torch.randn(d, generator=gen) * 2**12
    ln[3] *= 8
    ln[17] *= -8
    mems.put_vec("acc", 24, ln.round().to(torch.int64))
    gamma = ((1 + 0.1 * torch.randn(d, generator=gen)) * 2**8).round().to(torch.int64)
    beta = (0.1 * torch.randn(d, generator=gen) * 2**23).round().to(torch.int64)
    mems.put_vec("acc", 32, gamma)
    mems.put_vec("acc", 40, beta)
    # z ~ N(0, 2**15) units, times gamma 2**8: 4 sigma of z * gamma is 4 * 2**23.
    mult_ln, shift_ln = _mult_shift(127 / (4 * 2**23))
    # Scratchpad rows: glu 0 and 8, gelu input 16, outputs 24..63, tables 64 and 128.
    glu = (torch.randn(2 * d, generator=gen) * 40).round().clamp(-127, 127).to(torch.int64)
    mems.put_vec("sp", 0, glu[:d])
    mems.put_vec("sp", 8, glu[d:])
    mult_mul, shift_mul = _mult_shift(127 / (4 * 40 * 40))
    s_in = 4 / 127
    x = torch.randn(d, generator=gen)
    mems.put_vec("sp", 16, (x / s_in).round().clamp(-127, 127).to(torch.int64))
    s = s_in / math.sqrt(2)
    b = math.floor(-1.769 / s)
    c = one = math.floor(1 / (0.2888 * s * s))
    s_out = 4 / 127
    mult_gelu, shift_gelu = _mult_shift(s_in * 0.2888 * s * s / 2 / s_out)
    mems.sp[64:192, :g.cols] = (torch.randn(128, g.cols, generator=gen) * 30).round().clamp(-127, 127)
    params = [b, c, one] + [0] * (NUM_PARAMS - 3)
    jobs = [
        {"ins": vec(VecOp.REQ, addr0=0, addr2=24, count0=d, mult=mult_req, shift=shift_req)},
        {"ins": vec(VecOp.ADD, addr0=8, addr1=0, count0=d, mult=60000, shift=10)},
        {"ins": vec(VecOp.MUL, addr0=0, addr1=8, addr2=32, count0=d, mult=mult_mul, shift=shift_mul)},
        {"ins": vec(VecOp.GELU, addr0=16, addr2=40, count0=d, mult=mult_gelu, shift=shift_gelu),
         "params": params},
        # 2**-12 to 2**-10: x / 4 = x * 1 >> 2.
        {"ins": vec(VecOp.SOFTMAX, flags=Flags.POS, addr0=16, addr2=48, count0=8, count1=d,
                    mult=1, shift=2), "pos": 32},
        {"ins": vec(VecOp.LAYERNORM, addr0=24, addr1=32, addr2=56, count0=d, count1=4,
                    mult=mult_ln, shift=shift_ln)},
        {"ins": vec(VecOp.EMBED, addr0=64, addr1=128, addr2=48, count0=d, count1=1 << 7,
                    mult=1 << 8), "pos": 5, "tok": 6},
        {"ins": vec(VecOp.ARGMAX, addr0=0, count0=d), "pos": 3},
    ]
    got = check_ops(g, mems, jobs)
    outs = {
        "REQ": got[0][0].vec("sp", 24, d),
        "ADD": got[1][0].vec("acc", 8, d) - resid,     # the requantized addend
        "MUL": got[2][0].vec("sp", 32, d),
        "GELU": got[3][0].vec("sp", 40, d),
        "SOFTMAX": got[4][0].vec("sp", 48, 8 + 32),     # the valid elements
        "LAYERNORM": got[5][0].vec("sp", 56, d),
        "EMBED": got[6][0].vec("acc", 48, d),
    }
    for unit, values in outs.items():
        if unit in ("ADD", "EMBED"):
            frac = _fraction_interior(values, I32_MIN, I32_MAX)
        else:
            frac = _fraction_interior(values)
        print(f"{unit}: {frac:.0%} of the outputs neither 0 nor saturated")
        assert frac >= 0.5, f"{unit}: only {frac:.0%} of the outputs are neither 0 nor saturated"
    assert got[7][1] == int(torch.argmax(gemm))


# ------------------------------------------------- builds and the timing contract

UNIT_OPS = {
    "elementwise": lambda n: [vec(VecOp.REQ, addr0=1, addr2=20, count0=n, mult=999, shift=9),
                              vec(VecOp.ADD, flags=Flags.PERCHAN, addr0=1, addr1=4, addr2=7,
                                  count0=n, shift=2),
                              vec(VecOp.MUL, addr0=1, addr1=4, addr2=24, count0=n, mult=5, shift=3),
                              vec(VecOp.COPY_ACC, addr0=1, addr2=10, count0=n),
                              vec(VecOp.COPY_SP, addr0=1, addr1=30, count0=n, count1=2),
                              vec(VecOp.PUT_COL, addr0=1, addr1=12, count0=n)],
    "gelu": lambda n: [vec(VecOp.GELU, addr0=1, addr2=20, count0=n, mult=20000, shift=30)],
    "softmax": lambda n: [vec(VecOp.SOFTMAX, flags=Flags.POS, addr0=1, addr2=20, count0=n,
                              count1=n + 3, mult=3, shift=1)],
    "layernorm": lambda n: [vec(VecOp.LAYERNORM, addr0=1, addr1=4, addr2=20, count0=n, count1=2,
                                mult=3000, shift=20)],
    "embed": lambda n: [vec(VecOp.EMBED, addr0=1, addr1=20, addr2=9, count0=n, count1=3, mult=7)],
    "argmax": lambda n: [vec(VecOp.ARGMAX, addr0=1, count0=n)],
}


def test_ecp5_dsp_models_in_every_multiplier():
    """The unit with MULT18X18D's behavioural model in each of its DSP multipliers (the
    primitive the ECP5 build instantiates, rtl/dsp.py): GELU over every input, then the
    elementwise, softmax, LayerNorm, argmax and EMBED jobs, against the reference, with
    the generic kind's cycle counts."""
    g = Geometry(rows=4, cols=8, scratchpad_kib=1, accumulator_kib=2, units=UNITS,
                 vector_lanes=2)
    gen = torch.Generator().manual_seed(21)
    mems = random_memories(g, gen)
    mems.put_vec("sp", 0, torch.arange(-128, 128))
    s_gelu = 4.0 / 127 / math.sqrt(2)
    b, c = math.floor(-1.769 / s_gelu), math.floor(1 / (0.2888 * s_gelu * s_gelu))
    jobs = [{"ins": vec(VecOp.GELU, addr0=0, addr2=40, count0=256, mult=m_, shift=sh),
             "params": list(p) + [0] * (NUM_PARAMS - 3)}
            for p, m_, sh in [((b, c, c), 40000, 31), ((-2**31, I32_MAX, I32_MAX), 65535, 40),
                              ((-1, I32_MIN, I32_MIN), 65535, 63)]]
    jobs += _elementwise_jobs(g, gen) + _softmax_jobs(g, gen) + _layernorm_jobs(g, gen, mems)
    jobs += [{"ins": vec(VecOp.ARGMAX, addr0=2, count0=n), "pos": 4} for n in (1, 2 * g.cols + 1)]
    jobs += [{"ins": vec(VecOp.EMBED, addr0=2, addr1=40, addr2=5, count0=n, count1=scale,
                         mult=mult), "pos": pos, "tok": tok}
             for n, tok, pos, mult, scale in [(g.cols, 3, 0, 65535, 65535), (1, 0, g.cols, 777, 3)]]
    check_ops(g, mems, jobs, multiplier="ecp5-model")


def test_ecp5_kind_instantiates_registered_dsps():
    """What the ECP5 build elaborates: per lane nine MULT18X18D, three with their input and
    output registers (GELU's square and q * (y + ONE)) and six with the output register
    only (LayerNorm's v * v / v * inv and z * G, the requantizer's pieces)."""
    from amaranth.back import rtlil
    g = Geometry(rows=2, cols=4, scratchpad_kib=0.25, accumulator_kib=1, units=UNITS,
                 vector_lanes=2)
    text = rtlil.convert(VectorUnit(g, multiplier="ecp5"), name="top")
    cells = text.split("cell \\MULT18X18D ")[1:]
    assert len(cells) == 9 * g.vector_lanes
    inputs = [cell.split("\n  end")[0].count('parameter \\REG_INPUTA_CLK "CLK0"') for cell in cells]
    assert sum(inputs) == 3 * g.vector_lanes
    assert all('parameter \\REG_OUTPUT_CLK "CLK0"' in cell.split("\n  end")[0] for cell in cells)


@pytest.mark.parametrize("unit", UNITS)
def test_one_unit_builds(unit):
    """A unit alone (hardware for the others left out) runs its ops."""
    g = Geometry(rows=2, cols=4, scratchpad_kib=0.25, accumulator_kib=1, units=(unit,),
                 vector_lanes=2)
    gen = torch.Generator().manual_seed(4)
    jobs = [{"ins": ins, "pos": 2, "tok": 3} for n in (0, 3, 6) for ins in UNIT_OPS[unit](n)]
    check_ops(g, random_memories(g, gen), jobs)


@pytest.mark.parametrize("lanes", [1, 2, 4])
def test_cycles_every_op_and_size(lanes):
    """vector_op_cycles against the RTL for every VecOp, n in 0..9 around cols = 4,
    POS in {0, 1, 6} (data checked as well)."""
    g = Geometry(rows=2, cols=4, scratchpad_kib=0.25, accumulator_kib=1, units=UNITS,
                 vector_lanes=lanes)
    gen = torch.Generator().manual_seed(lanes)
    jobs = []
    for n in (0, 1, 3, 4, 5, 9):
        pos = (0, 1, 6)[n % 3]
        for unit in UNITS:
            jobs += [{"ins": ins, "pos": pos, "tok": (n * 5) % 8} for ins in UNIT_OPS[unit](n)]
        jobs.append({"ins": vec(VecOp.REQ, flags=Flags.PERCHAN, addr0=1, addr1=4, addr2=20,
                                count0=n, shift=5), "pos": pos})
        jobs.append({"ins": vec(VecOp.ADD, addr0=1, addr1=4, count0=n, mult=77, shift=5)})
        jobs.append({"ins": vec(VecOp.SOFTMAX, addr0=1, addr2=20, count0=n, mult=3, shift=1),
                     "pos": pos})
    check_ops(g, random_memories(g, gen), jobs)


def test_overlapping_copies_go_in_order():
    """COPY_ACC and COPY_SP move rows in order: an overlapping copy sees the rows it
    wrote before (as the ISA interpreter does), strides 1 and 2, forwards and back. A
    row reads its source 1, 2 or 3 rows behind the row that writes it, every distance
    the copy pipeline forwards from (SP_READ_LATENCY + 1 rows)."""
    g = GEOMETRIES["8x8_l1"]
    gen = torch.Generator().manual_seed(8)
    jobs = [{"ins": vec(VecOp.COPY_ACC, addr0=a0, addr2=a2, count0=5)}
            for a0, a2 in [(3, 4), (3, 5), (3, 6), (6, 4), (3, 3)]]
    jobs += [{"ins": vec(VecOp.COPY_SP, addr0=a0, addr1=a1, count0=n, count1=stride)}
             for a0, a1, n, stride in [(3, 4, 5, 1), (3, 5, 5, 1), (3, 6, 5, 1), (6, 4, 5, 1),
                                       (3, 4, 7, 2), (3, 3, 5, 1), (10, 9, 5, 2)]]
    # Results overlapping an operand from below (or in place) see the operand as it was.
    jobs += [{"ins": vec(VecOp.GELU, addr0=5, addr2=3, count0=3 * g.cols + 1, mult=9, shift=4),
              "params": [-40, 1000, 1000] + [0] * (NUM_PARAMS - 3)},
             {"ins": vec(VecOp.MUL, addr0=9, addr1=8, addr2=8, count0=3 * g.cols, mult=9, shift=4)},
             {"ins": vec(VecOp.ADD, addr0=10, addr1=11, count0=3 * g.cols, mult=9, shift=4)},
             {"ins": vec(VecOp.ADD, flags=Flags.PERCHAN, addr0=10, addr1=10, addr2=12,
                         count0=2 * g.cols, shift=4)}]
    # Each copy on fresh random memories too: after the overlapping copies above, rows
    # a few apart hold equal data, and a missing forward would go unseen.
    for job in jobs:
        if job["ins"].tag in (VecOp.COPY_ACC, VecOp.COPY_SP):
            check_ops(g, random_memories(g, gen), [job])
    check_ops(g, random_memories(g, gen), jobs)


def _random_instruction(g, gen, pick):
    """A random VEC whose rows lie inside the memories (rtl.isa.footprint), with POS,
    TOK and params.

    Results never overlap an operand from above (the one case the unit leaves
    undefined, see rtl/vector.py): such draws are drawn again."""
    ri = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=gen))
    while True:
        op = VecOp(pick(list(VecOp)))
        n = pick([0, 1, ri(1, 3 * g.cols), ri(1, 3 * g.cols), ri(1, 3 * g.cols),
                  ri(1, 6 * g.cols)])
        top = min(g.sp_depth, g.acc_depth) - 1
        ins = vec(op, flags=ri(0, 31), addr0=ri(0, top), addr1=ri(0, top), addr2=ri(0, top),
                  count0=n, count1=pick([0, ri(0, 40), ri(0, 65535)]),
                  mult=pick([0, 1, ri(0, 65535), 65535]), shift=ri(0, 63))
        pos, tok = ri(0, 3 * g.cols), ri(0, 4 * g.cols)
        if op in (VecOp.GELU, VecOp.MUL, VecOp.ADD, VecOp.COPY_SP, VecOp.COPY_ACC):
            ins = Instruction(**{**ins.__dict__, "count1": min(ins.count1, 3)})
        ranges = [r for r in footprint(ins, g, pos, tok) if r[0] in ("sp", "acc")]
        if any(first + nrows > (g.sp_depth if mem == "sp" else g.acc_depth)
               for mem, first, nrows in ranges if nrows):
            continue
        rows = vector_rows(n, g.cols)
        result = {VecOp.REQ: ("sp", ins.addr2), VecOp.MUL: ("sp", ins.addr2),
                  VecOp.GELU: ("sp", ins.addr2), VecOp.ADD: ("acc", ins.addr0),
                  VecOp.EMBED: ("acc", ins.addr2)}.get(op)
        if result and any(mem == result[0] and first < result[1] < first + nrows
                          for mem, first, nrows in ranges if (mem, first) != result):
            continue                       # overlaps an operand from above
        if op == VecOp.PUT_COL:
            target = ins.addr1 + (pos // g.cols) * n
            if not (target + n <= ins.addr0 or ins.addr0 + rows <= target):
                continue
        params = [pick([ri(-300, 0), -2**31, ri(-2**31, 2**31 - 1)]),
                  pick([ri(0, 10**6), ri(-2**31, 2**31 - 1)]),
                  pick([ri(0, 10**6), ri(-2**31, 2**31 - 1)])] + [0] * (NUM_PARAMS - 3)
        return {"ins": ins, "pos": pos, "tok": tok, "params": params}


@pytest.mark.parametrize("name,seed", [("8x8_l4", 1), ("6x5_l1", 2), ("8x8_l1", 3)])
def test_random_instructions(name, seed):
    """Random legal VECs, one after another on the same memories."""
    g = GEOMETRIES[name]
    gen = torch.Generator().manual_seed(seed)
    pick = lambda items: items[int(torch.randint(0, len(items), (1,), generator=gen))]
    jobs = [_random_instruction(g, gen, pick) for _ in range(60)]
    check_ops(g, random_memories(g, gen), jobs)


def test_reference_agrees_with_the_isa_interpreter():
    """The torch reference above and firmware/functional.py (written apart from it)
    give the same memories and TOK on random VECs: two readings of docs/intmath.md."""
    import dataclasses
    from firmware.functional import FunctionalMachine
    for name, seed in (("8x8_l4", 7), ("6x5_l1", 8)):
        g = GEOMETRIES[name]
        gen = torch.Generator().manual_seed(seed)
        pick = lambda items: items[int(torch.randint(0, len(items), (1,), generator=gen))]
        mems = random_memories(g, gen)
        for _ in range(150):
            job = _random_instruction(g, gen, pick)
            machine = FunctionalMachine(dataclasses.replace(g, tokens=4 * g.cols + 2))
            machine.sp[:] = mems.sp.numpy()
            machine.acc[:] = mems.acc.numpy()
            machine.pos, machine.params = job["pos"], list(job["params"])
            machine.tok[job["pos"]] = job["tok"]
            machine.execute(job["ins"])
            expect, tok_write = reference(g, job["ins"], mems, job["pos"], job["tok"],
                                          job["params"])
            name_ = f"{VecOp(job['ins'].tag).name} {job}"
            assert (machine.sp == expect.sp.numpy()).all(), name_
            assert (machine.acc == expect.acc.numpy()).all(), name_
            if tok_write is not None:
                assert machine.tok[job["pos"] + 1] == tok_write, name_
            mems = expect
