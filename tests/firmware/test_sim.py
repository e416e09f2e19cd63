"""The simulated RTL (Device.simulated) against torch, and the backends against each other.

Bigger matrices go through the fastest installed backend here; tests/cocotb keeps
Icarus runs small.
"""

import dataclasses

import numpy as np
import pytest

from gen.config import load_config
from firmware import Device, sim
from firmware.compiler import compile_matmul
from firmware.cycles import cycle_report
from firmware.runtime import scale_to_mult_shift
from tests import golden
from rtl.isa import UNITS, VecOp
from tests.firmware.test_cycles import random_v1_stream, check_v1_stream


def backend_or_skip(name, config):
    try:
        return sim.make_backend(name, config)
    except sim.SimToolMissing as e:
        pytest.skip(str(e))


def random_int(rng, shape, width=8):
    return rng.integers(-(1 << (width - 1)), 1 << (width - 1), shape)


@pytest.mark.parametrize("path", ["tests/configs/test_2x2_ws.toml", "tests/configs/test_4x4_os.toml"])
def test_backends_agree_with_each_other_and_the_cycle_model(path):
    config = load_config(path)
    g = config.accelerator.geometry
    rng = np.random.default_rng(7)
    a, b = random_int(rng, (5, 9)), random_int(rng, (9, 6))
    program = compile_matmul(g, a, b, bias=random_int(rng, 6, 20), mult_shift=(300, 9))
    data = program.to_bytes()
    results = {name: backend_or_skip(name, config).run(data, program.reply_bytes)
               for name in sim.BACKENDS}
    assert len(set(results.values())) == 1, {k: v[1] for k, v in results.items()}
    reply, cycles = results["amaranth"]
    assert cycles == cycle_report(program, g).total_cycles
    expected = golden.requantize(a, b, program_bias(program), 300, 9)
    assert (program.decode(reply) == expected.numpy()).all()


def program_bias(program):
    from firmware.packing import unpack_acc_lanes
    from rtl.isa import Opcode
    g = program.geometry
    lanes = [unpack_acc_lanes(p, g.acc_width, g.cols)[0] for i, p in program.steps
             if i.opcode == Opcode.SET_BIAS]
    return np.concatenate(lanes)[:program.result_shape[1]]


CASES = {
    "tests/configs/test_2x2_ws.toml": [(7, 13, 5), (1, 40, 3)],
    "tests/configs/test_4x4_ws_i16.toml": [(9, 21, 6)],
    "tests/configs/test_8x8_os.toml": [(19, 70, 21), (8, 8, 8)],
    # Small M: back-to-back one-beat tiles, where the shadow-weight guard sets the pace.
    "configs/default.toml": [(64, 64, 64), (100, 30, 70), (1, 200, 40), (3, 64, 50)],
}


@pytest.mark.parametrize("path", CASES)
def test_simulated_device_matches_torch(path):
    device = Device.simulated(path)
    g = device.geometry
    dtype = np.int8 if g.input_width == 8 else np.int16
    rng = np.random.default_rng(len(path))
    for M, K, N in CASES[path]:
        a = random_int(rng, (M, K), g.input_width).astype(dtype)
        b = random_int(rng, (K, N), g.input_width).astype(dtype)
        assert (device.matmul(a, b) == golden.matmul(a, b).numpy()).all(), (M, K, N)
        assert device.cycles == cycle_report(device.program, g).total_cycles
        bias = rng.integers(-(1 << 24), 1 << 24, N).astype(np.int32)
        mult, shift = scale_to_mult_shift(1 / 700)
        q = device.matmul(a, b, bias=bias, scale=1 / 700)
        expected = golden.requantize(a, b, bias, mult, shift, input_width=g.input_width)
        assert (q == expected.numpy()).all(), (M, K, N)
    low, high = -(1 << (g.input_width - 1)), (1 << (g.input_width - 1)) - 1
    for x, y in [(low, low), (high, high), (low, high)]:
        a, b = np.full((5, 3 * g.rows + 1), x, dtype), np.full((3 * g.rows + 1, 3), y, dtype)
        assert (device.matmul(a, b) == golden.matmul(a, b).numpy()).all(), (x, y)


def test_missing_tool_is_one_line(monkeypatch):
    monkeypatch.setattr(sim.shutil, "which", lambda name: None)
    with pytest.raises(sim.SimToolMissing, match="needs iverilog and vvp on PATH; .*apt-get install iverilog"):
        sim.make_backend("icarus", load_config("tests/configs/test_2x2_ws.toml"))


def with_accelerator(path, **fields):
    """The config at ``path`` with some [accelerator] fields changed."""
    config = load_config(path)
    return dataclasses.replace(config, accelerator=dataclasses.replace(config.accelerator, **fields))


@pytest.mark.parametrize("path,units", [("tests/configs/test_2x2_ws.toml", ()),
                                        ("tests/configs/test_4x4_os.toml", ()),
                                        ("tests/configs/test_2x2_ws.toml", UNITS)])
def test_random_v1_programs_match_interpreter_and_cycle_model(path, units):
    """Random streams over every ISA v1 instruction (programs, RUNs, VECs, errors, RESET) on
    the fastest backend: replies as the ISA interpreter's, cycles as the model's."""
    config = with_accelerator(path, program_kib=0.5, tokens=12, units=units)
    g = config.accelerator.geometry
    backend = backend_or_skip(sim.default_backend(), config)
    for seed in range(12):
        fault = [None, None, "host", "program"][seed % 4]
        steps = random_v1_stream(g, 100 + seed, runs=3, fault=fault,
                                 vec_ops=list(VecOp) if units else ())
        check_v1_stream(g, steps, backend.run)
