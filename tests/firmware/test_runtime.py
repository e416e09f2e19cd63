"""Device: argument checks, scale conversion, the functional backend."""

import numpy as np
import pytest

from rtl.isa import Geometry
from firmware import Device
from firmware.runtime import scale_to_mult_shift
from tests import golden

G = Geometry(4, 4, "os", scratchpad_kib=1, accumulator_kib=1)


def operands(M=5, K=6, N=7, dtype=np.int8, seed=0):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    return (rng.integers(info.min, info.max + 1, (M, K)).astype(dtype),
            rng.integers(info.min, info.max + 1, (K, N)).astype(dtype))


def test_matmul_int32_and_requantized_int8():
    device = Device.functional(G)
    a, b = operands()
    bias = np.arange(-3, 4, dtype=np.int32) * 1000
    raw = device.matmul(a, b)
    assert raw.dtype == np.int32 and (raw == golden.matmul(a, b).numpy()).all()
    assert device.cycles is None
    q = device.matmul(a, b, bias=bias, scale=0.01)
    mult, shift = scale_to_mult_shift(0.01)
    assert q.dtype == np.int8
    assert (q == golden.requantize(a, b, bias, mult, shift).numpy()).all()


def test_16_bit_inputs_take_int16():
    g = Geometry(4, 4, "ws", input_width=16, scratchpad_kib=1, accumulator_kib=1)
    a, b = operands(dtype=np.int16)
    assert (Device.functional(g).matmul(a, b) == golden.matmul(a, b).numpy()).all()
    assert Device.functional(g).matmul(a, b, scale=1 / 3).dtype == np.int16


@pytest.mark.parametrize("scale,expected", [
    (1.0, (32768, 15)), (0.5, (32768, 16)), (65535, (65535, 0)), (2 ** -40, (32768, 55)),
    (0.1, (round(0.1 * 2 ** 19), 19)),
])
def test_scale_takes_the_finest_shift(scale, expected):
    assert scale_to_mult_shift(scale) == expected


@pytest.mark.parametrize("scale", [0, -1.0, float("nan"), float("inf"), 70000.0, 1e-30, "1", True])
def test_bad_scale(scale):
    with pytest.raises(ValueError, match="scale"):
        scale_to_mult_shift(scale)


@pytest.mark.parametrize("change,match", [
    (dict(a=[[1, 2]]), "a must be a numpy array"),
    (dict(a=np.zeros((5, 6), np.int32)), "a must have dtype int8"),
    (dict(b=np.zeros((5, 7), np.float32)), "b must have dtype int8"),
    (dict(a=np.zeros((5,), np.int8)), "a must be a non-empty 2-D"),
    (dict(b=np.zeros((0, 7), np.int8)), "b must be a non-empty 2-D"),
    (dict(b=np.zeros((5, 7), np.int8)), "b must have 6 rows"),
    (dict(bias=np.zeros(7, np.int64)), "bias must be a numpy array of int32"),
    (dict(bias=np.zeros(6, np.int32)), r"bias must have shape \(7,\)"),
    (dict(scale=-2.0), "scale"),
])
def test_matmul_refuses_wrong_arguments(change, match):
    a, b = operands()
    args = dict(a=a, b=b, bias=None, scale=None)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        Device.functional(G).matmul(**args)


def test_4_bit_range_is_checked():
    g = Geometry(4, 4, "os", input_width=4, scratchpad_kib=1, accumulator_kib=1)
    a = np.full((2, 2), 8, np.int8)
    with pytest.raises(ValueError, match="4-bit values -8..7"):
        Device.functional(g).matmul(a, a)
    a = np.full((2, 2), -8, np.int8)
    assert (Device.functional(g).matmul(a, a) == 128).all()


def test_unknown_backend_is_one_line():
    with pytest.raises(ValueError, match="one of functional, verilator, icarus, amaranth"):
        Device.simulated("tests/configs/test_4x4_os.toml", "modelsim")


def test_serial_device_takes_the_config_geometry(monkeypatch):
    import firmware.serial

    class FakeBackend:
        def __init__(self, port, **options):
            self.port, self.options = port, options

    monkeypatch.setattr(firmware.serial, "SerialBackend", FakeBackend)
    device = Device.serial("/dev/ttyUSB9", "tests/configs/test_4x4_os.toml", baud=115200)
    assert device.geometry.dataflow == "os"
    assert (device.backend.port, device.backend.options) == ("/dev/ttyUSB9", {"baud": 115200})


# -- a Transformer on the device: status, errors, reset

def _model_device():
    from rtl.isa import UNITS
    from .qmodels import random_qmodel, small_desc
    g = Geometry(8, 8, "ws", scratchpad_kib=64, accumulator_kib=16, program_kib=16, tokens=16,
                 units=UNITS)
    device = Device.functional(g)
    device.load(random_qmodel(small_desc("none", d_model=32, heads=1, context=8), seed=2))
    return device


def test_generate_is_a_generator_and_status_is_clean():
    device = _model_device()
    tokens = device.generate([1, 2], 3)
    assert iter(tokens) is tokens
    assert len(list(tokens)) == 3
    assert device.status().ok and tuple(device.status()) == (0, 0, 0)


def test_a_device_error_names_the_failing_program_word():
    from rtl.isa import Instruction, Opcode, ErrorCode, encode
    from firmware.runtime import DeviceError
    device = _model_device()
    # Overwrite program word 3 with a MATMUL whose accumulator rows lie beyond the memory.
    bad = Instruction(Opcode.MATMUL, addr2=device.geometry.acc_depth, count0=1, count1=1)
    device.backend.run(encode(Instruction(Opcode.LOAD_PROG, addr0=3, count0=1)) + encode(bad), 0)
    device.image.words[3] = bad
    with pytest.raises(DeviceError, match=r"OUT_OF_RANGE while generating: .*MATMUL.* at "
                                          r"program word 3") as info:
        list(device.generate([1, 2], 2))
    assert info.value.status == (ErrorCode.OUT_OF_RANGE, Opcode.MATMUL.value, 3)
    assert device.status().code == ErrorCode.OUT_OF_RANGE       # sticky
    device.reset()
    assert device.status().ok


def test_generate_before_load_is_refused():
    with pytest.raises(RuntimeError, match="call load"):
        list(Device.functional(G).generate([1], 1))


# -- the same tiny Transformer on every backend --------------------------------------------

def _tiny_transformer(variant="glu"):
    """A 2x2 config with every vector unit and a one-layer model small enough for the Python
    simulators (the 2-layer d_model 64 checks are in test_compile_model.py)."""
    from gen.config import parse_config
    from .qmodels import random_qmodel, small_desc
    config = parse_config({
        "accelerator": {"rows": 2, "cols": 2, "scratchpad_kib": 1, "accumulator_kib": 1,
                        "banks": 1, "program_kib": 2, "tokens": 8, "multiplier": "generic",
                        "units": ["elementwise", "gelu", "softmax", "layernorm", "embed",
                                  "argmax"]},
        "target": {"board": "icebreaker", "clock_mhz": 12.0}}, name="tiny_transformer")
    desc = small_desc(variant, vocab=6, context=4, d_model=4, heads=1, head_dim=2, ffn=4, layers=1)
    return config, random_qmodel(desc, seed=4)


def _check_on(device, qmodel, config, *, full=True):
    from firmware.compile_model import CycleModel
    reference = Device.functional(config)
    reference.load(qmodel)
    image = device.load(qmodel)
    tokens = list(device.generate([1, 2], 2))
    assert tokens == list(reference.generate([1, 2], 2))
    if device.cycles is not None:       # the RTL counts what the cycle model says
        first = device.cycles
        assert first == CycleModel(image).run_cycles(2, 2)
    # (The Python simulator elaborates the design for every run: fewer runs there.)
    if full and device.cycles is not None:
        list(device.generate([1, 2], 1))
        assert first - device.cycles == CycleModel(image).decode_cycles(2)
    prompt = [1, 2, 3] if full else [1, 2]
    np.testing.assert_array_equal(device.logits(prompt), reference.logits(prompt))
    if full:
        assert device.status().ok


@pytest.mark.parametrize("backend", ["amaranth", "icarus"])
def test_a_transformer_on_the_simulated_rtl(backend):
    from firmware import sim
    config, qmodel = _tiny_transformer()
    try:
        device = Device.simulated(config, backend)
    except sim.SimToolMissing as e:
        pytest.skip(str(e))
    _check_on(device, qmodel, config, full=backend != "amaranth")


@pytest.mark.slow
def test_a_transformer_over_the_serial_link_to_a_simulated_board():
    from boards import BOARDS
    from boards.sim import SimSerialPort
    from boards.top import BoardTop
    from firmware.serial import SerialBackend
    from rtl.top import Accelerator
    config, qmodel = _tiny_transformer("none")      # the fewest bytes to load over the UART
    g = config.accelerator.geometry
    port = SimSerialPort(BoardTop(BOARDS["icebreaker"], Accelerator(g), divisor=4,
                                  timeout_cycles=600))
    backend = SerialBackend(port, baud=port.baud, link_timeout_s=port.link_timeout_s,
                            latency_s=0)
    reference = Device.functional(config)
    reference.load(qmodel)
    device = Device(g, backend)
    device.load(qmodel)
    assert list(device.generate([3, 1], 2)) == list(reference.generate([3, 1], 2))
    assert list(device.generate([2], 3)) == list(reference.generate([2], 3))   # one load
