"""cocotb test of the Accelerator top: compiled programs in, every reply byte checked.

The pytest side (tests/cocotb/test_accelerator.py) compiles the programs and
computes the expected replies with torch; it passes them in the JSON file named
by ``TANDEM_COCOTB_CASES`` and reads back what this test received from
``TANDEM_COCOTB_OUT``.
"""

import json
import os
import pathlib

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge
from cocotb.types import LogicArray

CASES = json.loads(pathlib.Path(os.environ["TANDEM_COCOTB_CASES"]).read_text())
OUT = pathlib.Path(os.environ["TANDEM_COCOTB_OUT"])
MAX_IDLE_CYCLES = 50_000


async def reset(dut):
    dut.rst.value = 1
    dut.i__valid.value = 0
    dut.i__payload.value = 0
    dut.o__ready.value = 1
    for _ in range(2):
        await RisingEdge(dut.clk)
    dut.rst.value = 0


async def collect(dut, expected_bytes: int, result: dict):
    """Take reply bytes (o.ready held high) until ``expected_bytes`` have come."""
    reply = []
    while len(reply) < expected_bytes:
        await ReadOnly()
        fire = dut.o__valid.value == 1
        byte = dut.o__payload.value
        await RisingEdge(dut.clk)
        if fire:
            reply.append(byte.to_unsigned())
    result["reply"] = reply


@cocotb.test()
@cocotb.parametrize(case=list(range(len(CASES))))
async def replies_match_torch(dut, case):
    spec = CASES[case]
    data = bytes.fromhex(spec["program"])
    expected = bytes.fromhex(spec["reply"])
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    await reset(dut)

    result = {}
    monitor = cocotb.start_soon(collect(dut, len(expected), result))
    # Drive the program with i.valid high whenever bytes remain; count cycles from the
    # first accepted byte to the last reply byte (the harness protocol of firmware/sim.py).
    sent, received, cycles, idle, started = 0, 0, 0, 0, False
    dut.i__valid.value = 1
    dut.i__payload.value = data[0]
    while received < len(expected):
        await ReadOnly()
        accepted = dut.i__valid.value == 1 and dut.i__ready.value == 1
        received += dut.o__valid.value == 1
        await RisingEdge(dut.clk)
        if accepted:
            started = True
            sent += 1
            dut.i__valid.value = int(sent < len(data))
            dut.i__payload.value = data[sent] if sent < len(data) else 0
        cycles += started
        idle = 0 if accepted else idle + 1
        assert idle < MAX_IDLE_CYCLES, (f"{spec['name']}: nothing accepted for {idle} cycles "
                                        f"({sent} of {len(data)} bytes sent)")
    await monitor
    got = bytes(result["reply"])
    (OUT / f"{case}.json").write_text(json.dumps({"reply": got.hex(), "cycles": cycles}))
    dut._log.info("%s: %d bytes in, %d back, %d cycles", spec["name"], len(data), len(got), cycles)
    for index, (g, e) in enumerate(zip(got, expected)):
        signed = LogicArray.from_unsigned(g, 8).to_signed()
        assert g == e, (f"{spec['name']}: reply byte {index} is {g:#04x} ({signed} as int8), "
                        f"expected {e:#04x} (of {len(expected)})")
