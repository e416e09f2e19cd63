"""``python -m bench.int_vs_float``: perplexity of the integer model against the float one.

For each subnet below (together they cover every FFN variant) and the shipped
model, it trains a standalone float :class:`Transformer` with a fixed seed
(or reuses ``build/int_vs_float/NAME.pt`` from an earlier run), quantizes it
(:func:`firmware.quantize.quantize`, calibration on 4096 training tokens),
writes the quantized file, and scores both on the validation split: the float
model in PyTorch, the integer model with :class:`firmware.reference.IntegerTransformer`
(what the hardware computes, logits dequantized by ``logit_scale``).

Prints one table (markdown) for docs/transformer.md.
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.int_vs_float", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=32768, help="validation tokens scored")
    ap.add_argument("--only", nargs="*", help="subnet names (default: all, and the shipped model)")
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from search.model.data import load_shakespeare, eval_windows
    from search.model.export import export
    from search.model.train_shipped import calibration_tokens, load_checkpoint, DATA
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
        qm = quantize(desc, state, calibration_tokens(corpus))
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
