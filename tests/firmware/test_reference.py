"""firmware/reference.py: the integer functions against docs/intmath.md transcribed on Python
integers, against float torch within stated tolerances; decode equals prefill; the shipped model."""

import ast
import math
import pathlib
import random

import pytest
import torch
import torch.nn.functional as F

from firmware.reference import (IntegerTransformer, iexp, igelu, ilayernorm, isoftmax, isqrt, rq)
from firmware.quantize import mult_shift, quantize
from search.model.export import export

REPO = pathlib.Path(__file__).resolve().parents[2]
SHIPPED = REPO / "firmware" / "data" / "shakespeare_l2d64"


# --- docs/intmath.md on Python integers (a transcription, the third implementation) ------

def py_rq(x, m, s, lo, hi):
    y = x * m if s == 0 else (x * m + (1 << (s - 1))) >> s
    return min(max(y, lo), hi)


py_rq8 = lambda x, m, s: py_rq(x, m, s, -128, 127)
py_rq32 = lambda x, m, s: py_rq(x, m, s, -2 ** 31, 2 ** 31 - 1)
py_sat32 = lambda x: min(max(x, -2 ** 31), 2 ** 31 - 1)
py_sat16 = lambda x: min(max(x, -2 ** 15), 2 ** 15 - 1)


def py_iexp(d):
    t = -d
    z = (t * 1477) >> 20
    r = t - z * 710
    L = (1385 - r) ** 2 + 1006157
    return L >> z if z < 32 else 0


def py_softmax(x, n, total, mult, shift):
    if n == 0:
        return [0] * total
    xs = [py_rq32(x[i], mult, shift) for i in range(n)]
    mx = max(xs)
    e = [py_iexp(max(v - mx, -32768)) for v in xs]
    f = (1 << 40) // sum(e)
    return [min((ei * f + (1 << 32)) >> 33, 127) for ei in e] + [0] * (total - n)


def py_gelu(q, B, C, ONE, mult, shift):
    a = min(abs(q), -B)
    sign = (q > 0) - (q < 0)
    y = py_sat32(sign * (C - (a + B) ** 2))
    g = py_sat32(q * (y + ONE))
    return py_rq8(g, mult, shift)


def py_layernorm(x, G, Bt, SH, mult, shift):
    n = len(x)
    mean = sum(x) // n
    ys = [py_sat16((xi - mean) >> SH) for xi in x]
    var = sum(v * v for v in ys) // n
    std = max(math.isqrt(var), 1)
    inv = (1 << 31) // std
    z = [(v * inv) >> 16 for v in ys]
    return [py_rq8(py_sat32(zi * G[i] + Bt[i]), mult, shift) for i, zi in enumerate(z)]


# --- bit-exact against the transcription ----------------------------------------------------

def test_iexp_every_input():
    d = torch.arange(-32768, 1)
    assert iexp(d).tolist() == [py_iexp(v) for v in range(-32768, 1)]


def test_isqrt():
    v = torch.tensor([0, 1, 2, 3, 4, 15, 16, 17, 2 ** 30 - 1, 2 ** 30, 2 ** 31 - 1,
                      (2 ** 20 + 1) ** 2 - 1, (2 ** 20 + 1) ** 2])
    assert isqrt(v).tolist() == [math.isqrt(int(x)) for x in v]


def test_rq_rounds_half_up_and_saturates():
    x = torch.tensor([-5, -3, -1, 0, 1, 3, 5, 2 ** 31 - 1, -2 ** 31])
    for m, s in ((1, 1), (3, 2), (65535, 20), (7, 0)):
        assert rq(x, m, s, -128, 127).tolist() == [py_rq8(int(v), m, s) for v in x]


@pytest.mark.parametrize("params", [(-354, 2772, 2772, 20000, 30), (-50, 55, 55, 40000, 22),
                                    (-1000, 70000, 70000, 65535, 40)])
def test_igelu_every_int8_input(params):
    q = torch.arange(-128, 128)
    assert igelu(q, *params).tolist() == [py_gelu(v, *params) for v in range(-128, 128)]


def test_isoftmax_random_extreme_and_masked_rows():
    rng = random.Random(0)
    rows, masks, want = [], [], []
    cases = [(0, 16), (1, 16), (16, 16), (5, 16)]
    for n, total in cases + [(rng.randint(0, 16), 16) for _ in range(60)]:
        kind = rng.choice(["random", "extreme", "flat"])
        if kind == "random":
            x = [rng.randint(-300000, 300000) for _ in range(total)]
        elif kind == "extreme":
            x = [rng.choice([-2 ** 31, 2 ** 31 - 1, 0]) for _ in range(total)]
        else:
            x = [1234] * total
        mult, shift = rng.randint(1, 65535), rng.randint(0, 40)
        got = isoftmax(torch.tensor([x]), torch.arange(total)[None] < n, mult, shift)[0].tolist()
        assert got == py_softmax(x, n, total, mult, shift), (x, n, mult, shift)


def test_ilayernorm_random_and_constant_rows():
    rng = random.Random(1)
    for trial in range(40):
        n = rng.choice([8, 64, 100])
        spread = rng.choice([0, 1, 1000, 2 ** 20, 2 ** 29])
        base = rng.randint(-2 ** 30, 2 ** 30) if spread < 2 ** 29 else 0
        x = [base + rng.randint(-spread, spread) for _ in range(n)]
        G = [rng.randint(-2047, 2047) for _ in range(n)]
        Bt = [rng.randint(-2 ** 28, 2 ** 28) for _ in range(n)]
        SH, mult, shift = rng.randint(0, 31), rng.randint(1, 65535), rng.randint(0, 63)
        got = ilayernorm(torch.tensor([x]), torch.tensor(G), torch.tensor(Bt), SH, mult, shift)
        assert got[0].tolist() == py_layernorm(x, G, Bt, SH, mult, shift)


# --- against float, with stated tolerances ------------------------------------------------

def test_isoftmax_against_float():
    """Probabilities (2**-7 steps): max |Δ| <= 1.5/128 against torch.softmax."""
    gen = torch.Generator().manual_seed(3)
    s = 0.01  # score scale
    m, sh = mult_shift(s * 2 ** 10)
    x = (torch.randn(500, 64, generator=gen) * 300).round().long()
    n = torch.randint(1, 65, (500, 1), generator=gen)
    valid = torch.arange(64)[None] < n
    got = isoftmax(x, valid, m, sh).double() / 128
    want = torch.softmax((x.double() * s).masked_fill(~valid, float("-inf")), -1)
    assert (got - want).abs().max() <= 1.5 / 128


def test_ilayernorm_against_float():
    """Outputs: max |Δ| <= 1.5 int8 steps against torch's layer_norm."""
    gen = torch.Generator().manual_seed(4)
    d = 64
    xf = torch.randn(200, d, generator=gen, dtype=torch.float64) * 3 + 1
    s_x = 2.0 ** -20
    x = (xf / s_x).round().long()
    gamma = 1 + 0.3 * torch.randn(d, generator=gen, dtype=torch.float64)
    beta = 0.2 * torch.randn(d, generator=gen, dtype=torch.float64)
    g = math.floor(math.log2(2047 / gamma.abs().max()))
    G, Bt = (gamma * 2 ** g).round().long(), (beta * 2 ** (15 + g)).round().long()
    dev = (x - x.float().mean(-1, keepdim=True)).abs().max().item()
    SH = max(0, math.ceil(math.log2(dev / 16383)))
    want = F.layer_norm(xf, (d,), gamma, beta, eps=0.0)
    s_out = want.abs().max().item() / 127
    m, sh = mult_shift(2.0 ** -(15 + g) / s_out)
    got = ilayernorm(x, G, Bt, SH, m, sh).double()
    assert (got - want / s_out).abs().max() <= 1.5


# --- the model -----------------------------------------------------------------------------

def test_reference_imports_only_torch_and_numpy():
    tree = ast.parse((REPO / "firmware" / "reference.py").read_text())
    modules = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert modules <= {"json", "math", "pathlib", "numpy", "torch"}


@pytest.fixture(scope="module", params=["standard", "none", "lowrank", "shared", "glu"])
def small(request, tmp_path_factory):
    from tests.firmware.test_quantize import VARIANTS, random_model, V
    model = random_model(VARIANTS[request.param], seed=5)
    desc, state = export(model)
    qm = quantize(desc, state, torch.randint(0, V, (256,), generator=torch.Generator().manual_seed(6)))
    path = tmp_path_factory.mktemp("r") / "m.npz"
    qm.save(path)
    return IntegerTransformer.load(path), V


def test_decode_steps_equal_prefill(small):
    ref, v = small
    ids = torch.randint(0, v, (ref.context_len,), generator=torch.Generator().manual_seed(7))
    full = ref.logits(ids)
    assert full.dtype == torch.int64 and full.shape == (ref.context_len, v)
    cache = ref.new_cache()
    rows = [ref.prefill(ids[:5], cache)] + [ref.step(int(t), cache)[None] for t in ids[5:]]
    assert torch.equal(torch.cat(rows), full)
    assert cache.pos == ref.context_len
    with pytest.raises(ValueError, match="positions"):
        ref.step(0, cache)


def test_generate_is_greedy(small):
    ref, v = small
    prompt = [1, 2, 3]
    out = ref.generate(prompt, 6)
    seq = prompt + out
    logits = ref.logits(seq[:-1])
    assert [int(torch.argmax(logits[i])) for i in range(2, len(seq) - 1)] == out
    with pytest.raises(ValueError):
        ref.generate(prompt, ref.context_len)


@pytest.mark.skipif(not SHIPPED.with_suffix(".npz").exists(), reason="no shipped model")
def test_shipped_model_against_float():
    """The shipped model: integer perplexity within 2% of float on 2048 validation tokens,
    and it fits a 128 KiB scratchpad with its KV cache."""
    from search.model.data import load_shakespeare, eval_windows
    from search.model.train_shipped import load_checkpoint
    ref = IntegerTransformer.load(SHIPPED.with_suffix(".npz"))
    model, tokenizer, _ = load_checkpoint(SHIPPED.with_suffix(".pt"))
    assert ref.chars == tokenizer.chars
    corpus = load_shakespeare(tokenizer)
    x, y = eval_windows(corpus.valid, ref.context_len, 2048)
    with torch.no_grad():
        fl = F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
    assert math.exp(ref.nll(x, y)) <= 1.02 * math.exp(fl)
    desc = export(model)[0]
    assert desc.weight_bytes() + desc.kv_cache_bytes() < 100 * 1024
    assert SHIPPED.with_suffix(".npz").stat().st_size < 300 * 1024


@pytest.mark.parametrize("path", sorted((REPO / "firmware" / "data").glob("**/*.npz")),
                         ids=lambda p: p.stem)
def test_committed_models_decode_equals_prefill(path):
    """Every trained model file in firmware/data: loads, carries its tokenizer, and its
    decode steps give the prefill's integer logits."""
    ref = IntegerTransformer.load(path)
    ids = ref.encode("ROMEO:\nWhat light through yonder")[:24]
    full = ref.logits(ids)
    cache = ref.new_cache()
    rows = [ref.prefill(ids[:4], cache)] + [ref.step(t, cache)[None] for t in ids[4:]]
    assert torch.equal(torch.cat(rows), full)


def test_committed_models_cover_every_variant():
    from firmware.model import FFN_VARIANTS, QuantizedModel
    seen = set()
    for path in (REPO / "firmware" / "data").glob("**/*.npz"):
        seen |= set(QuantizedModel.load(path).desc.ffn_variants)
    assert seen == set(FFN_VARIANTS)
