"""Drive an Accelerator's byte streams in the Amaranth simulator (test helper)."""

from amaranth.sim import Simulator


def run_stream(dut, program: bytes, reply_bytes: int, *, max_cycles=200_000):
    """Feed ``program`` with no gaps, always accept replies; return (reply, cycles).

    ``cycles`` counts clock edges from the first one that may accept a byte up to
    and including the one that transfers the last reply byte.
    """
    reply = bytearray()
    result = {}

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        n = 0
        cycle = 0
        while len(reply) < reply_bytes or n < len(program):
            if cycle > max_cycles:
                raise TimeoutError(f"no finish after {max_cycles} cycles: {len(reply)} of "
                                   f"{reply_bytes} reply bytes, {n} of {len(program)} sent")
            if n < len(program):
                ctx.set(dut.i.valid, 1)
                ctx.set(dut.i.payload, program[n])
            else:
                ctx.set(dut.i.valid, 0)
            in_ready = ctx.get(dut.i.ready)
            out_valid = ctx.get(dut.o.valid)
            out_byte = ctx.get(dut.o.payload)
            await ctx.tick()
            cycle += 1
            if n < len(program) and in_ready:
                n += 1
            if out_valid:
                reply.append(out_byte)
        result["cycles"] = cycle

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return bytes(reply), result["cycles"]
