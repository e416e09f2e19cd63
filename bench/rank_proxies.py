"""``python -m bench.rank_proxies --set A --proxy supernet:0 supernet:600 scratch:600 [--workers 2]``

How well does each cheap score rank the ranking check's subnets, and what does
it cost? A *proxy* scores a subnet by a short training run and its validation
perplexity (65,536 stratified characters, as the ranking check):

* ``supernet:N`` -- the supernet's extracted weights fine-tuned N steps (the
  ranking check's fine-tune: the supernet's batch and peak rate, 10% warmup,
  cosine, the seed of fine-tune replica 0); ``supernet:0`` is the inherited
  score.
* ``scratch:N`` -- the subnet trained from random weights for N steps with the
  reference's recipe (peak rate 3e-3, the supernet's 50-step warmup, cosine
  over the N steps), from a seed no reference run used (``seed + i +
  SCRATCH_SEED_BASE``): the control for what the supernet's weights add. A
  search without a supernet would score a candidate so.

``name:N@RATE`` sets the peak rate. Each proxy is compared (Kendall tau-b,
Spearman rho, 95% bootstrap intervals over the subnets, as
``search.model.rank``) with every reference recorded for the set in
``docs/data/rank_references.json``: standalone perplexities of the set's
subnets measured by the ranking check (set A: ``configs/rank_default.toml``'s
draw; B: ``configs/rank_heldout.toml``'s). Results are cached per subnet in
``--out`` (a supernet proxy under the checkpoint's digest), so an interrupted
run resumes; ``table.md`` and ``table.json`` are written there.

Seconds per subnet are wall time of one torch thread and depend on the machine
and its load.
"""

import argparse
import contextlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
import hashlib
import json
import math
import multiprocessing
import pathlib
import sys
import time

import numpy as np
import torch

from search.model.config import ModelConfigError, load_run_config
from search.model.data import load_corpus
from search.model.perplexity import nll
from search.model.rank import (RankConfig, _correlations, _init_worker, _standalone_train, finetune_seed,
                               load_rank_config, pick_subnets, train_standalone)
from search.model.space import SubnetConfig
from search.model.train import CHECKPOINT, _atomic_write, load_supernet, run_command

REFERENCES = pathlib.Path(__file__).resolve().parents[1] / "docs" / "data" / "rank_references.json"
SCRATCH_SEED_BASE = 200000
"""Scratch proxy runs of subnet ``i`` train with seed ``seed + i + SCRATCH_SEED_BASE``: no
standalone replica (``seed + i + 1000 r``, r < 100) nor fine-tune shares it."""
SCRATCH_LR = 3e-3


def parse_proxy(text: str) -> tuple:
    """``'supernet:200'`` -> ``('supernet', 200, None)``; ``'scratch:600@3e-3'`` -> ``('scratch', 600, 0.003)``."""
    try:
        kind, rest = text.split(":")
        steps, _, lr = rest.partition("@")
        steps, lr = int(steps), (float(lr) if lr else None)
    except ValueError:
        raise ModelConfigError(f"proxy {text!r}: write supernet:STEPS or scratch:STEPS, optionally @RATE") from None
    if kind not in ("supernet", "scratch") or steps < 0 or (kind == "scratch" and steps == 0) \
            or (lr is not None and not 0 < lr <= 1):
        raise ModelConfigError(f"proxy {text!r}: supernet:STEPS (STEPS >= 0) or scratch:STEPS (STEPS > 0), "
                               "a rate in (0, 1] after @")
    return kind, steps, lr


def _recipe(kind: str, steps: int, lr, train_cfg):
    """The training settings of a proxy run (the supernet's, with the proxy's schedule)."""
    if kind == "supernet":
        return _standalone_train(replace(train_cfg, warmup_steps=max(1, steps // 10)), lr or 0)
    return _standalone_train(replace(train_cfg, warmup_steps=min(train_cfg.warmup_steps, steps // 2) or 1),
                             lr or SCRATCH_LR)


def _job(args):
    """One subnet's proxy score in a worker process; returns its result dict."""
    kind, steps, lr, sub_dict, seed, supernet_config, checkpoint, eval_tokens, batch = args
    torch.set_num_threads(1)
    run = load_run_config(supernet_config)
    corpus = load_corpus(run.train.corpus, run.train.corpus_path or None)
    sub = SubnetConfig.from_dict(sub_dict)
    recipe = _recipe(kind, steps, lr, run.train)
    t0 = time.perf_counter()
    model = None
    if kind == "supernet":
        net, _, _ = load_supernet(checkpoint)
        model = net.extract(sub)
    if steps:
        model = train_standalone(sub, corpus.train, steps=steps, batch_size=batch, train_cfg=recipe, seed=seed,
                                 model=model)
    ppl = math.exp(nll(model.eval(), None, corpus.valid, max_tokens=eval_tokens))
    return {"key": sub.key(), "ppl": ppl, "seconds": time.perf_counter() - t0, "steps": steps,
            "lr": recipe.lr if steps else None, "warmup_steps": recipe.warmup_steps if steps else None,
            "batch_size": batch, "seed": seed if steps else None}


def run_proxies(set_name: str, proxies, *, out, workers: int = 1, references=REFERENCES, say=print) -> dict:
    """Score the set's subnets with each proxy (cached in ``out``) and correlate with its references."""
    doc = json.loads(pathlib.Path(references).read_text())
    if set_name not in doc["sets"]:
        raise ModelConfigError(f"no set {set_name!r} in {references}; it has {', '.join(doc['sets'])}")
    entry = doc["sets"][set_name]
    cfg = load_rank_config(entry["rank_config"])
    run = load_run_config(cfg.supernet_config)
    corpus = load_corpus(run.train.corpus, run.train.corpus_path or None)
    space = replace(run.space, vocab_size=corpus.tokenizer.vocab_size)
    subs = pick_subnets(space, cfg.subnets, weight_kib=cfg.weight_kib, mac_band=cfg.mac_band, seed=cfg.seed)
    if [s.key() for s in subs] != list(entry["subnets"]):
        raise ModelConfigError(f"{entry['rank_config']} no longer draws the subnets of set {set_name} in "
                               f"{references}; re-measure the references")
    checkpoint = pathlib.Path(cfg.checkpoint or run.train.out)
    parsed = [parse_proxy(p) for p in proxies]
    digest = None
    if any(kind == "supernet" for kind, _, _ in parsed):
        if not (checkpoint / CHECKPOINT).exists():
            raise ModelConfigError(f"{checkpoint / CHECKPOINT} does not exist; train the supernet first "
                                   f"(python -m search.model.train --config {cfg.supernet_config})")
        digest = hashlib.sha256((checkpoint / CHECKPOINT).read_bytes()).hexdigest()[:16]
    out = pathlib.Path(out)
    batch = cfg.batch_size or run.train.batch_size
    todo, paths = [], {}
    for text, (kind, steps, lr) in zip(proxies, parsed):
        where = out / text.replace(":", "_").replace("@", "_lr")
        where.mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(subs):
            seed = finetune_seed(cfg.seed, i, 0) if kind == "supernet" else cfg.seed + i + SCRATCH_SEED_BASE
            path = where / (f"{s.key()}.{digest}.json" if kind == "supernet" else f"{s.key()}.json")
            paths[text, s.key()] = path
            if not path.exists():
                todo.append((path, (kind, steps, lr, s.to_dict(), seed, cfg.supernet_config, str(checkpoint),
                                    cfg.eval_tokens, batch)))
    say(f"set {set_name}: {len(subs)} subnets, {len(proxies)} proxies; {len(todo)} runs to do, {workers} worker(s)")
    if todo:
        pool = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker)
                if workers > 1 else contextlib.nullcontext())
        with pool:
            results = pool.map(_job, [a for _, a in todo]) if workers > 1 else map(_job, [a for _, a in todo])
            for n, ((path, a), r) in enumerate(zip(todo, results)):
                _atomic_write(path, json.dumps(r) + "\n")
                say(f"[{n + 1}/{len(todo)}] {a[0]}:{a[1]} ppl {r['ppl']:.3f} ({r['seconds']:.0f} s) "
                    f"{entry['subnets'][r['key']]}")
    keys = [s.key() for s in subs]
    scores = {p: [json.loads(paths[p, k].read_text()) for k in keys] for p in proxies}
    table = {"set": set_name, "rank_config": entry["rank_config"], "checkpoint": str(checkpoint),
             "checkpoint_sha256_16": digest, "subnets": {k: entry["subnets"][k] for k in keys},
             "references": {name: ref for name, ref in entry["references"].items()},
             "proxies": {}}
    for p in proxies:
        x = [r["ppl"] for r in scores[p]]
        table["proxies"][p] = {
            "ppl": dict(zip(keys, x)), "seconds_per_subnet": float(np.mean([r["seconds"] for r in scores[p]])),
            "against": {name: _correlations(x, [ref["ppl"][k] for k in keys], cfg)
                        for name, ref in entry["references"].items()}}
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "table.json", json.dumps(table, indent=2) + "\n")
    _atomic_write(out / "table.md", format_table(table) + "\n")
    return table


def pool_sets(tables, *, bootstrap: int = 2000, seed: int = 0) -> dict:
    """The proxies' correlations over the union of several sets' subnets, against each
    reference every set has (by name), for the proxies every set scored."""
    refs = [r for r in tables[0]["references"] if all(r in t["references"] for t in tables)]
    proxies = [p for p in tables[0]["proxies"] if all(p in t["proxies"] for t in tables)]
    stats = RankConfig(bootstrap=bootstrap, seed=seed)
    pooled = {"sets": [t["set"] for t in tables], "subnets": sum(len(t["subnets"]) for t in tables),
              "proxies": {}}
    for p in proxies:
        x = [t["proxies"][p]["ppl"][k] for t in tables for k in t["subnets"]]
        pooled["proxies"][p] = {
            "seconds_per_subnet": float(np.mean([t["proxies"][p]["seconds_per_subnet"] for t in tables])),
            "against": {r: _correlations(x, [t["references"][r]["ppl"][k] for t in tables for k in t["subnets"]],
                                         stats) for r in refs}}
    return pooled


def format_pooled(pooled) -> str:
    lines = [f"Sets {' and '.join(pooled['sets'])} pooled ({pooled['subnets']} subnets): Kendall tau (95% CI) "
             "and Spearman rho against each reference all sets have.", "",
             "| proxy | s / subnet | reference | Kendall tau (95% CI) | Spearman rho (95% CI) |",
             "|---|---:|---|---|---|"]
    for p, e in pooled["proxies"].items():
        for r, c in e["against"].items():
            (lo, hi), (rlo, rhi) = c["kendall_tau_ci95"], c["spearman_rho_ci95"]
            lines.append(f"| {p} | {e['seconds_per_subnet']:.0f} | {r} | {c['kendall_tau']:.3f} ({lo:.3f} to "
                         f"{hi:.3f}) | {c['spearman_rho']:.3f} ({rlo:.3f} to {rhi:.3f}) |")
    return "\n".join(lines)


def format_table(table) -> str:
    refs = list(table["references"])
    lines = [f"Set {table['set']} ({table['rank_config']}; supernet {table['checkpoint']}): each proxy's "
             f"Kendall tau (95% CI) and Spearman rho against each reference; seconds per subnet, one thread.", "",
             "| proxy | s / subnet | " + " | ".join(f"tau vs {r}" for r in refs) + " | "
             + " | ".join(f"rho vs {r}" for r in refs) + " |",
             "|---|---:|" + "---|" * len(refs) + "---:|" * len(refs)]
    for p, e in table["proxies"].items():
        taus = [f"{c['kendall_tau']:.3f} ({c['kendall_tau_ci95'][0]:.3f} to {c['kendall_tau_ci95'][1]:.3f})"
                for c in e["against"].values()]
        rhos = [f"{c['spearman_rho']:.3f}" for c in e["against"].values()]
        lines.append(f"| {p} | {e['seconds_per_subnet']:.0f} | " + " | ".join(taus) + " | " + " | ".join(rhos) + " |")
    keys = list(table["subnets"])
    first = refs[-1]
    keys.sort(key=lambda k: table["references"][first]["ppl"][k])
    lines += ["", f"Perplexities (rows by {first}):", "",
              "| subnet | " + " | ".join(refs) + " | " + " | ".join(table["proxies"]) + " |",
              "|---|" + "---:|" * (len(refs) + len(table["proxies"]))]
    for k in keys:
        lines.append(f"| `{table['subnets'][k]}` | "
                     + " | ".join(f"{table['references'][r]['ppl'][k]:.3f}" for r in refs) + " | "
                     + " | ".join(f"{e['ppl'][k]:.3f}" for e in table["proxies"].values()) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.rank_proxies", description=__doc__.split("\n\n")[1])
    parser.add_argument("--set", nargs="+", default=["A"],
                        help="sets of docs/data/rank_references.json (A, B); several are also pooled")
    parser.add_argument("--proxy", nargs="+", default=["supernet:0", "supernet:200"],
                        help="supernet:STEPS or scratch:STEPS, optionally @RATE")
    parser.add_argument("--workers", type=int, default=1, help="proxy runs at once (processes)")
    parser.add_argument("--references", default=str(REFERENCES))
    parser.add_argument("--out", help="output directory (default build/rank_proxies_<set>); with several "
                                      "sets, each set's in a folder of it and pooled.md beside (default: "
                                      "build/rank_proxies_<set>, pooled in build/rank_proxies_<set>+<set>)")
    args = parser.parse_args(argv)

    def work():
        if len(args.set) == 1:
            outs = [pathlib.Path(args.out or f"build/rank_proxies_{args.set[0]}")]
        else:  # each set's runs where a run of that set alone keeps them, the pooled table beside
            outs = [pathlib.Path(args.out) / s if args.out else pathlib.Path(f"build/rank_proxies_{s}")
                    for s in args.set]
        where = pathlib.Path(args.out or "build/rank_proxies_" + "+".join(args.set))
        tables = [run_proxies(s, args.proxy, out=o, workers=args.workers, references=args.references)
                  for s, o in zip(args.set, outs)]
        for o in outs:
            print((o / "table.md").read_text())
        if len(tables) > 1:
            pooled = pool_sets(tables)
            where.mkdir(parents=True, exist_ok=True)
            _atomic_write(where / "pooled.json", json.dumps(pooled, indent=2) + "\n")
            _atomic_write(where / "pooled.md", format_pooled(pooled) + "\n")
            print(format_pooled(pooled))
    return run_command(work, resume="rerun the same command to resume (finished runs are kept)")


if __name__ == "__main__":
    sys.exit(main())
