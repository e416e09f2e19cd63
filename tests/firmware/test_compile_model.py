"""The model compiler: a quantized Transformer on the device, bit-exact against the integer
reference (firmware/reference.py), its refusals, and the whole-program cycle model."""

import dataclasses
import pathlib

import numpy as np
import pytest

from rtl.isa import Geometry, UNITS, Opcode
from firmware import cycles
from firmware.compile_model import (compile_model, check_fits, ModelRefused, CycleModel,
                                    CATEGORIES)
from firmware.model import FFN_VARIANTS, QuantizedModel
from firmware.runtime import Device

from .qmodels import random_qmodel, small_desc

G = Geometry(8, 8, "ws", scratchpad_kib=96, accumulator_kib=16, program_kib=32, tokens=32,
             units=UNITS)
PROMPT = [3, 1, 4, 1, 5, 9, 2, 6]
DATA = pathlib.Path(__file__).resolve().parents[2] / "firmware" / "data"
# Trained, quantized models (firmware/data/README.md): together they hold every FFN variant.
TRAINED = {"standard": DATA / "shakespeare_l2d64.npz",
           "glu": DATA / "variants" / "glu_lowrank.npz",
           "lowrank": DATA / "variants" / "glu_lowrank.npz",
           "shared": DATA / "variants" / "shared_none.npz",
           "none": DATA / "variants" / "shared_none.npz"}


def model_for(variant):
    """A trained model with ``variant`` in some layer: the shipped model for ``standard``,
    firmware/data/variants/ for the others (2-3 layers, d_model 64, 2 heads, context 64)."""
    qmodel = QuantizedModel.load(TRAINED[variant])
    assert variant in qmodel.desc.ffn_variants
    return qmodel


def random_model_for(variant):
    """Deterministic random weights of the small test architecture (not trained)."""
    return random_qmodel(small_desc(variant), seed=FFN_VARIANTS.index(variant))


@pytest.fixture(scope="module")
def reference_logits(tmp_path_factory):
    from firmware.reference import IntegerTransformer

    def logits(qmodel, tokens):
        path = tmp_path_factory.mktemp("qm") / "model.npz"
        qmodel.save(path)
        return IntegerTransformer.load(path).logits(tokens).numpy()
    return logits


@pytest.mark.parametrize("trained", [True, False], ids=["trained", "random"])
@pytest.mark.parametrize("variant", FFN_VARIANTS)
def test_logits_bit_exact_with_the_integer_reference(variant, trained, reference_logits):
    qmodel = model_for(variant) if trained else random_model_for(variant)
    device = Device.functional(G)
    device.load(qmodel)
    tokens = PROMPT + [7, 0, 11]
    got = device.logits(tokens)
    assert got.shape == (len(tokens), qmodel.desc.vocab_size)
    np.testing.assert_array_equal(got, reference_logits(qmodel, tokens))


def test_decode_steps_equal_a_prefill_and_two_generations_share_one_load():
    qmodel = model_for("standard")
    device = Device.functional(G)
    device.load(qmodel)
    generated = list(device.generate(PROMPT, 4))
    assert len(generated) == 4 and all(0 <= t < qmodel.desc.vocab_size for t in generated)
    # Each generated token is the ARGMAX of a prefill over the same positions.
    logits = device.logits(PROMPT + generated)
    assert generated == [int(np.argmax(row)) for row in logits[len(PROMPT) - 1:-1]]
    # A second generation from the same load, and the first again.
    other = list(device.generate([5, 5], 2))
    assert other == [int(np.argmax(r)) for r in device.logits([5, 5] + other)[1:]][:2]
    assert list(device.generate(PROMPT, 4)) == generated


def test_the_memory_plan_stays_inside_its_memories():
    image = compile_model(random_qmodel(small_desc("lowrank")), G)
    spans = {}
    for region in image.regions.values():
        spans.setdefault(region.memory, []).append((region.base, region.base + region.rows))
    for memory, depth in (("scratchpad", G.sp_depth), ("accumulator", G.acc_depth)):
        ranges = sorted(spans[memory])
        assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:]))     # no overlap
        assert ranges[-1][1] <= depth
    assert len(image.words) <= G.program_words
    assert image.words[-1].opcode == Opcode.HALT


@pytest.mark.parametrize("change,memory", [
    (dict(scratchpad_kib=32), "scratchpad"),
    (dict(accumulator_kib=4), "accumulator"),
    (dict(program_kib=1), "program memory"),     # K loops keep the program short
])
def test_a_model_too_big_is_refused_in_one_line(change, memory):
    g = dataclasses.replace(G, **change)
    with pytest.raises(ModelRefused) as info:
        compile_model(random_qmodel(small_desc("standard")), g)
    message = str(info.value)
    assert "\n" not in message and f"the {memory} needs" in message and "the config has" in message


@pytest.mark.parametrize("change,match", [
    (dict(units=("elementwise", "gelu")), "lacks the vector units softmax, layernorm"),
    (dict(dataflow="os"), "needs the WS dataflow"),
    (dict(rows=4), "rows == cols"),
    (dict(program_kib=0, tokens=0), "no program memory"),
])
def test_a_config_that_cannot_run_it_is_refused_in_one_line(change, match):
    g = dataclasses.replace(G, **change)
    with pytest.raises(ModelRefused, match=match) as info:
        check_fits(small_desc("none"), g)
    assert "\n" not in str(info.value)


def test_a_prompt_longer_than_the_image_holds_is_refused():
    device = Device.functional(G)
    device.load(random_qmodel(small_desc("none")))
    with pytest.raises(ValueError, match="this image holds 16"):
        list(device.generate(list(range(10)), 7))


@pytest.mark.parametrize("variant", ["standard", "lowrank"])
def test_cycle_model_equals_the_event_model_of_a_whole_run(variant):
    image = compile_model(random_qmodel(small_desc(variant)), G)
    model = CycleModel(image)
    for prompt, generate in ((1, 1), (5, 1), (5, 3), (15, 1)):
        assert model.run_cycles(prompt, generate) == \
            cycles.run_cycles(image.words, 0, prompt, generate, G)
    # A decode step is the difference of two RUNs one token apart.
    step = cycles.run_cycles(image.words, 0, 5, 3, G) - cycles.run_cycles(image.words, 0, 5, 2, G)
    assert model.decode_cycles(6) == step
    split = model.breakdown(6)
    assert sum(sum(c.values()) for c in split.values()) == model.position_cycles(6)
    assert set(split) == {None, 0, 1} and set(split[0]) == set(CATEGORIES)
    assert split[0]["matmul"] > split[0]["nonlinear"] > 0


# -- on the simulated RTL ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def verilator_config():
    """configs/default.toml (the Transformer default) with a larger scratchpad (the
    simulators elaborate it with the generic multiplier, firmware/sim.py)."""
    from firmware import sim
    from gen.config import load_config
    try:
        sim.VerilatorBackend.check()
    except sim.SimToolMissing as e:
        pytest.skip(str(e))
    config = load_config("configs/default.toml")
    # 128 KiB of scratchpad: the 3-layer shared/none test model needs 12576 rows (98 KiB);
    # the default's 96 KiB holds the shipped 2-layer model.
    return dataclasses.replace(config, accelerator=dataclasses.replace(
        config.accelerator, scratchpad_kib=128))


def _verilator_device(config):
    from firmware import sim
    return Device(config.accelerator.geometry, sim.VerilatorBackend(config))


@pytest.mark.parametrize("variant", FFN_VARIANTS)
def test_logits_bit_exact_on_the_simulated_rtl(variant, verilator_config, reference_logits):
    qmodel = model_for(variant)
    device = _verilator_device(verilator_config)
    device.load(qmodel)
    tokens = PROMPT[:4]
    np.testing.assert_array_equal(device.logits(tokens), reference_logits(qmodel, tokens))


def test_cycle_model_equals_the_rtl_for_a_prefill_and_a_decode_step(verilator_config):
    qmodel = model_for("standard")
    device = _verilator_device(verilator_config)
    image = device.load(qmodel)
    g = device.geometry
    model = CycleModel(image)
    prompt = PROMPT[:5]
    one = list(device.generate(prompt, 1))
    prefill = device.cycles             # the RUN's own, as if the device kept its state
    two = list(device.generate(prompt, 2))
    assert two[:1] == one
    assert prefill == model.prefill_cycles(len(prompt)) == \
        cycles.run_cycles(image.words, 0, len(prompt), 1, g, tokens=prompt)
    assert device.cycles == model.run_cycles(len(prompt), 2)
    assert device.cycles - prefill == model.decode_cycles(len(prompt))
