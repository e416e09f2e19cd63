"""``python -m bench.int_vs_float``: perplexity of the integer model against the float one.

For each subnet below (together they cover every FFN variant) and the shipped
model, it trains a standalone float :class:`Transformer` with a fixed seed
(or reuses ``build/int_vs_float/NAME.pt`` from an earlier run), quantizes it
(:func:`firmware.quantize.quantize`, calibration on 4096 training tokens),
writes the quantized file, and scores both on the validation split: the float
model in PyTorch, the integer model with :class:`firmware.reference.IntegerTransformer`
(what the hardware computes, logits dequantized by ``logit_scale``).

Prints one table (markdown) for docs/transformer.md. The quantized files are
written to ``build/int_vs_float/NAME.npz``; ``firmware/data/variants/`` keeps
copies of ``glu_lowrank`` and ``shared_none`` (trained models of every FFN
variant besides the shipped standard one, for the end-to-end RTL tests).
"""

import argparse
import math
import pathlib
import sys
import time

import torch
import torch.nn.functional as F

REPO = pathlib.Path(__file__).resolve().parents[1]
OUT = REPO / "build" / "int_vs_float"

#: name -> (SubnetConfig fields besides vocab, seed, steps).
SUBNETS = {
    "glu_lowrank": (dict(context_len=64, d_model=64, head_dim=32, heads=(2, 2), ffn_dims=(128, 128),
                         ffn_variants=("glu", "lowrank"), lowrank_rank=16), 11, 1500),
    "shared_none": (dict(context_len=64, d_model=64, head_dim=32, heads=(2, 2, 2),
                         ffn_dims=(128, 0, 128), ffn_variants=("shared", "none", "shared")), 12, 1500),
    "all_variants": (dict(context_len=64, d_model=64, head_dim=32, heads=(2, 2, 2, 2, 2, 2),
                          ffn_dims=(128, 128, 128, 0, 128, 128),
                          ffn_variants=("standard", "shared", "lowrank", "none", "glu", "shared"),
                          lowrank_rank=16), 13, 1500),
}


def _train_or_load(name, fields, seed, steps, corpus, log):
    from search.model.space import SubnetConfig
    from search.model.train_shipped import train_transformer, save_checkpoint, load_checkpoint
    path = OUT / f"{name}.pt"
    if path.exists():
        model, _, info = load_checkpoint(path)
        if info.get("seed") == seed and info.get("steps") == steps:
            return model
    cfg = SubnetConfig(vocab_size=corpus.tokenizer.vocab_size, **fields)
    log(f"{name}: training {cfg.short()} seed {seed}, {steps} steps")
    model = train_transformer(cfg, corpus, steps=steps, seed=seed, log=log)
    OUT.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model, corpus.tokenizer, seed=seed, steps=steps)
    return model


def unit_errors(qm_path=None) -> list[tuple[str, str, float]]:
    """Max |Δ| of the integer GELU, softmax and LayerNorm against float torch.

    GELU: every int8 input at the shipped model's calibrated GELU input scale
    (or 0.05), error in float units. Softmax: 2000 rows of 64 scores (normal,
    std 3 in float units, random causal lengths), error in probability.
    LayerNorm: 2000 rows of d=64 (normal, mean 1, std 3, residual scale
    2**-20), gamma ~ 1 + 0.3 N, beta ~ 0.2 N, error in output float units
    (for outputs up to ~|6|, the int8 step is shown beside it)."""
    from firmware.quantize import mult_shift
    from firmware.reference import igelu, ilayernorm, isoftmax
    rows = []
    s_u, qm = 0.05, None
    if qm_path is not None and pathlib.Path(qm_path).exists():
        from firmware.model import QuantizedModel
        qm = QuantizedModel.load(qm_path)
        s_u = qm.scales["layers.0.ffn.up.out"]
    s = s_u / math.sqrt(2)
    B, C = math.floor(-1.769 / s), math.floor(1 / (0.2888 * s * s))
    q = torch.arange(-128, 128)
    want = F.gelu(q.double() * s_u)
    s_g = want.abs().max().item() / 127
    m, sh = mult_shift(s_u * 0.2888 * s * s / 2 / s_g)
    got = igelu(q, B, C, C, m, sh).double() * s_g
    # Before the output requantization: the polynomial alone.
    a = q.abs().clamp(max=-B)
    y = torch.sign(q) * (C - (a + B) ** 2)
    poly = (q * (y + C)).double() * s_u * 0.2888 * s * s / 2
    rows.append(("i-GELU (int8 out)", f"input scale {s_u:.4f}, output step {s_g:.4f}",
                 (got - want).abs().max().item()))
    rows.append(("i-GELU (before REQ)", f"input scale {s_u:.4f}", (poly - want).abs().max().item()))
    gen = torch.Generator().manual_seed(0)
    scale = 0.01
    m, sh = mult_shift(scale * 2 ** 10)
    x = (torch.randn(2000, 64, generator=gen) * 300).round().long()
    valid = torch.arange(64)[None] < torch.randint(1, 65, (2000, 1), generator=gen)
    got = isoftmax(x, valid, m, sh).double() / 128
    want = torch.softmax((x.double() * scale).masked_fill(~valid, float("-inf")), -1)
    rows.append(("i-softmax", "probabilities at 2**-7", (got - want).abs().max().item()))
    d = 64
    xf = torch.randn(2000, d, generator=gen, dtype=torch.float64) * 3 + 1
    xi = (xf * 2 ** 20).round().long()
    gamma = 1 + 0.3 * torch.randn(d, generator=gen, dtype=torch.float64)
    beta = 0.2 * torch.randn(d, generator=gen, dtype=torch.float64)
    g = math.floor(math.log2(2047 / gamma.abs().max()))
    G, Bt = (gamma * 2 ** g).round().long(), (beta * 2 ** (15 + g)).round().long()
    dev = (xi - xi.double().mean(-1, keepdim=True)).abs().max().item()
    SH = max(0, math.ceil(math.log2(dev / 16383)))
    want = F.layer_norm(xf, (d,), gamma, beta, eps=0.0)
    s_out = want.abs().max().item() / 127
    m, sh = mult_shift(2.0 ** -(15 + g) / s_out)
    got = ilayernorm(xi, G, Bt, SH, m, sh).double() * s_out
    rows.append(("i-LayerNorm", f"output step {s_out:.4f}", (got - want).abs().max().item()))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.int_vs_float", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=32768, help="validation tokens scored")
    ap.add_argument("--only", nargs="*", help="subnet names (default: all, and the shipped model)")
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--units", action="store_true", help="only the integer functions' errors")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from search.model.data import load_shakespeare, eval_windows
    from search.model.export import export
    from search.model.train_shipped import calibration_tokens, load_checkpoint, DATA
    if args.units:
        print("| function | setting | max abs error |")
        print("|---|---|---|")
        for name, setting, err in unit_errors(DATA / "shakespeare_l2d64.npz"):
            print(f"| {name} | {setting} | {err:.4f} |")
        return 0
    corpus = load_shakespeare()
    log = lambda s: print(s, file=sys.stderr, flush=True)
    models = {}
    for name, (fields, seed, steps) in SUBNETS.items():
        if args.only and name not in args.only:
            continue
        models[name] = _train_or_load(name, fields, seed, steps, corpus, log)
    shipped = DATA / "shakespeare_l2d64.pt"
    if (not args.only or "shipped" in args.only) and shipped.exists():
        models["shipped"] = load_checkpoint(shipped)[0]
    if args.train_only:
        return 0
    from firmware.quantize import quantize
    from firmware.reference import IntegerTransformer
    print("| model | architecture | float ppl | integer ppl | Δ |")
    print("|---|---|---|---|---|")
    for name, model in models.items():
        desc, state = export(model)
        meta = {"chars": corpus.tokenizer.chars, "command": "python -m bench.int_vs_float"}
        if name in SUBNETS:
            meta.update(seed=SUBNETS[name][1], steps=SUBNETS[name][2])
        qm = quantize(desc, state, calibration_tokens(corpus), meta=meta)
        OUT.mkdir(parents=True, exist_ok=True)
        path = OUT / f"{name}.npz"
        qm.save(path)
        ref = IntegerTransformer.load(path)
        x, y = eval_windows(corpus.valid, desc.context_len, args.tokens)
        t0 = time.time()
        with torch.no_grad():
            fl = F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
        il = ref.nll(x, y)
        log(f"{name}: scored in {time.time() - t0:.0f} s")
        pf, pi = math.exp(fl), math.exp(il)
        print(f"| {name} | {desc.short()} | {pf:.3f} | {pi:.3f} | {100 * (pi / pf - 1):+.2f}% |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
