"""firmware/model.py: ModelDesc's counts against instantiated torch modules, and the file format."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from firmware.model import FFN_VARIANTS, ModelDesc, QuantizedModel, tensor_specs
from search.model import SubnetConfig, Transformer, gemm_shapes
from search.model.export import to_model_desc

V, T, D, HD = 23, 16, 32, 16


def _cfg(variants, dims=None, heads=None, rank=8):
    n = len(variants)
    return SubnetConfig(V, T, D, HD, heads or (2,) * n, dims or (48,) * n, variants,
                        rank if "lowrank" in variants else 0)


CONFIGS = {v: _cfg((v, v)) for v in FFN_VARIANTS}
CONFIGS["mixed"] = _cfg(("standard", "none", "lowrank", "shared", "glu", "shared"),
                        heads=(2, 1, 2, 2, 1, 2))


@pytest.fixture(params=list(CONFIGS), scope="module")
def case(request):
    torch.manual_seed(0)
    cfg = CONFIGS[request.param]
    return cfg, to_model_desc(cfg), Transformer(cfg).eval()


def test_desc_matches_subnet(case):
    cfg, desc, _ = case
    assert desc.to_dict() == cfg.to_dict()
    assert ModelDesc.from_dict(desc.to_dict()) == desc


def test_weight_and_constant_counts(case):
    cfg, desc, model = case
    matrices = sum(p.numel() for p in model.parameters() if p.dim() == 2)
    assert desc.weight_bytes() == matrices  # parameters() yields the shared FFN once
    biases = sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias")
                 and ".ln" not in n and not n.startswith("ln_f"))
    used_ln = sum(p.numel() for n, p in model.named_parameters()
                  if (".ln1." in n or n.startswith("ln_f")
                      or (".ln2." in n and cfg.ffn_variants[int(n.split(".")[1])] != "none")))
    # One multiplier per output of every linear (the tied LM head has none).
    mults = sum(m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert desc.const_words() == biases + used_ln + mults
    assert desc.const_bytes() == 4 * desc.const_words()


def test_kv_cache_bytes(case):
    cfg, desc, model = case
    _, cache = model(torch.zeros(1, 5, dtype=torch.long), return_cache=True)
    assert desc.kv_cache_bytes(5) == sum(k.numel() + v.numel() for k, v in cache)
    assert desc.kv_cache_bytes() == desc.kv_cache_bytes(T)


def test_gemms_against_flop_counter(case):
    cfg, desc, model = case
    idx = torch.randint(0, V, (1, 7))
    with FlopCounterMode(display=False) as fc:
        model(idx)
    assert fc.get_total_flops() == 2 * desc.macs(7, "prefill")
    with torch.no_grad():
        _, cache = model(idx[:, :6], return_cache=True)
        with FlopCounterMode(display=False) as fc:
            model(idx[:, 6:], cache=cache)
    assert fc.get_total_flops() == 2 * desc.macs(7, "decode")
    assert desc.macs(7, "decode", logits="last") == desc.macs(7, "decode")


@pytest.mark.parametrize("mode", ["prefill", "decode"])
def test_gemm_shapes_and_identities(case, mode):
    cfg, desc, model = case
    space_mode = {"prefill": "prompt", "decode": "generate"}[mode]
    ours = [(g.layer, g.op, g.m, g.k, g.n, g.count) for g in desc.gemms(9, mode)]
    theirs = [(g.layer, g.op, g.m, g.k, g.n, g.count) for g in gemm_shapes(cfg, 9, space_mode)]
    assert ours == theirs
    specs = tensor_specs(desc)
    params = dict(model.named_parameters())
    for g in desc.gemms(9, mode):
        if g.op in ("scores", "context"):
            assert g.weight is None
            continue
        assert specs[g.weight].shape == (g.n, g.k) and specs[g.weight].kind == "int8"
        if g.op == "lm_head":
            assert g.weight == "wte"
        elif cfg.ffn_variants[g.layer] == "shared" and g.op.startswith("ffn"):
            assert g.weight.startswith("shared_ffn.")
            assert params["shared_ffn." + g.weight.split(".", 1)[1]].shape == (g.n, g.k)
    weights = {g.weight for g in desc.gemms(9, mode) if g.weight}
    assert sum(math.prod(specs[w].shape) for w in weights) + T * D == desc.weight_bytes()


class _Ops(TorchFunctionMode):
    """Counts the non-GEMM operations a torch forward pass calls."""

    def __init__(self, d):
        super().__init__()
        self.d = d
        self.n = dict(softmax_rows=0, softmax_elements=0, layernorms=0, gelu_elements=0,
                      residual_adds=0, glu_products=0)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is torch.softmax:
            x = args[0]
            self.n["softmax_rows"] += x.numel() // x.shape[-1]
            self.n["softmax_elements"] += int(torch.isfinite(x).sum())
        elif func is F.layer_norm:
            self.n["layernorms"] += args[0].numel() // self.d
        elif func is F.gelu:
            self.n["gelu_elements"] += args[0].numel()
        elif getattr(func, "__name__", "") in ("add", "__add__") and len(args) == 2 \
                and all(isinstance(a, torch.Tensor) and a.dim() == 3 for a in args):
            self.n["residual_adds"] += out.numel()
        elif getattr(func, "__name__", "") in ("mul", "__mul__") and len(args) == 2 \
                and all(isinstance(a, torch.Tensor) and a.dim() == 3 for a in args):
            self.n["glu_products"] += out.numel()
        return out


def test_op_counts_against_torch(case):
    cfg, desc, model = case
    idx = torch.randint(0, V, (1, 7))
    with torch.no_grad(), _Ops(D) as ops:
        model(idx)
    c = desc.op_counts(7, "prefill")
    # (the embedding's wte + wpe adds a (T, d) table, so it is not counted)
    assert ops.n == dict(softmax_rows=c.softmax_rows, softmax_elements=c.softmax_elements,
                         layernorms=c.layernorms, gelu_elements=c.gelu_elements,
                         residual_adds=c.residual_adds, glu_products=c.glu_products)
    with torch.no_grad():
        _, cache = model(idx[:, :6], return_cache=True)
        with _Ops(D) as ops:
            model(idx[:, 6:], cache=cache)
    c = desc.op_counts(7, "decode")
    assert ops.n["softmax_rows"] == c.softmax_rows == sum(cfg.heads)
    assert ops.n["softmax_elements"] == c.softmax_elements == 7 * sum(cfg.heads)
    assert ops.n["layernorms"] == c.layernorms
    assert ops.n["gelu_elements"] == c.gelu_elements and ops.n["glu_products"] == c.glu_products
    assert ops.n["residual_adds"] == c.residual_adds
    assert c.embeds == 1 and c.logit_rows == 1 and c.softmax_max_len == 7


def test_requant_counts():
    desc = to_model_desc(_cfg(("standard", "glu", "lowrank", "none")))
    a, f, r = 2 * HD, 48, 8
    assert desc.op_counts(3).requant_elements == 3 * (4 * 4 * a + f + 2 * f + (2 * r + f))


def test_desc_errors():
    with pytest.raises(ValueError, match="ffn variant 'big'"):
        ModelDesc(V, T, D, HD, (2,), (8,), ("big",))
    with pytest.raises(ValueError, match="one ffn_dim"):
        ModelDesc(V, T, D, HD, (2, 2), (8, 16), ("shared", "shared"))
    with pytest.raises(ValueError, match="lowrank_rank"):
        ModelDesc(V, T, D, HD, (2,), (8,), ("lowrank",))
    with pytest.raises(ValueError, match="seq_len"):
        to_model_desc(CONFIGS["standard"]).gemms(T + 1)
    d = ModelDesc(V, T, D, HD, (2, 2), (99, 7), ("none", "standard"), 5)
    assert d.ffn_dims == (0, 7) and d.lowrank_rank == 0


def _zeros(desc):
    return {n: np.zeros(s.shape, dtype=np.int64) for n, s in tensor_specs(desc).items()}


def test_quantized_model_file_round_trip(tmp_path):
    desc = to_model_desc(CONFIGS["mixed"])
    rng = np.random.default_rng(0)
    tensors = {}
    for n, s in tensor_specs(desc).items():
        lo, hi = {"int8": (-128, 128), "int32": (-2 ** 31, 2 ** 31), "mult": (0, 65536),
                  "shift": (0, 64), "sh": (0, 32), "gamma": (-2047, 2048),
                  "int": (-2 ** 31, 2 ** 31)}[s.kind]
        tensors[n] = rng.integers(lo, hi, s.shape)
    assert sum(n.startswith("shared_ffn.") for n in tensors) == 13  # the shared FFN once
    qm = QuantizedModel(desc, tensors, logit_scale=0.25, scales={"x": 1e-6},
                        meta={"chars": ["\x00", "a", "é"]})
    qm.save(tmp_path / "m.npz")
    back = QuantizedModel.load(tmp_path / "m.npz")
    assert back.desc == desc and back.logit_scale == 0.25 and back.meta == qm.meta
    assert back.scales == {"x": 1e-6}
    for n in tensors:
        assert np.array_equal(back[n], tensors[n]) and back[n].dtype == qm[n].dtype
    assert back["wte"].dtype == np.int8 and isinstance(back.scalar("embed.mult_tok"), int)


def test_quantized_model_checks():
    desc = to_model_desc(CONFIGS["standard"])
    t = _zeros(desc)
    del t["layers.0.attn.q.bias"]
    with pytest.raises(ValueError, match="missing layers.0.attn.q.bias"):
        QuantizedModel(desc, t, logit_scale=1.0)
    t = _zeros(desc)
    t["layers.0.ln1.gamma"][0] = 4096
    with pytest.raises(ValueError, match="layers.0.ln1.gamma"):
        QuantizedModel(desc, t, logit_scale=1.0)
    t = _zeros(desc)
    t["extra"] = np.zeros(1)
    with pytest.raises(ValueError, match="unexpected extra"):
        QuantizedModel(desc, t, logit_scale=1.0)


def test_load_errors(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a quantized model file"):
        QuantizedModel.load(tmp_path / "x.npz")
    np.savez(tmp_path / "y.npz", a=np.zeros(1))
    with pytest.raises(ValueError, match="no __header__"):
        QuantizedModel.load(tmp_path / "y.npz")
