"""``python -m search.model.train --config configs/supernet_default.toml``

Trains a :class:`Supernet` with the BigNAS sandwich rule: every step
accumulates the gradients of a largest subnet, a smallest subnet and
``random_subnets`` random subnets (each on its own batch), then takes one
AdamW step. With ``variant_sampling = "balanced"`` (the default) the
largest and smallest are those of one FFN variant in every layer, the
variant taking turns step by step, and each layer of a random subnet deals
its variant from a per-layer deck (:class:`VariantDecks`), so that every
variant of every layer gets a comparable number of updates; the counts are
recorded (``ffn_updates`` in the checkpoint and the manifest's results).

Progress goes to stdout and ``metrics.jsonl`` (``ce``: cross-entropy with
the labels of every subnet of the step; ``kl``: with in-place distillation,
the KL divergence from the step's largest that the other subnets trained
on). A checkpoint (model, optimizer, step, every RNG state, the variant
decks and update counts) is written atomically every ``checkpoint_interval``
steps and at the end. SIGINT or SIGTERM lets the step under way finish and
then checkpoints that step boundary, so rerunning the same command resumes
bit for bit, whenever the signal came. ``--export DIR`` writes a small
float16 copy for the repository. The output directory carries
``manifest.json`` (config, git commit, versions, corpus hash, results).

Throughput (``tok/s`` in the progress lines, ``tokens_per_s`` in
``metrics.jsonl``) counts the tokens of every subnet of a step: a sandwich
step of 4 subnets at batch B and context T processes 4*B*T tokens.

Exit status: 0 done, 2 a bad config or corpus (one line on stderr),
130 interrupted (checkpoint saved; rerun to resume).
"""

import argparse
from dataclasses import replace
import json
import math
import os
import pathlib
import random
import signal
import sys
import threading
import time

import torch
import torch.nn.functional as F

from .config import ModelConfigError, RunConfig, load_run_config
from .data import Corpus, CorpusError, CharTokenizer, load_corpus, random_batch
from .perplexity import evaluate
from .space import SearchSpace, count_params
from .transformer import Supernet
from gen.provenance import git_commit

__all__ = ["train_supernet", "plan_updates", "load_supernet", "export_weights", "CI_SUPERNET", "VariantDecks", "step_subnets",
           "update_ratios", "resolve_device", "main", "CHECKPOINT", "MANIFEST"]

CHECKPOINT = "checkpoint.pt"
#: The CI-sized supernet shipped in the repository (configs/supernet_ci.toml).
CI_SUPERNET = pathlib.Path(__file__).resolve().parent / "data" / "supernet_ci"
MANIFEST = "manifest.json"
METRICS = "metrics.jsonl"
REPO = pathlib.Path(__file__).resolve().parents[2]


def versions() -> dict:
    import numpy
    return {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": numpy.__version__}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelConfigError("[train] device = 'cuda' but no GPU is available; use 'auto' or 'cpu'")
    return torch.device(name)


def _atomic_save(obj, path: pathlib.Path):
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_write(path: pathlib.Path, text: str):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _pyplot():
    """matplotlib.pyplot on the Agg backend, or None where matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _atomic_savefig(fig, path: pathlib.Path):
    """Lay out a matplotlib figure, save it as a PNG through a temporary file, close it."""
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    import matplotlib.pyplot as plt
    plt.close(fig)
    tmp.replace(path)


def _interrupt(signum, frame):
    """A SIGTERM handler for the command line tools: stop as Ctrl-C would."""
    raise KeyboardInterrupt


def run_command(work, *, errors=(ModelConfigError, CorpusError), resume: str = "rerun the same command to resume") -> int:
    """Run ``work()`` as a command line tool: SIGTERM stops it as Ctrl-C does
    (exit status 130, ``resume`` said on stderr); an error a user can cause is
    one line on stderr and status 2; otherwise 0."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        work()
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; {resume}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _lr(step: int, cfg) -> float:
    """Learning rate of optimizer step ``step`` (1-based)."""
    if step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def _optimizer(model, cfg):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": other, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(0.9, 0.99))


def _rng_state(py_rng, batch_gen):
    state = {"python": py_rng.getstate(), "batches": batch_gen.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state, py_rng, batch_gen):
    py_rng.setstate(state["python"])
    batch_gen.set_state(state["batches"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _config_key(cfg_dict: dict) -> dict:
    """The parts of a config that must match to resume (not where it is written)."""
    d = json.loads(json.dumps(cfg_dict))
    for key in ("out", "log_interval", "checkpoint_interval", "eval_interval", "threads", "device"):
        d["train"].pop(key, None)
    d.pop("study", None)  # a study's table, not this run's training
    if not d["train"].get("random_weight_kib"):
        d["train"].pop("random_weight_kib", None)  # the default; runs from before the key resume
    if not d["train"].get("sandwich", True):
        d["train"].pop("variant_sampling", None)  # no sandwich, no variants to sample
    return d


def export_weights(out_dir, dest, *, command: str = "") -> pathlib.Path:
    """A small copy of a trained supernet for the repository: float16 weights,
    space, tokenizer and config, no optimizer state (``load_supernet`` reads it).
    ``dest/manifest.json`` is the run's manifest plus the command that made it."""
    out_dir, dest = pathlib.Path(out_dir), pathlib.Path(dest)
    ckpt = torch.load(out_dir / CHECKPOINT, map_location="cpu", weights_only=False)
    dest.mkdir(parents=True, exist_ok=True)
    small = {"model": {k: v.half() if v.is_floating_point() else v for k, v in ckpt["model"].items()},
             "step": ckpt["step"], "config": ckpt["config"], "space": ckpt["space"],
             "tokenizer": ckpt["tokenizer"]}
    _atomic_save(small, dest / CHECKPOINT)
    manifest = json.loads((out_dir / MANIFEST).read_text())
    manifest["export"] = {"from": str(out_dir), "dtype": "float16", "command": command}
    _atomic_write(dest / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return dest / CHECKPOINT


def load_supernet(out_dir, device="cpu"):
    """(supernet, space, tokenizer) from a training output directory's checkpoint."""
    path = pathlib.Path(out_dir) / CHECKPOINT
    if not path.exists():
        raise ModelConfigError(f"{path} does not exist; train first with python -m search.model.train")
    ckpt = torch.load(path, map_location=device, weights_only=False)
    space = SearchSpace(**{k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["space"].items()})
    net = Supernet(space).to(device)
    net.load_state_dict(ckpt["model"])  # float16 exports are widened to float32 here
    net.eval()
    return net, space, CharTokenizer.from_json(ckpt["tokenizer"])


class VariantDecks:
    """Per-layer decks of FFN variants for the balanced sandwich.

    Each layer deals a random subnet's variant from its own deck, a shuffled
    copy of every variant, reshuffled when it runs out: over any stretch of
    draws a layer's variants are dealt equally often, give or take one.
    """

    def __init__(self, variants, layers: int, state=None):
        self.variants = tuple(variants)
        self.decks = [list(d) for d in state] if state is not None else [[] for _ in range(layers)]

    def deal(self, rng: random.Random, layer: int) -> str:
        deck = self.decks[layer]
        if not deck:
            deck.extend(self.variants)
            rng.shuffle(deck)
        return deck.pop()

    def state(self) -> list:
        return [list(d) for d in self.decks]


def step_subnets(space: SearchSpace, cfg, step: int, rng: random.Random, decks: VariantDecks) -> list:
    """The subnets sandwich step ``step`` (0-based) trains, the teacher first.

    ``variant_sampling = "balanced"``: the step's largest and smallest take
    variant ``step % len(variants)`` in every layer (each variant's own
    extremes, in turn), and the random subnets' layers deal their variants
    from :class:`VariantDecks`. ``"by_macs"``: the largest and smallest by
    MACs every step, random subnets drawn uniformly.
    """
    if not cfg.sandwich:
        return [space.largest()]
    if cfg.variant_sampling == "by_macs":
        return [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(cfg.random_subnets)]
    v = space.ffn_variants[step % len(space.ffn_variants)]
    subnets = [space.largest(v), space.smallest(v)]
    for _ in range(cfg.random_subnets):
        layers = rng.choice(space.layers)
        variants = [decks.deal(rng, i) for i in range(layers)]
        subnets.append(_fitting_sample(space, rng, variants, cfg.random_weight_kib))
    return subnets


def _fitting_sample(space: SearchSpace, rng: random.Random, variants, weight_kib: float, tries: int = 200):
    """A random subnet with these per-layer FFN variants whose int8 weights fit
    ``weight_kib`` KiB (0 = any), so that the variant decks stay balanced.

    The other choices are redrawn until one fits (uniform over the fitting
    subnets). Some mixes fit only at narrow widths that uniform draws seldom
    hit (GLU in all 4 layers of the default space fits 300 KiB only at width
    96, 2 heads and FFN 128 everywhere: 1 draw in 13,122); after ``tries``
    misses the choices are made one at a time in a random order, each uniform
    among the values with which the narrowest completion still fits.
    """
    for _ in range(tries):
        sub = space.sample(rng, ffn_variants=variants)
        if not weight_kib or count_params(sub) <= weight_kib * 1024:
            return sub
    n, lowrank = len(variants), "lowrank" in variants
    pick = {("d", 0): min(space.d_model), ("rank", 0): min(space.lowrank_rank) if lowrank else 0,
            ("shared", 0): min(space.ffn_dim),
            **{("heads", i): min(space.heads) for i in range(n)},
            **{("ffn", i): min(space.ffn_dim) for i in range(n)}}

    def build():
        dims = [pick[("shared", 0)] if v == "shared" else pick[("ffn", i)] for i, v in enumerate(variants)]
        return space.subnet(d_model=pick[("d", 0)], heads=[pick[("heads", i)] for i in range(n)],
                            ffn_dims=dims, ffn_variants=variants, lowrank_rank=pick[("rank", 0)])

    if count_params(build()) > weight_kib * 1024:
        raise ModelConfigError(f"random_weight_kib = {weight_kib:g}: no subnet with FFN variants "
                               f"{', '.join(variants)} fits; raise it or set it to 0")
    choices = {"d": space.d_model, "rank": space.lowrank_rank if lowrank else (0,),
               "shared": space.ffn_dim, "heads": space.heads, "ffn": space.ffn_dim}
    slots = list(pick)
    rng.shuffle(slots)
    for slot in slots:
        fits = []
        for value in choices[slot[0]]:
            pick[slot] = value
            if count_params(build()) <= weight_kib * 1024:
                fits.append(value)
        pick[slot] = rng.choice(fits)  # the narrowest value is always among them
    return build()


def count_updates(updates: dict, subnets) -> None:
    """Add one step's FFN updates: +1 for each (layer, variant) some subnet of the step uses."""
    for i, v in {(i, v) for sub in subnets for i, v in enumerate(sub.ffn_variants)}:
        updates[v][i] += 1


def update_ratios(updates: dict) -> list:
    """Per layer, the most- over the least-updated variant's count (inf when one got none)."""
    layers = len(next(iter(updates.values())))
    ratios = []
    for i in range(layers):
        counts = [c[i] for c in updates.values()]
        ratios.append(max(counts) / min(counts) if min(counts) else math.inf)
    return ratios


def plan_updates(run: RunConfig, vocab_size: int = 2) -> dict:
    """The FFN update counts per variant per layer that training ``run`` will
    record, from its sandwich schedule alone (no weights, no data: the subnet
    draws use only the seeded Python RNG). With ``random_weight_kib`` the
    draws depend on the parameter count: pass the corpus's ``vocab_size``."""
    space = replace(run.space, vocab_size=vocab_size)
    rng, decks = random.Random(run.train.seed), VariantDecks(space.ffn_variants, max(space.layers))
    updates = {v: [0] * max(space.layers) for v in space.ffn_variants}
    for step in range(run.train.steps):
        count_updates(updates, step_subnets(space, run.train, step, rng, decks))
    return {"ffn_updates": updates, "ffn_update_ratio": update_ratios(updates)}


def train_supernet(run: RunConfig, *, corpus: Corpus | None = None, stop_after: int | None = None,
          fresh: bool = False, quiet: bool = False) -> dict:
    """Train (or resume) the supernet of ``run``; returns the final results.

    corpus : an already loaded corpus (else loaded from ``run.train.corpus``).
    stop_after : stop (with a checkpoint) once this many steps are done in
        total, as an interruption would; rerunning resumes.
    fresh : ignore an existing checkpoint in the output directory.

    SIGINT and SIGTERM (when called from the main thread) do not stop a step
    half-way: the step under way finishes, the checkpoint of that step
    boundary is written and ``KeyboardInterrupt`` is raised, so a rerun
    continues bit for bit as if never stopped.
    """
    cfg = run.train
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    out = pathlib.Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT

    ckpt = None
    if ckpt_path.exists() and not fresh:
        # On the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest.
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if _config_key(ckpt["config"]) != _config_key(run.to_dict()):
            raise ModelConfigError(f"{ckpt_path} was made with a different config; "
                                   "use --fresh to start over or another --out")
    tokenizer = CharTokenizer.from_json(ckpt["tokenizer"]) if ckpt else None
    if corpus is None:
        corpus = load_corpus(cfg.corpus, cfg.corpus_path or None, tokenizer)
    elif tokenizer is not None and tokenizer.chars != corpus.tokenizer.chars:
        raise ModelConfigError(f"{ckpt_path} was made with another tokenizer")
    space = replace(run.space, vocab_size=corpus.tokenizer.vocab_size)

    torch.manual_seed(cfg.seed)
    net = Supernet(space).to(device)
    opt = _optimizer(net, cfg)
    py_rng = random.Random(cfg.seed)
    batch_gen = torch.Generator().manual_seed(cfg.seed + 1)
    decks = VariantDecks(space.ffn_variants, max(space.layers))
    # Steps in which each variant of each layer got a gradient.
    updates = {v: [0] * max(space.layers) for v in space.ffn_variants}
    step, history, window_steps, window_loss = 0, [], 0, 0.0
    if ckpt:
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        _set_rng_state(ckpt["rng"], py_rng, batch_gen)
        step, history = ckpt["step"], ckpt["history"]
        if "decks" in ckpt["rng"]:
            decks = VariantDecks(space.ffn_variants, max(space.layers), ckpt["rng"]["decks"])
            updates = ckpt["ffn_updates"]
            window_steps, window_loss = ckpt["window"]
        elif step < cfg.steps and cfg.sandwich:
            raise ModelConfigError(f"{ckpt_path} predates the balanced sandwich; use --fresh")
        # Records written after the checkpoint are replayed by the resumed run.
        _atomic_write(out / METRICS, "".join(json.dumps(h) + "\n" for h in history))
        say(f"resuming {out} at step {step}/{cfg.steps}")
    else:
        metrics = out / METRICS
        if metrics.exists():
            metrics.unlink()

    largest, smallest = space.largest(), space.smallest()
    manifest = {
        "config_name": run.name, "config_source": run.source, "config": run.to_dict(),
        "git_commit": git_commit(), "versions": versions(), "device": str(device),
        "threads": torch.get_num_threads(),
        "corpus": {"name": corpus.name, "sha256": corpus.sha256, "vocab_size": corpus.tokenizer.vocab_size,
                   "train_tokens": len(corpus.train), "valid_tokens": len(corpus.valid),
                   "test_tokens": len(corpus.test), "unigram_valid_ppl": corpus.unigram_perplexity()},
        "largest": {"subnet": largest.to_dict(), "params": count_params(largest)},
        "smallest": {"subnet": smallest.to_dict(), "params": count_params(smallest)},
        "supernet_params": sum(p.numel() for p in net.parameters()),
    }
    _atomic_write(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")

    def save():
        rng = _rng_state(py_rng, batch_gen)
        rng["decks"] = decks.state()
        _atomic_save({"model": net.state_dict(), "optimizer": opt.state_dict(), "step": step,
                      "rng": rng, "config": run.to_dict(), "space": space.to_dict(),
                      "tokenizer": corpus.tokenizer.to_json(), "history": history,
                      "ffn_updates": updates,
                      "window": (window_steps, window_loss)}, ckpt_path)

    def log(record):
        history.append(record)
        with open(out / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")

    def validate():
        net.eval()
        t0 = time.perf_counter()
        tokens = cfg.eval_tokens or None
        res = {"largest": evaluate(net, largest, corpus.valid, max_tokens=tokens)}
        res["smallest"] = res["largest"] if smallest == largest else \
            evaluate(net, smallest, corpus.valid, max_tokens=tokens)
        net.train()
        return res, (time.perf_counter() - t0) / (1 if smallest == largest else 2)

    seq = space.context_len
    n_sub = (2 + cfg.random_subnets) if cfg.sandwich else 1
    say(f"supernet {manifest['supernet_params']:,} params; largest {largest.short()} "
        f"({count_params(largest):,}); smallest {smallest.short()} ({count_params(smallest):,}); "
        f"{corpus.name}: {len(corpus.train):,} train tokens, vocab {corpus.tokenizer.vocab_size}, "
        f"unigram valid ppl {manifest['corpus']['unigram_valid_ppl']:.2f}; device {device}, "
        f"{torch.get_num_threads()} threads")
    net.train()
    window_t = time.perf_counter()
    stop = min(cfg.steps, stop_after) if stop_after is not None else cfg.steps
    signalled = []

    def request_stop(signum, frame):
        signalled.append(signum)

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while step < stop:
            if signalled:  # only here, between steps, is the state whole
                save()
                say(f"interrupted ({signal.Signals(signalled[0]).name}) at step {step}; checkpoint saved "
                    f"to {ckpt_path}; rerun the same command to resume")
                raise KeyboardInterrupt
            lr = _lr(step + 1, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            subnets = step_subnets(space, cfg, step, py_rng, decks)
            count_updates(updates, subnets)
            opt.zero_grad(set_to_none=True)
            teacher, ce, kl = None, [], []
            for i, sub in enumerate(subnets):
                if i == 0 or not cfg.distill:
                    # Without distillation each subnet gets its own batch (more text per step);
                    # with it, all learn from the largest on the largest's batch (BigNAS).
                    x, y = random_batch(corpus.train, cfg.batch_size, seq, batch_gen)
                    x, y = x.to(device), y.to(device)
                logits = net(x, sub).flatten(0, 1)
                if i > 0 and cfg.distill:
                    loss = F.kl_div(F.log_softmax(logits, -1), teacher, reduction="batchmean")
                    kl.append(loss.item())
                    ce.append(F.cross_entropy(logits.detach(), y.flatten()).item())
                else:
                    loss = F.cross_entropy(logits, y.flatten())
                    ce.append(loss.item())
                    kl.append(None)
                if i == 0 and cfg.distill:
                    teacher = F.softmax(logits.detach(), -1)
                (loss / len(subnets)).backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            window_steps += 1
            window_loss += ce[0]
            if step % cfg.log_interval == 0 or step == stop:
                dt = time.perf_counter() - window_t
                tok_s = window_steps * cfg.batch_size * seq * n_sub / dt
                eta = (cfg.steps - step) * dt / window_steps
                smallest_loss = ""
                if len(ce) > 1:
                    smallest_loss = f"smallest ce {ce[1]:.3f} " + (f"kl {kl[1]:.3f} " if kl[1] is not None else "")
                say(f"step {step}/{cfg.steps} lr {lr:.2e} largest ce {window_loss / window_steps:.3f} "
                    f"{smallest_loss}{tok_s:,.0f} tok/s eta {eta / 60:.1f} min")
                # ce: cross-entropy with the labels of every subnet of the last step (the step's
                # largest first, then its smallest); kl: KL to the largest's predictions, the loss
                # the distilled subnets trained on (None for a subnet trained on the labels).
                log({"step": step, "lr": lr, "ce_largest": window_loss / window_steps,
                     "subnets": [sub.short() for sub in subnets], "ce": ce, "kl": kl,
                     "tokens_per_s": tok_s, "s_per_step": dt / window_steps})
                window_t, window_steps, window_loss = time.perf_counter(), 0, 0.0
            if (cfg.eval_interval and step % cfg.eval_interval == 0) or step == cfg.steps:
                ppl, eval_s = validate()
                say(f"step {step}: valid ppl largest {ppl['largest']:.3f} smallest {ppl['smallest']:.3f} "
                    f"({eval_s:.1f} s per subnet, {cfg.eval_tokens or len(corpus.valid)} tokens)")
                log({"step": step, "valid_ppl": ppl, "eval_s_per_subnet": eval_s})
                window_t = time.perf_counter()
            if step % cfg.checkpoint_interval == 0 or step == stop:
                save()
    finally:
        for sig, previous in handlers.items():
            signal.signal(sig, previous)
    results = {"step": step, "done": step >= cfg.steps, "ffn_updates": updates,
               "ffn_update_ratio": update_ratios(updates)}
    finals = [h for h in history if "valid_ppl" in h and h["step"] == step]
    if finals:
        results["valid_ppl"] = finals[-1]["valid_ppl"]
        results["eval_s_per_subnet"] = finals[-1]["eval_s_per_subnet"]
    rates = [h["tokens_per_s"] for h in history if "tokens_per_s" in h]
    if rates:
        results["median_tokens_per_s"] = sorted(rates)[len(rates) // 2]
    manifest["results"] = results
    _atomic_write(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m search.model.train", description=__doc__.split("\n\n")[1])
    parser.add_argument("--config", required=True, help="TOML with [space] and [train]; see configs/supernet_*.toml")
    parser.add_argument("--out", help="output directory (overrides [train] out)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="overrides [train] device")
    parser.add_argument("--fresh", action="store_true", help="start over even if a checkpoint exists")
    parser.add_argument("--stop-after", type=int, metavar="STEPS",
                        help="stop with a checkpoint after this many steps in total (resume later)")
    parser.add_argument("--distill", choices=("on", "off"), help="overrides [train] distill")
    parser.add_argument("--plan", action="store_true",
                        help="print the FFN update counts of the config's sandwich schedule; train nothing")
    parser.add_argument("--variant-sampling", choices=("balanced", "by_macs"),
                        help="overrides [train] variant_sampling")
    parser.add_argument("--export", metavar="DIR",
                        help="when training is done, write a float16, optimizer-free copy to DIR")
    args = parser.parse_args(argv)
    try:
        run = load_run_config(args.config)
        overrides = {k: v for k, v in (("out", args.out), ("device", args.device)) if v}
        if args.distill:
            overrides["distill"] = args.distill == "on"
        if args.variant_sampling:
            overrides["variant_sampling"] = args.variant_sampling
        if overrides:
            run = replace(run, train=replace(run.train, **overrides))
        if args.plan:
            vocab = load_corpus(run.train.corpus, run.train.corpus_path or None).tokenizer.vocab_size \
                if run.train.random_weight_kib else 2  # the fit of a random draw counts the embedding
            print(json.dumps(plan_updates(run, vocab)))
            return 0
        results = train_supernet(run, stop_after=args.stop_after, fresh=args.fresh)
        if args.export and results["done"]:
            argv_text = " ".join(sys.argv[1:] if argv is None else argv)
            export_weights(run.train.out, args.export, command=f"python -m search.model.train {argv_text}")
    except (ModelConfigError, CorpusError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # SIGINT or SIGTERM: the checkpoint of the last whole step is saved
        return 130
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
