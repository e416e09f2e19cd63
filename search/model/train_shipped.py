"""``python -m search.model.train_shipped``: train, quantize and ship the small
char-level model that ``firmware/data/`` carries.

It trains one standalone :class:`Transformer` (no supernet) on the Shakespeare
training split with an explicit seed, quantizes it with
:func:`firmware.quantize.quantize` (calibration on training text) and writes:

* ``firmware/data/shakespeare_l2d64.npz``: the :class:`firmware.model.QuantizedModel`;
* ``firmware/data/shakespeare_l2d64.pt``: the float checkpoint (config, state,
  tokenizer, seed), for the CPU tokens/s comparison and integer vs float checks.

The same loop (:func:`train_transformer`) trains the subnets of
``bench/int_vs_float.py``. It lives in ``search/`` because ``firmware/`` may not
import the model space.
"""

import argparse
import json
import math
import pathlib
import sys
import time

import torch
import torch.nn.functional as F

from .data import CharTokenizer, eval_windows, load_shakespeare, random_batch
from .export import export
from .perplexity import nll
from .space import SubnetConfig
from .transformer import Transformer

__all__ = ["train_transformer", "save_checkpoint", "load_checkpoint", "SHIPPED", "main"]

REPO = pathlib.Path(__file__).resolve().parents[2]
DATA = REPO / "firmware" / "data"

#: The shipped model: 2 layers, d_model 64, 2 heads of 32, context 64, standard FFN 128.
SHIPPED = dict(context_len=64, d_model=64, head_dim=32, heads=(2, 2), ffn_dims=(128, 128),
               ffn_variants=("standard", "standard"))
SHIPPED_SEED = 1234
SHIPPED_STEPS = 3000


def train_transformer(cfg: SubnetConfig, corpus, *, steps: int, seed: int, batch_size: int = 32,
                      lr: float = 3e-3, min_lr: float = 3e-4, warmup: int = 100,
                      weight_decay: float = 0.1, log_every: int = 250, log=print) -> Transformer:
    """Train a standalone :class:`Transformer` of ``cfg`` on ``corpus.train`` (AdamW,
    cosine learning rate, gradient clipping at 1). Deterministic for a seed on one machine."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = Transformer(cfg)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    t0 = time.time()
    model.train()
    for step in range(1, steps + 1):
        if step <= warmup:
            rate = lr * step / warmup
        else:
            rate = min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        for g in opt.param_groups:
            g["lr"] = rate
        x, y = random_batch(corpus.train, batch_size, cfg.context_len, gen)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if log and (step % log_every == 0 or step == steps):
            log(f"step {step}/{steps} loss {loss.item():.3f} ({time.time() - t0:.0f} s)")
    model.eval()
    return model


def save_checkpoint(path, model: Transformer, tokenizer: CharTokenizer, **info) -> None:
    torch.save({"config": model.cfg.to_dict(), "state": model.state_dict(),
                "tokenizer": tokenizer.to_json(), **info}, path)


def load_checkpoint(path) -> tuple[Transformer, CharTokenizer, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = Transformer(SubnetConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["state"])
    model.eval()
    info = {k: v for k, v in ckpt.items() if k not in ("config", "state", "tokenizer")}
    return model, CharTokenizer.from_json(ckpt["tokenizer"]), info


def calibration_tokens(corpus, tokens: int = 4096, seed: int = 0) -> torch.Tensor:
    """``tokens`` training tokens from evenly spaced places of the training split."""
    n = len(corpus.train)
    pieces = 16
    each = tokens // pieces
    gen = torch.Generator().manual_seed(seed)
    starts = (torch.arange(pieces) * (n // pieces)
              + torch.randint(0, n // pieces - each, (pieces,), generator=gen))
    return torch.cat([corpus.train[s:s + each] for s in starts.tolist()])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m search.model.train_shipped", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=SHIPPED_SEED)
    ap.add_argument("--steps", type=int, default=SHIPPED_STEPS)
    ap.add_argument("--out", default=str(DATA / "shakespeare_l2d64"),
                    help="output path without extension (.npz and .pt are written)")
    ap.add_argument("--retrain", action="store_true",
                    help="train even when OUT.pt holds a model of the same seed and steps")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: the recorded result; more may change the last bits)")
    args = ap.parse_args(argv)
    from firmware.quantize import quantize
    torch.set_num_threads(args.threads)
    corpus = load_shakespeare()
    cfg = SubnetConfig(vocab_size=corpus.tokenizer.vocab_size, **SHIPPED)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = None
    if out.with_suffix(".pt").exists() and not args.retrain:
        model, _, info = load_checkpoint(out.with_suffix(".pt"))
        if (info.get("seed"), info.get("steps"), model.cfg) != (args.seed, args.steps, cfg):
            model = None
        else:
            print(f"reusing {out.with_suffix('.pt')} (seed {args.seed}, {args.steps} steps; "
                  f"--retrain trains it again)", flush=True)
    if model is None:
        print(f"training {cfg.short()} seed {args.seed}, {args.steps} steps", flush=True)
        model = train_transformer(cfg, corpus, steps=args.steps, seed=args.seed)
    ppl = math.exp(nll(model, None, corpus.valid, max_tokens=32768))
    command = "python -m search.model.train_shipped" + (f" --seed {args.seed}" if args.seed != SHIPPED_SEED else "") \
        + (f" --steps {args.steps}" if args.steps != SHIPPED_STEPS else "")
    save_checkpoint(out.with_suffix(".pt"), model, corpus.tokenizer, seed=args.seed, steps=args.steps,
                    valid_ppl=ppl, command=command)
    desc, state = export(model)
    qm = quantize(desc, state, calibration_tokens(corpus),
                  meta={"chars": corpus.tokenizer.chars, "seed": args.seed, "steps": args.steps,
                        "command": command, "float_valid_ppl": ppl})
    qm.save(out.with_suffix(".npz"))
    from firmware.reference import IntegerTransformer
    x, y = eval_windows(corpus.valid, cfg.context_len, 32768)
    int_ppl = math.exp(IntegerTransformer.load(out.with_suffix(".npz")).nll(x, y))
    print(f"validation perplexity (32768 tokens): float {ppl:.3f}, integer {int_ppl:.3f} "
          f"({100 * (int_ppl / ppl - 1):+.2f}%)")
    print(f"wrote {out.with_suffix('.npz')} ({out.with_suffix('.npz').stat().st_size} bytes), "
          f"{out.with_suffix('.pt')}; weights {desc.weight_bytes()} B int8, "
          f"{desc.const_bytes()} B int32 constants, KV cache {desc.kv_cache_bytes()} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
