"""firmware/quantize.py: the float forward, multipliers and shifts, and quantized models of every FFN variant."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from firmware.model import QuantizedModel, tensor_specs
from firmware.quantize import float_forward, mult_shift, perchannel_mult_shift, quantize
from firmware.reference import IntegerTransformer, igelu
from search.model import SubnetConfig, Transformer
from search.model.export import export

V, T = 20, 16
VARIANTS = {
    "standard": ("standard", "standard"),
    "none": ("none", "none"),
    "lowrank": ("lowrank", "lowrank"),
    "shared": ("shared", "none", "shared"),
    "glu": ("glu", "glu"),
}


def random_model(variants, seed=0):
    """A small model with weights of trained-like magnitudes (not the tiny init)."""
    torch.manual_seed(seed)
    n = len(variants)
    cfg = SubnetConfig(V, T, 32, 16, (2,) * n, (48,) * n, variants,
                       8 if "lowrank" in variants else 0)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
            elif ".ln" in name or name.startswith("ln_f"):
                p.normal_(1, 0.2)
            elif name in ("wte.weight", "wpe.weight"):
                p.normal_(0, 0.5)
            else:
                p.normal_(0, 0.3 / math.sqrt(p.shape[1]))
    return model


@pytest.fixture(params=list(VARIANTS), scope="module")
def quantized(request, tmp_path_factory):
    model = random_model(VARIANTS[request.param])
    desc, state = export(model)
    qm = quantize(desc, state, torch.randint(0, V, (512,), generator=torch.Generator().manual_seed(1)))
    path = tmp_path_factory.mktemp("q") / f"{request.param}.npz"
    qm.save(path)
    return request.param, model, desc, state, qm, path


def test_mult_shift():
    assert mult_shift(1.0) == (32768, 15)
    m, s = mult_shift(0.0123)
    assert m < 65536 and abs(m / 2 ** s - 0.0123) / 0.0123 < 2 ** -15
    assert mult_shift(2.0 ** -70)[1] == 63
    scales = np.array([3e-3, 1e-3, 7.5e-6])
    mults, shift = perchannel_mult_shift(scales)
    assert mults.max() <= 65535 and mults.max() > 32767
    assert np.allclose(mults / 2 ** shift, scales, rtol=2e-3)
    with pytest.raises(ValueError, match="16-bit"):
        perchannel_mult_shift([70000.0])


def test_float_forward_is_the_search_transformer(quantized):
    _, model, desc, state, _, _ = quantized
    idx = torch.randint(0, V, (3, T))
    with torch.no_grad():
        assert torch.allclose(float_forward(desc, state, idx), model(idx), atol=1e-5)


def test_quantized_model_is_complete(quantized):
    variant, _, desc, _, qm, path = quantized
    assert set(qm.tensors) == set(tensor_specs(desc))
    back = QuantizedModel.load(path)
    assert all(np.array_equal(back[n], qm[n]) for n in qm.tensors)
    if variant == "shared":
        # one copy of the shared FFN: no per-layer FFN tensors
        assert not any(".ffn." in n for n in qm.tensors)
        assert "shared_ffn.up.weight" in qm.tensors
    # per-channel weights use the int8 range in every channel
    w = qm["layers.0.attn.q.weight"]
    assert (np.abs(w).max(axis=1) >= 126).all()
    # the residual stream keeps 16x headroom: |x| stays far below 2**31
    assert qm.scales["x"] * 2 ** 31 > 10


def test_integer_logits_follow_float(quantized):
    variant, model, desc, _, qm, path = quantized
    ref = IntegerTransformer.load(path)
    idx = torch.randint(0, V, (4, T), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        fl = model(idx)
    il = ref.float_logits(ref.forward(idx)).float()
    # On these random models the dequantized logits are within a few % of the logit range.
    assert (fl - il).abs().max() < 0.06 * (fl.max() - fl.min()), variant
    assert (fl.argmax(-1) == il.argmax(-1)).float().mean() > 0.9


def test_gelu_constants_against_float():
    """The quantizer's i-GELU constants on every int8 input: within 2 output steps of GELU."""
    for s_u in (0.01, 0.05, 0.1):
        state_like = s_u  # GELU input scale
        s = s_u / math.sqrt(2)
        B, C = math.floor(-1.769 / s), math.floor(1 / (0.2888 * s * s))
        s_g = F.gelu(torch.tensor(127 * s_u)).item() / 127
        m, sh = mult_shift(s_u * 0.2888 * s * s / 2 / s_g)
        q = torch.arange(-128, 128)
        out = igelu(q, B, C, C, m, sh)
        want = F.gelu(q.double() * state_like) / s_g
        assert (out - want).abs().max() <= 2.0, s_u


def test_calibration_errors():
    model = random_model(("standard",))
    desc, state = export(model)
    del state["layers.0.attn.q.weight"]
    with pytest.raises(ValueError, match="layers.0.attn.q.weight"):
        quantize(desc, state, torch.zeros(64, dtype=torch.long))
