"""``python -m search.model.ffn_study [--config configs/model_ffn_study.toml] [--out DIR]``

The FFN study: the same baseline shape trained once per FFN variant, with the
same seeds, batches, steps and learning-rate schedule, then scored on the same
validation tokens; with several ``[study] seeds`` every variant is trained
once per seed and the table gives mean ± std. Writes ``table.md``, ``table.json`` and ``ffn_study.png``
(perplexity against parameters) into the output directory, one training
directory per variant beside them (each resumable: rerunning the command
skips finished variants and resumes an interrupted one), and
``manifest.json``.

Each row: variant, parameters (all, and without the embeddings), MACs per
token of a full-context prompt, validation perplexity, and the difference
from ``standard``. Compare with the thesis (T5-Mini on MNLI): the FFN is ~60%
of parameters and FLOPs; removing it cost 2.7 points; a structural
reparametrization cut ~30% of FLOPs and parameters for a 1-point drop.
"""

import argparse
from dataclasses import replace
import json
import math
import pathlib
import statistics
import sys
import time

from .config import ModelConfigError, RunConfig, StudyConfig, load_run_config
from .data import CorpusError, load_corpus
from .space import SearchSpace, SubnetConfig, count_params, macs_per_token
from .train import (train_supernet, git_commit, versions, _atomic_savefig, _atomic_write, _pyplot,
                    run_command)

__all__ = ["variant_subnet", "run_study", "main", "DEFAULT_CONFIG"]

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "model_ffn_study.toml"


def _non_embedding(cfg: SubnetConfig) -> int:
    return count_params(cfg) - (cfg.vocab_size + cfg.context_len) * cfg.d_model


def variant_subnet(study: StudyConfig, space: SearchSpace, variant: str) -> SubnetConfig:
    """The baseline shape of ``study`` with every layer's FFN set by ``variant``
    (``standard``, ``none``, ``shared``, ``glu``, ``glu:F``, ``glu:2/3``,
    ``lowrank:R`` or ``lowrank:P%``; see :class:`StudyConfig`)."""
    kind, _, arg = variant.partition(":")
    f, rank = study.ffn_dim, 0
    if kind == "glu" and arg:
        f = round(study.ffn_dim * 2 / 3) if arg == "2/3" else int(arg)
    if kind == "lowrank":
        if not arg:
            raise ValueError("lowrank needs a rank: lowrank:R or lowrank:P%")
        if arg.endswith("%"):
            # The rank whose model has the non-embedding parameters closest to (100-P)% of standard's.
            target = _non_embedding(variant_subnet(study, space, "standard")) * (1 - int(arg[:-1]) / 100)
            rank = min(range(1, study.ffn_dim + 1), key=lambda r: abs(
                _non_embedding(variant_subnet(study, space, f"lowrank:{r}")) - target))
        else:
            rank = int(arg)
    L = study.layers
    return SubnetConfig(space.vocab_size, space.context_len, study.d_model, space.head_dim,
                        (study.heads,) * L, (f,) * L, (kind,) * L, rank)


def _space_of(cfg: SubnetConfig) -> SearchSpace:
    """The one-point space whose supernet is exactly ``cfg``."""
    return SearchSpace(context_len=cfg.context_len, head_dim=cfg.head_dim, d_model=(cfg.d_model,),
                       layers=(cfg.layers,), heads=(cfg.heads[0],), ffn_dim=(max(cfg.ffn_dims) or 1,),
                       ffn_variants=(cfg.ffn_variants[0],),
                       lowrank_rank=(cfg.lowrank_rank,) if cfg.lowrank_rank else (),
                       vocab_size=cfg.vocab_size)


def _slug(variant):
    return variant.replace(":", "_").replace("/", "-").replace("%", "pct")


def study_seeds(run: RunConfig) -> tuple:
    """The training seeds of the study: ``[study] seeds``, else ``[train] seed``."""
    return run.study.seeds or (run.train.seed,)


def run_study(run: RunConfig, out, *, corpus=None, quiet=False, fresh=False) -> list[dict]:
    """Train and score every variant of ``run.study`` once per seed; returns the table rows.

    Each row holds the mean (``valid_ppl``), the sample standard deviation
    (``valid_ppl_std``, 0 with one seed) and the per-seed figures
    (``valid_ppl_seeds``); ``delta_ppl`` and ``delta_ppl_std`` are over the
    per-seed differences from ``standard`` (paired: same seed, same batches).
    fresh : retrain every variant even where a finished or partial run exists.
    """
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    corpus = corpus or load_corpus(run.train.corpus, run.train.corpus_path or None)
    space = replace(run.space, vocab_size=corpus.tokenizer.vocab_size)
    seeds = study_seeds(run)
    manifest = {"config_name": run.name, "config_source": run.source, "config": run.to_dict(),
                "git_commit": git_commit(), "versions": versions(), "seeds": list(seeds),
                "corpus": {"name": corpus.name, "sha256": corpus.sha256,
                           "vocab_size": corpus.tokenizer.vocab_size,
                           "unigram_valid_ppl": corpus.unigram_perplexity()}}
    _atomic_write(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    runs = {}  # (variant, seed) -> training results
    total = len(seeds) * len(run.study.variants)
    for j, seed in enumerate(seeds):
        for i, variant in enumerate(run.study.variants):
            cfg = variant_subnet(run.study, space, variant)
            # A study without [study] seeds keeps the single-seed layout: out/<variant>.
            where = out / f"seed{seed}" / _slug(variant) if run.study.seeds else out / _slug(variant)
            vrun = replace(run, space=replace(_space_of(cfg), vocab_size=0),
                           train=replace(run.train, out=str(where), seed=seed, sandwich=False,
                                         random_subnets=0))
            say(f"[{j * len(run.study.variants) + i + 1}/{total}] seed {seed} {variant}: {cfg.short()}, "
                f"{count_params(cfg):,} params")
            t0 = time.perf_counter()
            results = train_supernet(vrun, corpus=corpus, quiet=quiet, fresh=fresh)
            results["train_s_this_run"] = time.perf_counter() - t0
            runs[variant, seed] = results
            say(f"    valid ppl {results['valid_ppl']['largest']:.3f} "
                f"({results['eval_s_per_subnet']:.1f} s to score)")
    rows = []
    for variant in run.study.variants:
        cfg = variant_subnet(run.study, space, variant)
        ppls = [runs[variant, s]["valid_ppl"]["largest"] for s in seeds]
        rows.append({"variant": variant, "subnet": cfg.to_dict(), "params": count_params(cfg),
                     "non_embedding_params": _non_embedding(cfg),
                     "macs_per_token": macs_per_token(cfg, cfg.context_len, "prompt"),
                     "valid_ppl": statistics.fmean(ppls), "valid_ppl_std": _std(ppls),
                     "valid_ppl_seeds": ppls, "bits_per_token": math.log2(statistics.fmean(ppls)),
                     "train_s_this_run": sum(runs[variant, s]["train_s_this_run"] for s in seeds),
                     "eval_s": statistics.fmean(runs[variant, s]["eval_s_per_subnet"] for s in seeds),
                     "tokens_per_s": runs[variant, seeds[0]].get("median_tokens_per_s")})
    base = next((r for r in rows if r["variant"] == "standard"), None)
    for r in rows:
        if base:
            deltas = [a - b for a, b in zip(r["valid_ppl_seeds"], base["valid_ppl_seeds"])]
            r["delta_ppl"], r["delta_ppl_std"] = statistics.fmean(deltas), _std(deltas)
            r["params_vs_standard"] = r["params"] / base["params"] - 1
            r["non_embedding_vs_standard"] = r["non_embedding_params"] / base["non_embedding_params"] - 1
            r["macs_vs_standard"] = r["macs_per_token"] / base["macs_per_token"] - 1
    _atomic_write(out / "table.json", json.dumps(rows, indent=2) + "\n")
    _atomic_write(out / "table.md", format_table(rows, run, corpus) + "\n")
    _plot(rows, out / "ffn_study.png")
    manifest["rows"] = rows
    _atomic_write(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return rows


def _std(xs) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def format_table(rows, run: RunConfig, corpus) -> str:
    s, t = run.study, run.train
    lines = [f"Baseline: {s.layers} layers, d_model {s.d_model}, {s.heads} heads x {run.space.head_dim}, "
             f"ffn_dim {s.ffn_dim}, context {run.space.context_len}; {corpus.name} "
             f"(vocab {corpus.tokenizer.vocab_size}, unigram valid ppl {corpus.unigram_perplexity():.2f}); "
             f"{t.steps} steps x {t.batch_size} sequences, seeds {', '.join(map(str, study_seeds(run)))}; "
             f"valid ppl on {t.eval_tokens or len(corpus.valid) - 1} tokens (stratified over the split); "
             "mean ± std over seeds.",
             "",
             "| variant | FFN | params | non-emb. params (vs std) | MACs/token (vs std) | valid ppl | "
             "bits/char | Δppl vs standard |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        sub = SubnetConfig.from_dict(r["subnet"])
        f = sub.ffn_dims[0]
        ffn = {"none": "—", "lowrank": f"{f}, rank {sub.lowrank_rank}"}.get(sub.ffn_variants[0], str(f))
        pct = lambda key: f" ({r[key] * 100:+.0f}%)" if key in r else ""
        delta = f"{r['delta_ppl']:+.3f} ± {r['delta_ppl_std']:.3f}" if "delta_ppl" in r else ""
        lines.append(f"| {r['variant']} | {ffn} | {r['params']:,} | {r['non_embedding_params']:,}"
                     f"{pct('non_embedding_vs_standard')} | {r['macs_per_token']:,.0f}{pct('macs_vs_standard')} | "
                     f"{r['valid_ppl']:.3f} ± {r['valid_ppl_std']:.3f} | {r['bits_per_token']:.3f} | {delta} |")
    return "\n".join(lines)


def _plot(rows, path):
    plt = _pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.errorbar(r["non_embedding_params"] / 1e3, r["valid_ppl"], yerr=r.get("valid_ppl_std", 0),
                    fmt="o", capsize=3)
        ax.annotate(r["variant"], (r["non_embedding_params"] / 1e3, r["valid_ppl"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("non-embedding parameters (thousands)")
    ax.set_ylabel("validation perplexity (per character)")
    ax.set_title("FFN variants at the same training budget")
    ax.grid(alpha=0.3)
    _atomic_savefig(fig, path)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m search.model.ffn_study",
                                     description="Train each FFN variant alike and tabulate perplexity.")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="TOML with [space], [train] and [study] (default: %(default)s)")
    parser.add_argument("--out", help="output directory (default: [train] out)")
    parser.add_argument("--fresh", action="store_true", help="retrain every variant from scratch")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                        help="train only these of the config's seeds (e.g. one process per seed); "
                             "a final run without --seeds tabulates them all")
    args = parser.parse_args(argv)

    def work():
        run = load_run_config(args.config, need_study=True)
        if args.seeds:
            unknown = set(args.seeds) - set(study_seeds(run))
            if unknown:
                raise ModelConfigError(f"--seeds {sorted(unknown)} not in the config's seeds "
                                       f"{list(study_seeds(run))}")
            run = replace(run, study=replace(run.study, seeds=tuple(args.seeds)))
        out = args.out or run.train.out
        run_study(run, out, fresh=args.fresh)
        print((pathlib.Path(out) / "table.md").read_text())
    return run_command(work, errors=(ModelConfigError, CorpusError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
