"""``python -m search.model.rank --config configs/rank_default.toml``

Does the supernet rank subnets as standalone training would? Draws random
subnets of the supernet's space that fit a weight budget (int8 weights, one
byte per parameter) and lie within a band of MACs per token (so that size
alone cannot order them), trains each from scratch on at least as many
tokens as the supernet gave one subnet of its sandwich (its steps x batch x
context), and compares the standalone validation perplexities with the ones
the subnets inherit from the supernet: Kendall tau-b and Spearman rho, with
percentile bootstrap confidence intervals over the subnets.

Writes ``table.md``, ``table.json``, ``rank.png`` and ``manifest.json`` into
the output directory, and one ``standalone/<key>.json`` (and ``.pt``) per
trained subnet: rerunning skips the subnets already trained, so an
interrupted run resumes (a finished run whose steps, batch, learning rate,
warmup or seed differ from the config's is an error, not reused). Each run
records its training loss every 50 steps (``train_loss``). Fine-tune results
(``<key>.finetune<steps>.<checkpoint sha256>.json``; ``.lr<rate>`` and
``.replica<r>`` before the digest for another peak rate than the supernet's and
for the further fine-tunes of ``finetune_seeds``) are kept per supernet
checkpoint, since they start from its weights, and record their steps, rate,
warmup, batch and seed: one made otherwise than the config asks is an error.
``--standalone-only`` stops after the standalone training (the supernet need
not exist yet); with ``--only KEY ...`` it trains just those subnets of the draw,
each with the seed it has in the set (a pilot of another recipe).

One standalone run per subnet is a noisy reference: with ``standalone_seeds
= n`` > 1 each subnet is also trained with n - 1 more seeds
(``standalone/<key>.replica<r>.json`` and ``.pt``, seed ``seed + i + 1000 r``;
replica 0 is the one-seed run above), the reference becomes the mean of the n
perplexities, and the table adds the correlations against that mean and
against each replica, and the replicas' agreement with each other (the
noise ceiling of a one-seed reference). The one-seed numbers
keep their place and names in ``table.json``; ``n = 1`` writes what it did
before.

Exit status: 0 done, 2 a bad config or a missing checkpoint (one line on
stderr), 130 interrupted.

``--pool DIR_A DIR_B ... --out DIR`` instead pools finished runs' tables (disjoint
subnet sets ranked with one supernet, e.g. the set a proxy was chosen on and a
held-out set) into one ranking: see :func:`pool_tables`.

``--best-of DIR DIR_2 ... --out DIR`` takes a finished run and standalone runs of
its subnets at other peak rates (the same config with another ``lr`` and ``out``,
``--standalone-only``): each subnet's reference becomes its best rate's perplexity,
a per-subnet rate sweep (see :func:`best_of_rates`); its table pools like any other.
"""

import argparse
import hashlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
import json
import math
import multiprocessing
import pathlib
import random
import signal
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from gen.config import read_toml

from .config import ModelConfigError, _build, _kinds, load_run_config
from .data import load_corpus, random_batch
from .perplexity import evaluate, nll
from .space import SearchSpace, SubnetConfig, count_params, macs_per_token
from .transformer import Transformer
from .train import (CHECKPOINT, _atomic_save, _atomic_savefig, _atomic_write, _lr, _optimizer, _pyplot,
                    git_commit, load_supernet, run_command, versions)

__all__ = ["RankConfig", "load_rank_config", "pick_subnets", "kendall_tau", "spearman_rho",
           "bootstrap_ci", "SEED_STRIDE", "replica_seed", "replica_stem", "replica_agreement",
           "FINETUNE_SEED_BASE", "finetune_seed", "finetune_stem", "train_standalone", "run_rank",
           "pool_tables", "run_pool", "main"]


SEED_STRIDE = 1000
"""Replica ``r`` of subnet ``i`` trains with seed ``seed + i + SEED_STRIDE * r``: replica 0
keeps the seeds of the one-seed runs (their caches stay valid), and no two runs of up to
``SEED_STRIDE`` subnets share a seed."""


def replica_seed(seed: int, subnet: int, replica: int) -> int:
    """The standalone seed of replica ``replica`` of the ``subnet``-th drawn subnet."""
    return seed + subnet + SEED_STRIDE * replica


FINETUNE_SEED_BASE = 100 * SEED_STRIDE
"""Fine-tune replicas ``r >= 1`` are seeded past every standalone replica's seed (up to 100
standalone replicas), so that no fine-tune shares its batch order with a standalone run
beyond replica 0's, which keeps the seed the first fine-tunes used."""


def finetune_seed(seed: int, subnet: int, replica: int) -> int:
    """The seed (batch order) of fine-tune replica ``replica`` of the ``subnet``-th drawn
    subnet: ``seed + subnet`` for replica 0 (the one-fine-tune seed of before, which is
    also standalone replica 0's), ``seed + subnet + FINETUNE_SEED_BASE + SEED_STRIDE * r``
    after."""
    return seed + subnet + (FINETUNE_SEED_BASE + SEED_STRIDE * replica if replica else 0)


def finetune_stem(key: str, steps: int, replica: int, lr: float | None, digest: str) -> str:
    """File stem of a fine-tune's result in ``standalone/``: ``<key>.finetune<steps>.<digest>``
    for replica 0 at the supernet's peak rate (``lr`` None; the name of before, so those
    results are reused), with ``.lr<lr>`` and ``.replica<r>`` inserted before the digest
    (the checkpoint's) otherwise."""
    return (f"{key}.finetune{steps}" + (f".lr{lr:g}" if lr is not None else "")
            + (f".replica{replica}" if replica else "") + f".{digest}")


def replica_stem(key: str, replica: int) -> str:
    """File stem of a replica's result in ``standalone/``: ``<key>`` for replica 0 (the
    one-seed runs' name, so their results are reused), ``<key>.replica<r>`` after."""
    return key if replica == 0 else f"{key}.replica{replica}"


@dataclass(frozen=True)
class RankConfig:
    """The ranking check (``[rank]`` table).

    supernet_config : the supernet's training TOML (its space, steps, batch and
        output directory, where the checkpoint is read from).
    checkpoint : the supernet's output directory ("" = the config's ``out``).
    subnets : standalone subnets to train (>= 3).
    seed : seeds the subnet draw, the standalone weights and their batches.
    weight_kib : weight budget: int8 weights, one byte per parameter.
    mac_band : the subnets' MACs per token lie in [m / sqrt(band), m * sqrt(band)]
        around the median m of the fitting candidates: max/min <= band.
    steps, batch_size : standalone training (0 = the supernet's, i.e. as many
        tokens as the supernet gave each subnet of a sandwich step).
    lr : the standalone runs' peak learning rate (0 = the supernet's). Set, it
        keeps the reference fixed while the supernet's own rate is tuned.
    warmup_steps : the standalone runs' linear warmup (0 = the supernet's); with
        ``lr`` it is the reference's recipe.
    finetune_steps : when > 0, each subnet's extracted weights are also
        fine-tuned this many steps (the supernet's batch and peak learning rate,
        10% warmup, cosine) and the correlation reported before and after.
    finetune_seeds : fine-tunes per subnet (>= 1), each from the same extracted
        weights with its own batch order (:func:`finetune_seed`); the fine-tuned
        score is the mean of their perplexities, which averages out the noise of
        one fine-tune's batch order.
    finetune_lr : the fine-tunes' peak learning rate (0 = the supernet's, as
        before; the floor is the supernet's ``min_lr`` or this rate if lower).
    eval_tokens : validation tokens (stratified over the split) per score.
    bootstrap : bootstrap resamples for the confidence intervals.
    threads : torch threads per worker.
    standalone_seeds : standalone replicas per subnet (>= 1). Replica ``r`` of
        subnet ``i`` is seeded ``seed + i + SEED_STRIDE * r`` (replica 0 is the
        one-seed reference of before); with more than one, the reference is the
        mean of the replicas' perplexities, and the replicas' agreement with
        each other (the noise ceiling of a one-seed reference) is reported.
    out : output directory.
    """
    supernet_config: str = "configs/supernet_default.toml"
    checkpoint: str = ""
    subnets: int = 10
    seed: int = 0
    weight_kib: float = 300.0
    mac_band: float = 2.0
    steps: int = 0
    batch_size: int = 0
    lr: float = 0.0
    warmup_steps: int = 0
    finetune_steps: int = 0
    finetune_seeds: int = 1
    finetune_lr: float = 0.0
    eval_tokens: int = 65536
    bootstrap: int = 2000
    threads: int = 1
    standalone_seeds: int = 1
    out: str = "build/rank_default"

    def __post_init__(self):
        if self.subnets < 3:
            raise ValueError(f"subnets must be at least 3, not {self.subnets!r}")
        for name in ("lr", "finetune_lr"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], not {getattr(self, name)!r}")
        if self.weight_kib <= 0 or self.mac_band < 1:
            raise ValueError("weight_kib must be positive and mac_band at least 1")
        for name in ("steps", "batch_size", "warmup_steps", "finetune_steps", "eval_tokens", "bootstrap",
                     "threads", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, not {getattr(self, name)!r}")
        if self.standalone_seeds < 1:
            raise ValueError(f"standalone_seeds must be at least 1, not {self.standalone_seeds!r}")
        if self.finetune_seeds < 1:
            raise ValueError(f"finetune_seeds must be at least 1, not {self.finetune_seeds!r}")
        if self.standalone_seeds > 100:
            raise ValueError(f"standalone_seeds must be at most 100 (the fine-tunes' seeds lie past "
                             f"them), not {self.standalone_seeds!r}")
        for name in ("standalone_seeds", "finetune_seeds"):
            if getattr(self, name) > 1 and self.subnets > SEED_STRIDE:
                raise ValueError(f"{name} > 1 takes at most {SEED_STRIDE} subnets (their seeds "
                                 f"would collide), not {self.subnets!r}")


def load_rank_config(path) -> RankConfig:
    """Read a ``[rank]`` TOML; a mistake is one :class:`ModelConfigError` line."""
    path = pathlib.Path(path)
    doc = read_toml(path, ModelConfigError)
    if set(doc) != {"rank"}:
        raise ModelConfigError(f"{path}: needs exactly one table, [rank]")
    try:
        return _build("rank", RankConfig, doc["rank"], _kinds(RankConfig))
    except ModelConfigError as e:
        raise ModelConfigError(f"{path}: {e}") from None


# --- statistics -------------------------------------------------------------------------

def kendall_tau(x, y) -> float:
    """Kendall's tau-b (ties in either ranking counted as neither concordant nor discordant)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    dx = np.sign(x[:, None] - x[None, :])
    dy = np.sign(y[:, None] - y[None, :])
    iu = np.triu_indices(len(x), 1)
    s, nx, ny = (dx * dy)[iu].sum(), (dx != 0)[iu].sum(), (dy != 0)[iu].sum()
    return float(s / math.sqrt(nx * ny)) if nx and ny else float("nan")


def _ranks(x):
    x = np.asarray(x, float)
    order = x.argsort(kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):  # ties share their mean rank
        tied = x == v
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman_rho(x, y) -> float:
    """Spearman's rho: Pearson correlation of the (tie-averaged) ranks."""
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def bootstrap_ci(stat, x, y, *, resamples=2000, level=0.95, seed=0) -> tuple:
    """Percentile bootstrap interval of ``stat(x, y)`` over pairs drawn with replacement
    (resamples where the statistic is undefined, e.g. all one subnet, are skipped; NaNs
    when every one is, e.g. a constant reference)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        i = rng.integers(0, len(x), len(x))
        v = stat(x[i], y[i])
        if not math.isnan(v):
            values.append(v)
    if not values:
        return math.nan, math.nan
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


# --- subnets ---------------------------------------------------------------------------

def pick_subnets(space: SearchSpace, n: int, *, weight_kib: float, mac_band: float, seed: int,
                 candidates: int = 4000) -> list:
    """``n`` distinct random subnets with int8 weights <= ``weight_kib`` and MACs
    per token (full-context prompt) within a ``mac_band`` band around the
    median of the fitting candidates; in draw order."""
    rng = random.Random(seed)
    fits = {}
    for _ in range(candidates):
        sub = space.sample(rng)
        if count_params(sub) <= weight_kib * 1024:
            fits.setdefault(sub, macs_per_token(sub, sub.context_len))
    if not fits:
        raise ModelConfigError(f"no subnet of the space fits {weight_kib} KiB of int8 weights")
    mid = float(np.median(list(fits.values())))
    lo, hi = mid / math.sqrt(mac_band), mid * math.sqrt(mac_band)
    chosen = [s for s, m in fits.items() if lo <= m <= hi][:n]
    if len(chosen) < n:
        raise ModelConfigError(f"only {len(chosen)} distinct fitting subnets lie in the MAC band "
                               f"{lo:,.0f}-{hi:,.0f}; lower subnets or widen mac_band")
    return chosen


def train_standalone(sub: SubnetConfig, tokens: torch.Tensor, *, steps: int, batch_size: int, train_cfg,
                     seed: int, model: Transformer | None = None, curve: list | None = None,
                     curve_every: int = 50) -> Transformer:
    """``sub`` trained as a plain :class:`Transformer` with the supernet's
    optimizer, learning-rate schedule and clipping: from scratch, or from
    ``model``'s weights (a fine-tune of an extracted subnet). With ``curve`` a
    list, ``[step, mean training loss of the last curve_every steps]`` is
    appended to it every ``curve_every`` steps (and at the last)."""
    torch.manual_seed(seed)
    model = Transformer(sub) if model is None else model
    cfg = replace(train_cfg, steps=steps)
    opt = _optimizer(model, cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    model.train()
    window = []
    for step in range(1, steps + 1):
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg)
        x, y = random_batch(tokens, batch_size, sub.context_len, gen)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if curve is not None:
            window.append(loss.item())
            if step % curve_every == 0 or step == steps:
                curve.append([step, sum(window) / len(window)])
                window = []
    return model.eval()


def _init_worker():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C


def _standalone_job(args):
    """One subnet's standalone run in a worker; writes ``<stem>.json`` and ``<stem>.pt``
    (see :func:`replica_stem`)."""
    sub_dict, where, supernet_config, steps, batch, lr, warmup, eval_tokens, seed, threads, replica = args
    torch.set_num_threads(threads)
    sub = SubnetConfig.from_dict(sub_dict)
    run = load_run_config(supernet_config)
    corpus = load_corpus(run.train.corpus, run.train.corpus_path or None)
    t0 = time.perf_counter()
    curve = []
    recipe = _standalone_train(run.train, lr, warmup)
    model = train_standalone(sub, corpus.train, steps=steps, batch_size=batch, train_cfg=recipe, seed=seed,
                             curve=curve)
    train_s = time.perf_counter() - t0
    ppl = math.exp(nll(model, None, corpus.valid, max_tokens=eval_tokens))
    where = pathlib.Path(where)
    stem = replica_stem(sub.key(), replica)
    _atomic_save(model.state_dict(), where / f"{stem}.pt")
    result = {"subnet": sub_dict, "key": sub.key(), "standalone_ppl": ppl, "train_s": train_s,
              "steps": steps, "batch_size": batch, "lr": recipe.lr, "warmup_steps": recipe.warmup_steps,
              "tokens": steps * batch * sub.context_len, "seed": seed, "train_loss": curve}
    if replica:  # replica 0's file keeps the one-seed runs' fields exactly
        result["replica"] = replica
    _atomic_write(where / f"{stem}.json", json.dumps(result, indent=2) + "\n")
    return result


def _progress(i: int, n: int, r: dict) -> str:
    seed = f" seed {r['seed']}" if r.get("replica") else ""
    return (f"[{i + 1}/{n}] standalone ppl {r['standalone_ppl']:.3f}{seed} "
            f"({r['train_s']:.0f} s) {SubnetConfig.from_dict(r['subnet']).short()}")


def _standalone_train(train_cfg, lr: float, warmup: int = 0):
    """The supernet's training settings with the standalone peak rate and warmup (0 = its own)."""
    cfg = replace(train_cfg, lr=lr, min_lr=min(train_cfg.min_lr, lr)) if lr else train_cfg
    return replace(cfg, warmup_steps=warmup) if warmup else cfg


def _check_cached(path: pathlib.Path, steps: int, batch: int, lr: float, seed: int, warmup: int) -> None:
    """A finished standalone run is reused only if trained as this config asks
    (results from before ``lr`` or ``warmup_steps`` was recorded are taken at their word on it)."""
    r = json.loads(path.read_text())
    had = (r["steps"], r["batch_size"], r.get("lr", lr), r["seed"], r.get("warmup_steps", warmup))
    if had != (steps, batch, lr, seed, warmup):
        raise ModelConfigError(f"{path} was trained with steps, batch, lr, seed, warmup {had}, not "
                               f"{(steps, batch, lr, seed, warmup)}; use another out")


def run_rank(cfg: RankConfig, *, workers: int = 1, standalone_only: bool = False, quiet: bool = False,
             only=None) -> dict:
    """Train the standalone subnets (skipping finished ones) and, unless
    ``standalone_only``, compare them with the supernet; returns the summary.
    ``only`` (subnet keys; ``standalone_only`` runs) trains just those subnets of
    the draw, each with the seed it has in the whole set (a pilot of a recipe)."""
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    run = load_run_config(cfg.supernet_config)
    corpus = load_corpus(run.train.corpus, run.train.corpus_path or None)
    space = replace(run.space, vocab_size=corpus.tokenizer.vocab_size)
    steps, batch = cfg.steps or run.train.steps, cfg.batch_size or run.train.batch_size
    if steps * batch < run.train.steps * run.train.batch_size:
        say(f"warning: standalone training sees fewer tokens ({steps} x {batch} sequences) than the "
            f"supernet gave each subnet ({run.train.steps} x {run.train.batch_size})")
    subs = pick_subnets(space, cfg.subnets, weight_kib=cfg.weight_kib, mac_band=cfg.mac_band, seed=cfg.seed)
    picked = range(len(subs))
    if only is not None:
        if not standalone_only:
            raise ModelConfigError("only trains a part of the set: use it with --standalone-only")
        keys = [s.key() for s in subs]
        if missing := [k for k in only if k not in keys]:
            raise ModelConfigError(f"subnet key(s) {', '.join(missing)} are not in this config's draw; "
                                   f"its keys: {', '.join(keys)}")
        picked = [i for i, k in enumerate(keys) if k in only]
    out = pathlib.Path(cfg.out)
    where = out / "standalone"
    where.mkdir(parents=True, exist_ok=True)
    replicas = range(cfg.standalone_seeds)
    result_path = lambda s, r: where / f"{replica_stem(s.key(), r)}.json"
    # Replica by replica: an interrupted run has whole replicas done, so it can also be
    # finished with fewer seeds.
    runs = [(i, subs[i], r) for r in replicas for i in picked]
    todo = [(i, s, r) for i, s, r in runs if not result_path(s, r).exists()]
    recipe = _standalone_train(run.train, cfg.lr, cfg.warmup_steps)
    lr = recipe.lr
    for i, s, r in runs:
        if (i, s, r) not in todo:
            _check_cached(result_path(s, r), steps, batch, lr, replica_seed(cfg.seed, i, r),
                          recipe.warmup_steps)
    say(f"{len(subs)} subnets <= {cfg.weight_kib:g} KiB int8, MACs/token "
        f"{min(macs_per_token(s, s.context_len) for s in subs):,.0f}-"
        f"{max(macs_per_token(s, s.context_len) for s in subs):,.0f}; "
        + (f"{cfg.standalone_seeds} seeds each; " if cfg.standalone_seeds > 1 else "")
        + f"{len(runs) - len(todo)} trained, "
        f"{len(todo)} to train ({steps} steps x {batch} x {space.context_len} tokens each, {workers} worker(s))")
    jobs = [(s.to_dict(), str(where), cfg.supernet_config, steps, batch, cfg.lr, cfg.warmup_steps,
             cfg.eval_tokens, replica_seed(cfg.seed, i, r), cfg.threads, r) for i, s, r in todo]
    if jobs:
        t0 = time.perf_counter()
        if workers > 1:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_init_worker) as pool:
                for i, r in enumerate(pool.map(_standalone_job, jobs)):
                    say(_progress(i, len(jobs), r))
        else:
            for i, job in enumerate(jobs):
                say(_progress(i, len(jobs), _standalone_job(job)))
        say(f"standalone training: {time.perf_counter() - t0:.0f} s")
    results = [[json.loads(result_path(subs[i], r).read_text()) for r in replicas] for i in picked]
    if standalone_only:
        return {"standalone": [rs[0] for rs in results],
                **({"replicas": results} if cfg.standalone_seeds > 1 else {})}

    checkpoint = cfg.checkpoint or run.train.out
    net, net_space, _ = load_supernet(checkpoint)
    if replace(net_space, vocab_size=0) != replace(space, vocab_size=0):
        raise ModelConfigError(f"{checkpoint} holds another space than {cfg.supernet_config}")
    rows = []
    for s in subs:
        r = json.loads((where / f"{s.key()}.json").read_text())
        r["inherited_ppl"] = evaluate(net, s, corpus, max_tokens=cfg.eval_tokens)
        r["params"], r["macs_per_token"] = count_params(s), macs_per_token(s, s.context_len)
        r["short"] = s.short()
        rows.append(r)
    y = [r["standalone_ppl"] for r in rows]
    summary = {**_correlations([r["inherited_ppl"] for r in rows], y, cfg), "subnets": len(rows), "standalone_steps": steps, "standalone_batch": batch,
               "supernet_steps": run.train.steps, "supernet_batch": run.train.batch_size,
               "standalone_lr": lr, "standalone_warmup": recipe.warmup_steps, "eval_tokens": cfg.eval_tokens,
               "checkpoint": str(checkpoint)}
    summary["tau_and_params"] = kendall_tau([r["params"] for r in rows], y)
    summary["tau_and_macs"] = kendall_tau([r["macs_per_token"] for r in rows], y)
    if cfg.finetune_steps:
        summary["finetuned"] = _finetune(cfg, net, subs, rows, corpus, run.train, batch, checkpoint, where, say)
    if cfg.standalone_seeds > 1:
        summary["mean_of_seeds"] = _seed_summary(rows, results, cfg)
    _atomic_write(out / "table.json", json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n")
    _atomic_write(out / "table.md", format_table(rows, summary, cfg) + "\n")
    _plot(rows, summary, out / "rank.png")
    _atomic_write(out / "manifest.json", json.dumps({
        "config": {k: getattr(cfg, k) for k in RankConfig.__dataclass_fields__},
        "git_commit": git_commit(), "versions": versions(), "summary": summary}, indent=2) + "\n")
    return summary


def _finetune(cfg: RankConfig, net, subs, rows, corpus, train_cfg, batch, checkpoint, where, say) -> dict:
    """Fine-tunes each subnet's extracted weights ``cfg.finetune_seeds`` times (cached
    per replica and checkpoint, see :func:`finetune_stem`), sets each row's
    ``finetuned_ppl`` (the mean over the replicas; with several, also
    ``finetuned_ppls``) and returns the summary's ``finetuned`` entry. Defaults
    (one fine-tune at the supernet's rate) write what was written before."""
    steps, k = cfg.finetune_steps, cfg.finetune_seeds
    ft_cfg = replace(train_cfg, warmup_steps=max(1, steps // 10))
    ft_cfg = _standalone_train(ft_cfg, cfg.finetune_lr)
    # The name carries the rate only where it is not the supernet's (the files of before).
    tag = ft_cfg.lr if ft_cfg.lr != train_cfg.lr else None
    # A fine-tune starts from the checkpoint's weights: its result is kept per checkpoint.
    digest = hashlib.sha256((pathlib.Path(checkpoint) / CHECKPOINT).read_bytes()).hexdigest()[:16]
    for i, (s, r) in enumerate(zip(subs, rows)):
        ppls = []
        for rep in range(k):
            path = where / f"{finetune_stem(s.key(), steps, rep, tag, digest)}.json"
            seed = finetune_seed(cfg.seed, i, rep)
            asked = {"steps": steps, "lr": ft_cfg.lr, "warmup_steps": ft_cfg.warmup_steps, "batch_size": batch,
                     "seed": seed}
            if not path.exists():
                t0 = time.perf_counter()
                model = train_standalone(s, corpus.train, steps=steps, batch_size=batch,
                                         train_cfg=ft_cfg, seed=seed, model=net.extract(s))
                ppl = math.exp(nll(model, None, corpus.valid, max_tokens=cfg.eval_tokens))
                _atomic_write(path, json.dumps({"finetuned_ppl": ppl, "seconds": time.perf_counter() - t0,
                                                **asked}))
            done = json.loads(path.read_text())
            # Results from before these fields were recorded are taken at their word.
            had = {name: done.get(name, v) for name, v in asked.items()}
            if had != asked:
                raise ModelConfigError(f"{path} was fine-tuned with {had}, not {asked}; use another out")
            ppls.append(done["finetuned_ppl"])
        r["finetuned_ppl"] = float(np.mean(ppls)) if k > 1 else ppls[0]
        if k > 1:
            r["finetuned_ppls"], r["finetune_seeds"] = ppls, [finetune_seed(cfg.seed, i, j) for j in range(k)]
        say(f"fine-tuned {steps} steps" + (f" (mean of {k})" if k > 1 else "")
            + f": ppl {r['inherited_ppl']:.3f} -> {r['finetuned_ppl']:.3f} {s.short()}")
    y = [r["standalone_ppl"] for r in rows]
    result = {"steps": steps, **_correlations([r["finetuned_ppl"] for r in rows], y, cfg)}
    if tag is not None:
        result["lr"] = ft_cfg.lr
    if k > 1:
        # How well one fine-tune ranks the subnets as another does: the score's own noise.
        result["seeds"] = k
        result["seed_to_seed"] = replica_agreement([r["finetuned_ppls"] for r in rows])
    return result


def _finetune_label(ft) -> str:
    """'120 steps', with the rate and the number of fine-tunes averaged where not the defaults."""
    return (f"{ft['steps']} steps" + (f" at peak rate {ft['lr']:g}" if "lr" in ft else "")
            + (f", mean of {ft['seeds']} fine-tune seeds" if "seeds" in ft else ""))


def replica_agreement(ppls) -> dict:
    """How well standalone replicas agree: Kendall tau-b and Spearman rho of every
    pair of replicas (columns of ``ppls``, subnets x replicas) over the subnets, and
    their means over the pairs. The mean pair tau is how well one standalone run
    ranks the subnets as another does: the noise ceiling of a one-seed reference
    for a score as noisy as one run (a noise-free score can expect somewhat more)."""
    ppls = np.asarray(ppls, float)
    pairs = [{"replicas": [a, b], "kendall_tau": kendall_tau(ppls[:, a], ppls[:, b]),
              "spearman_rho": spearman_rho(ppls[:, a], ppls[:, b])}
             for a in range(ppls.shape[1]) for b in range(a + 1, ppls.shape[1])]
    return {"pairs": pairs, "kendall_tau_mean": float(np.mean([p["kendall_tau"] for p in pairs])),
            "spearman_rho_mean": float(np.mean([p["spearman_rho"] for p in pairs]))}


def _seed_summary(rows, results, cfg: RankConfig) -> dict:
    """Adds each row's replicas and their mean (the reference) and standard
    deviation; returns the correlations against the mean, against each replica,
    and between the replicas."""
    for r, reps in zip(rows, results):
        ppls = [x["standalone_ppl"] for x in reps]
        r["standalone_ppls"], r["standalone_seeds"] = ppls, [x["seed"] for x in reps]
        r["standalone_train_s"] = [x["train_s"] for x in reps]
        r["standalone_ppl_mean"], r["standalone_ppl_std"] = float(np.mean(ppls)), float(np.std(ppls, ddof=1))
    mean = [r["standalone_ppl_mean"] for r in rows]
    scores = {"inherited": [r["inherited_ppl"] for r in rows]}
    if "finetuned_ppl" in rows[0]:
        scores["finetuned"] = [r["finetuned_ppl"] for r in rows]
    ppls = np.array([r["standalone_ppls"] for r in rows])
    agreement = replica_agreement(ppls)
    # The mean pair tau over subnets drawn with replacement (bootstrap_ci resamples index pairs).
    idx = np.arange(len(rows))
    agreement["kendall_tau_mean_ci95"] = bootstrap_ci(
        lambda a, _: replica_agreement(ppls[a.astype(int)])["kendall_tau_mean"], idx, idx,
        resamples=cfg.bootstrap, seed=cfg.seed)
    return {
        "standalone_seeds": cfg.standalone_seeds, "seed_stride": SEED_STRIDE,
        "reference": "mean over the replicas of each subnet's standalone ppl; "
                     f"replica r of subnet i seeded seed + i + {SEED_STRIDE} r",
        **{name: _correlations(x, mean, cfg) for name, x in scores.items()},
        "tau_and_params": kendall_tau([r["params"] for r in rows], mean),
        "tau_and_macs": kendall_tau([r["macs_per_token"] for r in rows], mean),
        "per_replica": [{"replica": k, "seed_offset": SEED_STRIDE * k,
                         **{name: {"kendall_tau": kendall_tau(x, ppls[:, k]),
                                   "spearman_rho": spearman_rho(x, ppls[:, k])} for name, x in scores.items()}}
                        for k in range(cfg.standalone_seeds)],
        "seed_to_seed": agreement}


def _correlations(x, y, cfg: RankConfig) -> dict:
    ci = lambda stat: bootstrap_ci(stat, x, y, resamples=cfg.bootstrap, seed=cfg.seed)
    return {"kendall_tau": kendall_tau(x, y), "kendall_tau_ci95": ci(kendall_tau),
            "spearman_rho": spearman_rho(x, y), "spearman_rho_ci95": ci(spearman_rho)}


def _correlation_line(c) -> str:
    (lo, hi), (rlo, rhi) = c["kendall_tau_ci95"], c["spearman_rho_ci95"]
    return (f"Kendall tau {c['kendall_tau']:.3f} (95% CI {lo:.3f} to {hi:.3f}); "
            f"Spearman rho {c['spearman_rho']:.3f} (95% CI {rlo:.3f} to {rhi:.3f})")


def format_table(rows, summary, cfg: RankConfig) -> str:
    if "mean_of_seeds" in summary:
        return _format_seeds_table(rows, summary, cfg)
    ft = summary.get("finetuned")
    lines = [f"{summary['subnets']} subnets with int8 weights <= {cfg.weight_kib:g} KiB in a "
             f"{cfg.mac_band:g}x band of MACs/token; standalone: {summary['standalone_steps']} steps x "
             f"{summary['standalone_batch']} sequences (supernet: {summary['supernet_steps']} x "
             f"{summary['supernet_batch']} per subnet); valid ppl on {cfg.eval_tokens} stratified tokens.",
             "",
             f"Inherited vs standalone: {_correlation_line(summary)}; bootstrap over subnets, "
             f"{cfg.bootstrap} resamples. For reference, tau of parameters with standalone ppl "
             f"{summary['tau_and_params']:.3f}, of MACs {summary['tau_and_macs']:.3f}.",
             ""]
    if ft:
        lines += [f"After fine-tuning the extracted weights {_finetune_label(ft)}: {_correlation_line(ft)}.", ""]
        lines += _finetune_noise_lines(ft)
    lines += ["| subnet | params | MACs/token | inherited ppl | " + ("fine-tuned ppl | " if ft else "")
              + "standalone ppl |", "|---|---:|---:|---:|" + ("---:|" if ft else "") + "---:|"]
    for r in sorted(rows, key=lambda r: r["standalone_ppl"]):
        lines.append(f"| `{r['short']}` | {r['params']:,} | {r['macs_per_token']:,.0f} | "
                     f"{r['inherited_ppl']:.3f} | " + (f"{r['finetuned_ppl']:.3f} | " if ft else "")
                     + f"{r['standalone_ppl']:.3f} |")
    return "\n".join(lines)


def _finetune_noise_lines(ft) -> list:
    if "seed_to_seed" not in ft:
        return []
    a = ft["seed_to_seed"]
    return [f"Fine-tune seed to fine-tune seed (the fine-tuned score's own noise): Kendall tau "
            f"{a['kendall_tau_mean']:.3f} mean over pairs, Spearman rho {a['spearman_rho_mean']:.3f}.", ""]


def _format_seeds_table(rows, summary, cfg: RankConfig) -> str:
    """The table of a run with several standalone seeds: the one-seed numbers of
    before (replica 0), then the same against the mean of the seeds, each replica
    alone, and the replicas against each other."""
    ft, m = summary.get("finetuned"), summary["mean_of_seeds"]
    n, agree = m["standalone_seeds"], m["seed_to_seed"]
    seeds = lambda k: f"seed {cfg.seed + SEED_STRIDE * k} + i"
    lines = [f"{summary['subnets']} subnets with int8 weights <= {cfg.weight_kib:g} KiB in a "
             f"{cfg.mac_band:g}x band of MACs/token; standalone: {summary['standalone_steps']} steps x "
             f"{summary['standalone_batch']} sequences (supernet: {summary['supernet_steps']} x "
             f"{summary['supernet_batch']} per subnet), {n} seeds per subnet (replica r of the i-th subnet: "
             f"seed {cfg.seed} + i + {SEED_STRIDE} r); valid ppl on {cfg.eval_tokens} stratified tokens. "
             f"The reference is the mean of the {n} seeds' perplexities; 'one seed' is replica 0, "
             f"the reference of the one-seed runs. Bootstrap over subnets, {cfg.bootstrap} resamples.",
             "",
             f"Inherited vs standalone, one seed: {_correlation_line(summary)}. For reference, tau of "
             f"parameters with standalone ppl {summary['tau_and_params']:.3f}, of MACs "
             f"{summary['tau_and_macs']:.3f}.",
             ""]
    if ft:
        lines += [f"After fine-tuning the extracted weights {_finetune_label(ft)}, one seed: "
                  f"{_correlation_line(ft)}.", ""]
        lines += _finetune_noise_lines(ft)
    lines += [f"Inherited vs the mean of {n} seeds: {_correlation_line(m['inherited'])}. Tau of parameters "
              f"with it {m['tau_and_params']:.3f}, of MACs {m['tau_and_macs']:.3f}.", ""]
    if ft:
        lines += [f"Fine-tuned {_finetune_label(ft)} vs the mean of {n} seeds: "
                  f"{_correlation_line(m['finetuned'])}.", ""]
    lo, hi = agree["kendall_tau_mean_ci95"]
    lines += [f"Seed to seed (standalone replicas against each other; the noise ceiling of a one-seed "
              f"reference): Kendall tau {agree['kendall_tau_mean']:.3f} mean over pairs (95% CI {lo:.3f} "
              f"to {hi:.3f}), Spearman rho {agree['spearman_rho_mean']:.3f}; by pair: "
              + ", ".join(f"{a}-{b} tau {p['kendall_tau']:.3f} rho {p['spearman_rho']:.3f}"
                          for p in agree["pairs"] for a, b in [p["replicas"]]) + ".",
              "",
              "| reference | inherited tau | inherited rho |" + (" fine-tuned tau | fine-tuned rho |" if ft else ""),
              "|---|---:|---:|" + ("---:|---:|" if ft else "")]
    cells = lambda c: " | ".join(f"{c[name][stat]:.3f}" for name in ("inherited", "finetuned")[:1 + bool(ft)]
                                 for stat in ("kendall_tau", "spearman_rho"))
    for p in m["per_replica"]:
        lines.append(f"| replica {p['replica']} ({seeds(p['replica'])}) | {cells(p)} |")
    lines += [f"| mean of {n} seeds | {cells(m)} |", ""]
    lines += ["| subnet | params | MACs/token | inherited ppl | " + ("fine-tuned ppl | " if ft else "")
              + " | ".join(f"standalone ppl, replica {k}" for k in range(n))
              + f" | standalone ppl, mean ± std of {n} |",
              "|---|---:|---:|---:|" + ("---:|" if ft else "") + "---:|" * (n + 1)]
    for r in sorted(rows, key=lambda r: r["standalone_ppl_mean"]):
        lines.append(f"| `{r['short']}` | {r['params']:,} | {r['macs_per_token']:,.0f} | "
                     f"{r['inherited_ppl']:.3f} | " + (f"{r['finetuned_ppl']:.3f} | " if ft else "")
                     + " | ".join(f"{p:.3f}" for p in r["standalone_ppls"])
                     + f" | {r['standalone_ppl_mean']:.3f} ± {r['standalone_ppl_std']:.3f} |")
    lines += ["", f"(std: the sample standard deviation over the {n} seeds; rows sorted by the mean.)"]
    return "\n".join(lines)


# --- pooling tables -----------------------------------------------------------------------

POOL_MUST_AGREE = ("standalone_steps", "standalone_batch", "standalone_lr", "eval_tokens", "checkpoint")
"""Summary fields that tables must share to be pooled: subnets scored by one supernet
against standalone runs trained and evaluated alike."""


def _reference(row) -> float:
    """A row's standalone reference: the mean of its seeds where it has several."""
    return row.get("standalone_ppl_mean", row["standalone_ppl"])


def pool_tables(dirs, *, bootstrap: int = 2000, seed: int = 0) -> dict:
    """Pools the ``table.json`` of several ranking runs (e.g. the subnet set a proxy
    was chosen on and a held-out set) into one ranking over all their subnets:
    Kendall tau-b and Spearman rho of the inherited and (where every table has the
    same fine-tune) fine-tuned scores against each row's reference (the mean of its
    standalone seeds, or its one seed), with percentile bootstrap intervals over the
    pooled subnets; also against replica 0 alone (one seed for every subnet) and,
    for comparison, each table's own figures. Returns ``{"summary", "rows"}``; the
    rows carry ``set`` (the index of their table)."""
    if len(dirs) < 2:
        raise ModelConfigError("--pool takes at least two ranking output directories")
    tables = []
    for d in dirs:
        path = pathlib.Path(d) / "table.json"
        if not path.exists():
            raise ModelConfigError(f"{path} does not exist; run the ranking check for {d} first")
        tables.append(json.loads(path.read_text()))
    first = tables[0]["summary"]
    for d, t in zip(dirs[1:], tables[1:]):
        # The warmup is compared where both tables record it (older ones are taken at their word).
        keys = POOL_MUST_AGREE + (("standalone_warmup",) if "standalone_warmup" in t["summary"].keys() & first
                                  else ())
        had, want = {k: t["summary"][k] for k in keys}, {k: first[k] for k in keys}
        if had != want:
            raise ModelConfigError(f"{d} was ranked with {had}, {dirs[0]} with {want}: not poolable")
    fts = [t["summary"].get("finetuned") for t in tables]
    ft_key = lambda f: f and (f["steps"], f.get("lr"), f.get("seeds", 1))
    finetuned = fts[0] is not None and len({ft_key(f) for f in fts}) == 1
    rows = [{**r, "set": k} for k, t in enumerate(tables) for r in t["rows"]]
    keys = [r["key"] for r in rows]
    if len(set(keys)) != len(keys):
        raise ModelConfigError("a subnet is in more than one table; pool disjoint subnet sets")
    cfg = RankConfig(bootstrap=bootstrap, seed=seed)
    scores = {"inherited": [r["inherited_ppl"] for r in rows]}
    if finetuned:
        scores["finetuned"] = [r["finetuned_ppl"] for r in rows]
    refs = {"reference": [_reference(r) for r in rows], "replica0": [r["standalone_ppl"] for r in rows]}
    summary = {"sets": [str(d) for d in dirs], "subnets": len(rows),
               "subnets_per_set": [len(t["rows"]) for t in tables],
               "standalone_seeds_per_set": [t["summary"].get("mean_of_seeds", {}).get("standalone_seeds", 1)
                                            for t in tables],
               "reference_is": "each subnet's mean of its standalone seeds (its one seed where it has one)"
                               + (f", {first['standalone_lr']}" if isinstance(first["standalone_lr"], str)
                                  else f", at peak rate {first['standalone_lr']:g}"),
               **{k: first[k] for k in POOL_MUST_AGREE}}
    if finetuned:
        summary["finetune"] = {k: v for k, v in fts[0].items() if k in ("steps", "lr", "seeds")}
    for ref, y in refs.items():
        summary[ref] = {name: _correlations(x, y, cfg) for name, x in scores.items()}
    summary["per_set"] = [
        {name: {"kendall_tau": kendall_tau(x, y), "spearman_rho": spearman_rho(x, y)}
         for name in scores
         for x, y in [([r[f"{name}_ppl"] for r in t["rows"]], [_reference(r) for r in t["rows"]])]}
        for t in tables]
    return {"summary": summary, "rows": rows}


def format_pool(pooled) -> str:
    s, rows = pooled["summary"], pooled["rows"]
    names = [n for n in ("inherited", "finetuned") if n in s["reference"]]
    ft = s.get("finetune")
    label = lambda n: n if n == "inherited" else f"fine-tuned {_finetune_label(ft)}"
    lines = [f"{s['subnets']} subnets pooled from {len(s['sets'])} ranking runs ("
             + ", ".join(f"set {k}: {d}, {n} subnets, {m} standalone seed(s) each"
                         for k, (d, n, m) in enumerate(zip(s["sets"], s["subnets_per_set"],
                                                           s["standalone_seeds_per_set"])))
             + f"); one supernet ({s['checkpoint']}); reference: {s['reference_is']}. "
               f"Bootstrap over the pooled subnets.", ""]
    for n in names:
        lines.append(f"Pooled, {label(n)} vs the reference: {_correlation_line(s['reference'][n])}.")
        lines.append(f"Pooled, {label(n)} vs replica 0 (one seed each): {_correlation_line(s['replica0'][n])}.")
    lines += ["", "| set | subnets | " + " | ".join(f"{n} tau | {n} rho" for n in names) + " |",
              "|---|---:|" + "---:|---:|" * len(names)]
    for k, p in enumerate(s["per_set"]):
        lines.append(f"| {k}: {s['sets'][k]} | {s['subnets_per_set'][k]} | "
                     + " | ".join(f"{p[n]['kendall_tau']:.3f} | {p[n]['spearman_rho']:.3f}" for n in names) + " |")
    lines.append(f"| pooled | {s['subnets']} | " + " | ".join(
        f"{s['reference'][n]['kendall_tau']:.3f} | {s['reference'][n]['spearman_rho']:.3f}" for n in names) + " |")
    lines += ["", f"(Per set: against its own reference, no intervals. Pooled, one discordant pair moves tau "
                  f"by {4 / (s['subnets'] * (s['subnets'] - 1)):.3f}.)", ""]
    lines += ["| set | subnet | inherited ppl | " + ("fine-tuned ppl | " if "finetuned" in names else "")
              + "reference ppl |", "|---:|---|---:|" + ("---:|" if "finetuned" in names else "") + "---:|"]
    for r in sorted(rows, key=_reference):
        lines.append(f"| {r['set']} | `{r['short']}` | {r['inherited_ppl']:.3f} | "
                     + (f"{r['finetuned_ppl']:.3f} | " if "finetuned" in names else "") + f"{_reference(r):.3f} |")
    return "\n".join(lines)


def _write_tables(out, result: dict, text: str) -> dict:
    """``result`` as ``table.json`` and ``text`` as ``table.md`` into ``out``."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "table.json", json.dumps(result, indent=2) + "\n")
    _atomic_write(out / "table.md", text + "\n")
    return result


def run_pool(dirs, out, *, bootstrap: int = 2000, seed: int = 0) -> dict:
    """:func:`pool_tables`, written as ``table.json`` and ``table.md`` into ``out``."""
    pooled = pool_tables(dirs, bootstrap=bootstrap, seed=seed)
    return _write_tables(out, pooled, format_pool(pooled))


def best_of_rates(dirs, *, bootstrap: int = 2000, seed: int = 0) -> dict:
    """Each subnet's standalone reference at its best peak rate of several: ``dirs[0]`` is a
    finished ranking run (its ``table.json``: the subnets, their inherited and fine-tuned
    scores, its standalone runs at one rate); every other dir holds standalone runs of the
    same subnets at another rate, with the same steps, batch and seed (``--standalone-only``
    with only ``lr`` and ``out`` changed). A row's reference is the lowest of its
    perplexities over the rates (replica 0 of each), as a per-subnet rate sweep would pick;
    the summary gives tau and rho against it and against each rate alone, and how many
    subnets each rate won. Returns ``{"summary", "rows"}`` in ``table.json``'s form, so
    that :func:`pool_tables` pools such tables."""
    if len(dirs) < 2:
        raise ModelConfigError("--best-of takes a ranking output and at least one more rate's")
    path = pathlib.Path(dirs[0]) / "table.json"
    if not path.exists():
        raise ModelConfigError(f"{path} does not exist; run the ranking check for {dirs[0]} first")
    table = json.loads(path.read_text())
    first = table["summary"]
    if "mean_of_seeds" in first:
        raise ModelConfigError(f"{dirs[0]} has several standalone seeds; --best-of compares one "
                               "seed a rate (standalone_seeds = 1)")
    rates = [first["standalone_lr"]]
    rows = [dict(r, standalone_ppl_by_lr={f"{rates[0]:g}": r["standalone_ppl"]}) for r in table["rows"]]
    for d in dirs[1:]:
        lr = None
        for r in rows:
            f = pathlib.Path(d) / "standalone" / f"{r['key']}.json"
            if not f.exists():
                raise ModelConfigError(f"{f} does not exist; train {d}'s standalone runs first "
                                       "(--standalone-only)")
            x = json.loads(f.read_text())
            had = (x["steps"], x["batch_size"], x["seed"])
            want = (first["standalone_steps"], first["standalone_batch"], r["seed"])
            if had != want:
                raise ModelConfigError(f"{f} was trained with steps, batch, seed {had}, not {want}")
            warmups = (x.get("warmup_steps"), first.get("standalone_warmup"))
            if None not in warmups and warmups[0] != warmups[1]:
                raise ModelConfigError(f"{f} was warmed up {warmups[0]} steps, {dirs[0]}'s runs "
                                       f"{warmups[1]}: --best-of compares rates of one recipe")
            if lr is not None and x["lr"] != lr:
                raise ModelConfigError(f"{d} mixes standalone rates ({lr:g}, {x['lr']:g})")
            lr = x["lr"]
            r["standalone_ppl_by_lr"][f"{lr:g}"] = x["standalone_ppl"]
        if lr in rates:
            raise ModelConfigError(f"{d} has the rate {lr:g} again; give each rate once")
        rates.append(lr)
    rate_of = {f"{lr:g}": lr for lr in rates}
    for r in rows:
        by = r["standalone_ppl_by_lr"]
        r["standalone_lr_best"] = rate_of[min(by, key=by.get)]
        r["standalone_ppl"] = by[min(by, key=by.get)]
    cfg = RankConfig(bootstrap=bootstrap, seed=seed)
    scores = {"inherited": [r["inherited_ppl"] for r in rows]}
    if "finetuned_ppl" in rows[0]:
        scores["finetuned"] = [r["finetuned_ppl"] for r in rows]
    y = [r["standalone_ppl"] for r in rows]
    summary = {**{k: v for k, v in first.items() if k not in ("kendall_tau", "kendall_tau_ci95",
                                                              "spearman_rho", "spearman_rho_ci95")},
               **_correlations(scores["inherited"], y, cfg),
               "standalone_lr": "best of " + ", ".join(f"{lr:g}" for lr in rates),
               "subnets": len(rows), "standalone_lrs": rates, "sources": [str(d) for d in dirs],
               "wins": {f"{lr:g}": sum(r["standalone_lr_best"] == lr for r in rows) for lr in rates},
               "tau_and_params": kendall_tau([r["params"] for r in rows], y),
               "tau_and_macs": kendall_tau([r["macs_per_token"] for r in rows], y),
               "per_rate": {f"{lr:g}": {name: _correlations(x, [r["standalone_ppl_by_lr"][f"{lr:g}"]
                                                                for r in rows], cfg)
                                        for name, x in scores.items()} for lr in rates},
               # How far one fixed rate's order is from another's: the ceiling a score can
               # reach against both.
               "rate_to_rate": [{"rates": [f"{a:g}", f"{b:g}"], **_correlations(
                   *[[r["standalone_ppl_by_lr"][f"{v:g}"] for r in rows] for v in (a, b)], cfg)}
                   for i, a in enumerate(rates) for b in rates[i + 1:]]}
    if "finetuned" in scores:
        summary["finetuned"] = {**first["finetuned"], **_correlations(scores["finetuned"], y, cfg)}
    return {"summary": summary, "rows": rows}


def format_best_of(result) -> str:
    s, rows = result["summary"], result["rows"]
    names = ["inherited"] + (["finetuned"] if "finetuned" in s else [])
    label = lambda n: n if n == "inherited" else f"fine-tuned {_finetune_label(s['finetuned'])}"
    lines = [f"{s['subnets']} subnets; reference: each subnet's lowest standalone perplexity over the "
             f"peak rates {', '.join(f'{lr:g}' for lr in s['standalone_lrs'])} (one seed a rate; "
             + ", ".join(f"{lr} the best for {n}" for lr, n in s["wins"].items())
             + f"); {s['standalone_steps']} steps x {s['standalone_batch']} sequences each.", "",
             f"Inherited vs the best rate: {_correlation_line(s)}."]
    if "finetuned" in s:
        lines.append(f"{label('finetuned').capitalize()} vs the best rate: {_correlation_line(s['finetuned'])}.")
    lines += ["", "| reference | " + " | ".join(f"{n} tau | {n} rho" for n in names) + " |",
              "|---|" + "---:|---:|" * len(names)]
    best = {"inherited": s, **({"finetuned": s["finetuned"]} if "finetuned" in s else {})}
    for ref, cs in [("best rate", best)] + [(f"rate {lr}", c) for lr, c in s["per_rate"].items()]:
        lines.append(f"| {ref} | " + " | ".join(f"{cs[n]['kendall_tau']:.3f} | {cs[n]['spearman_rho']:.3f}"
                                                for n in names) + " |")
    lines += [""] + [f"Standalone at {a} vs at {b}: {_correlation_line(c)}." for c in s["rate_to_rate"]
                     for a, b in [c["rates"]]]
    rates = list(s["wins"])
    lines += ["", "| subnet | inherited ppl | " + ("fine-tuned ppl | " if "finetuned" in s else "")
              + " | ".join(f"standalone at {lr}" for lr in rates) + " | reference |",
              "|---|---:|" + ("---:|" if "finetuned" in s else "") + "---:|" * (len(rates) + 1)]
    for r in sorted(rows, key=lambda r: r["standalone_ppl"]):
        lines.append(f"| `{r['short']}` | {r['inherited_ppl']:.3f} | "
                     + (f"{r['finetuned_ppl']:.3f} | " if "finetuned" in s else "")
                     + " | ".join(f"{r['standalone_ppl_by_lr'][lr]:.3f}" for lr in rates)
                     + f" | {r['standalone_ppl']:.3f} |")
    return "\n".join(lines)


def run_best_of(dirs, out, *, bootstrap: int = 2000, seed: int = 0) -> dict:
    """:func:`best_of_rates`, written as ``table.json`` and ``table.md`` into ``out``."""
    result = best_of_rates(dirs, bootstrap=bootstrap, seed=seed)
    return _write_tables(out, result, format_best_of(result))


def _plot(rows, summary, path):
    plt = _pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    seeds = summary.get("mean_of_seeds")
    x = [r["inherited_ppl"] for r in rows]
    y = [r["standalone_ppl_mean" if seeds else "standalone_ppl"] for r in rows]
    if seeds:  # the reference is the mean of the seeds; bars: +- one standard deviation
        ax.errorbar(x, y, yerr=[r["standalone_ppl_std"] for r in rows], fmt="none", ecolor="lightgray")
    sc = ax.scatter(x, y, c=[r["params"] / 1e3 for r in rows], cmap="viridis")
    fig.colorbar(sc, ax=ax, label="parameters (thousands)")
    if "finetuned" in summary:
        ft = (seeds or summary)["finetuned"]
        ax.scatter([r["finetuned_ppl"] for r in rows], y, facecolors="none", edgecolors="gray",
                   label=f"after a {summary['finetuned']['steps']}-step fine-tune "
                         f"(tau {ft['kendall_tau']:.2f})")
        ax.legend(fontsize=8)
    ax.set_xlabel("from the supernet (filled: inherited): valid ppl")
    if seeds:
        n, c = seeds["standalone_seeds"], seeds["inherited"]
        ax.set_ylabel(f"trained standalone: valid ppl, mean of {n} seeds")
        lo, hi = c["kendall_tau_ci95"]
        ax.set_title(f"vs mean of {n} seeds: Kendall tau {c['kendall_tau']:.2f} [{lo:.2f}, {hi:.2f}], "
                     f"rho {c['spearman_rho']:.2f}\n(one seed: tau {summary['kendall_tau']:.2f}; seed to seed: "
                     f"tau {seeds['seed_to_seed']['kendall_tau_mean']:.2f})", fontsize=9)
    else:
        ax.set_ylabel("trained standalone: valid ppl")
        lo, hi = summary["kendall_tau_ci95"]
        ax.set_title(f"Kendall tau {summary['kendall_tau']:.2f} [{lo:.2f}, {hi:.2f}], "
                     f"Spearman rho {summary['spearman_rho']:.2f}", fontsize=9)
    ax.grid(alpha=0.3)
    _atomic_savefig(fig, path)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m search.model.rank",
                                     description="Check the supernet's ranking against standalone training.")
    parser.add_argument("--config", help="TOML with a [rank] table; see configs/rank_default.toml")
    parser.add_argument("--out", help="output directory (overrides [rank] out)")
    parser.add_argument("--workers", type=int, default=1, help="standalone trainings at once (processes)")
    parser.add_argument("--standalone-only", action="store_true", help="stop after the standalone training")
    parser.add_argument("--only", nargs="+", metavar="KEY",
                        help="with --standalone-only: train just these subnets of the draw (their keys)")
    parser.add_argument("--pool", nargs="+", metavar="DIR",
                        help="instead: pool the table.json of these ranking outputs into --out")
    parser.add_argument("--best-of", nargs="+", metavar="DIR",
                        help="instead: a ranking output and other rates' standalone runs of its "
                             "subnets; the reference is each subnet's best rate (into --out)")
    args = parser.parse_args(argv)
    if sum(map(bool, (args.pool, args.best_of, args.config))) != 1 \
            or ((args.pool or args.best_of) and not args.out):
        parser.error("give --config, or --pool DIR DIR ... or --best-of DIR DIR ... with --out")

    def work():
        if args.pool or args.best_of:
            (run_pool if args.pool else run_best_of)(args.pool or args.best_of, args.out)
            print((pathlib.Path(args.out) / "table.md").read_text())
            return
        cfg = load_rank_config(args.config)
        if args.out:
            cfg = replace(cfg, out=args.out)
        run_rank(cfg, workers=args.workers, standalone_only=args.standalone_only, only=args.only)
        if not args.standalone_only:
            print((pathlib.Path(cfg.out) / "table.md").read_text())
    return run_command(work, resume="rerun the same command to resume (finished subnets are kept)")


if __name__ == "__main__":
    sys.exit(main())
