"""Cached perplexity of subnets of a trained supernet, and paired comparisons.

``python -m search.model.score --checkpoint build/supernet_default
[--subnet largest|smallest|JSON] [--baseline largest|smallest|JSON] [--split valid|test]
[--tokens N] [--cache DIR]``

:class:`Scorer` scores a subnet on a fixed token set: ``tokens`` predictions
in windows stratified over the whole split (:func:`eval_windows`, fixed by
``seed``), not a prefix. Each score keeps the mean NLL of every window, so
two subnets can be compared window by window: :meth:`Scorer.paired` gives the
difference from a named baseline subnet with its standard error (paired
differences have far less noise than two perplexities each with its own).

Scores are cached on disk, one JSON file per subnet named by its canonical
key (:meth:`SubnetConfig.key`), in a directory named by the checkpoint's
fingerprint, the split, the token count and the seed: a cache never mixes
two supernets or two token sets. Files are written to a unique temporary
name and renamed into place, so parallel workers sharing a cache never see
a partial file; two workers scoring the same subnet write the same bytes.

The command prints one JSON line; a bad argument is one line on stderr and
exit status 2.
"""

import argparse
from dataclasses import dataclass
import hashlib
import json
import math
import os
import pathlib
import sys
import tempfile
import time

import torch

from .config import ModelConfigError
from .data import Corpus, CorpusError, eval_windows, load_corpus
from .perplexity import window_nll
from .space import SubnetConfig

__all__ = ["Score", "Scorer", "fingerprint", "main"]


@dataclass(frozen=True)
class Score:
    """One subnet's score.

    nll : mean negative log-likelihood, nats per token; ppl = exp(nll).
    window_nll : mean NLL of each scored window (the paired comparisons use them).
    cached : whether it came from the disk cache.
    seconds : time this call took.
    """
    key: str
    subnet: SubnetConfig
    nll: float
    window_nll: tuple
    tokens: int
    cached: bool
    seconds: float

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)

    @property
    def bits_per_token(self) -> float:
        return self.nll / math.log(2)


def fingerprint(state_dict) -> str:
    """16 hex digits of a SHA-256 over a model's tensors (names, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(state_dict.items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


class Scorer:
    """Scores subnets of ``supernet`` on a fixed, stratified token set.

    data : a :class:`Corpus` (``split`` of it is scored) or a 1-D token tensor.
    tokens : predictions to score (rounded down to whole windows; None = the whole split).
    seed : places the stratified windows.
    cache_dir : where scores are cached (None = no cache).
    baseline : the subnet :meth:`paired` compares with by default: ``"largest"``,
        ``"smallest"`` or a :class:`SubnetConfig`.
    """

    def __init__(self, supernet, data, *, tokens: int | None = 32768, seed: int = 0, split: str = "valid",
                 cache_dir=None, baseline="largest", batch_size: int = 64):
        self.net = supernet
        self.space = supernet.space
        ids = data.split(split) if isinstance(data, Corpus) else data
        self.x, self.y = eval_windows(ids, self.space.context_len, tokens, seed=seed)
        self.tokens = self.y.numel()
        self.batch_size = batch_size
        self.baseline = self._named(baseline)
        self.cache = None
        if cache_dir is not None:
            self.cache = pathlib.Path(cache_dir) / (f"{fingerprint(supernet.state_dict())}-{split}-"
                                                    f"{self.tokens}-seed{seed}")
            self.cache.mkdir(parents=True, exist_ok=True)

    def _named(self, subnet) -> SubnetConfig:
        if subnet in ("largest", "smallest"):
            return getattr(self.space, subnet)()
        self.space.check(subnet)
        return subnet

    def score(self, subnet) -> Score:
        """The score of ``subnet`` (a :class:`SubnetConfig`, ``"largest"`` or ``"smallest"``)."""
        t0 = time.perf_counter()
        subnet = self._named(subnet)
        key = subnet.key()
        path = self.cache / f"{key}.json" if self.cache else None
        if path is not None and path.exists():
            try:
                d = json.loads(path.read_text())
                return Score(key, subnet, d["nll"], tuple(d["window_nll"]), d["tokens"], True,
                             time.perf_counter() - t0)
            except (ValueError, KeyError):
                pass  # not written by this module: score again and replace it
        w = window_nll(self.net, subnet, self.x, self.y, batch_size=self.batch_size)
        nll, windows = float(w.mean()), tuple(w.tolist())
        if path is not None:
            text = json.dumps({"key": key, "subnet": subnet.to_dict(), "nll": nll, "ppl": math.exp(nll),
                               "tokens": self.tokens, "window_nll": windows})
            fd, tmp = tempfile.mkstemp(dir=self.cache, prefix=f".{key}.", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        return Score(key, subnet, nll, windows, self.tokens, False, time.perf_counter() - t0)

    def paired(self, subnet, baseline=None) -> dict:
        """``subnet`` minus a baseline (default: the scorer's), window by window.

        delta_nll, delta_nll_se : mean difference of NLL (nats per token) and its
            standard error over the windows.
        delta_ppl, delta_ppl_se : difference of perplexities; the standard error
            by the delta method (gradient ppl_a, -ppl_b of exp(a) - exp(b)).
        """
        a = self.score(subnet)
        b = self.score(self.baseline if baseline is None else baseline)
        wa = torch.tensor(a.window_nll, dtype=torch.float64)
        wb = torch.tensor(b.window_nll, dtype=torch.float64)
        n = len(wa)
        se = lambda v: float(v.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
        return {"subnet": a.subnet.short(), "baseline": b.subnet.short(), "windows": n,
                "ppl": a.ppl, "baseline_ppl": b.ppl,
                "delta_nll": a.nll - b.nll, "delta_nll_se": se(wa - wb),
                "delta_ppl": a.ppl - b.ppl, "delta_ppl_se": se(a.ppl * wa - b.ppl * wb)}


def _subnet_arg(text, space):
    if text in ("largest", "smallest"):
        return text
    cfg = SubnetConfig.from_dict(json.loads(text))
    space.check(cfg)
    return cfg


def main(argv=None):
    from .train import load_supernet
    parser = argparse.ArgumentParser(prog="python -m search.model.score")
    parser.add_argument("--checkpoint", required=True, help="training output directory")
    parser.add_argument("--subnet", default="largest", help="largest, smallest or a SubnetConfig as JSON")
    parser.add_argument("--baseline", help="also compare with this subnet (largest, smallest or JSON)")
    parser.add_argument("--split", default="valid", choices=("valid", "test"))
    parser.add_argument("--tokens", type=int, default=0, help="tokens to score (0 = the whole split)")
    parser.add_argument("--seed", type=int, default=0, help="places the stratified windows")
    parser.add_argument("--cache", help="cache directory for scores")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        net, space, tokenizer = load_supernet(args.checkpoint)
        manifest = json.loads((pathlib.Path(args.checkpoint) / "manifest.json").read_text())
        train_cfg = manifest["config"]["train"]
        corpus = load_corpus(train_cfg["corpus"], train_cfg["corpus_path"] or None, tokenizer)
        subnet = _subnet_arg(args.subnet, space)
        baseline = _subnet_arg(args.baseline, space) if args.baseline else None
        scorer = Scorer(net, corpus, tokens=args.tokens or None, seed=args.seed, split=args.split,
                        cache_dir=args.cache, baseline=baseline or "largest")
    except (ModelConfigError, CorpusError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = scorer.score(subnet)
    out = {"subnet": s.subnet.short(), "key": s.key, "split": args.split, "ppl": s.ppl,
           "bits_per_token": s.bits_per_token, "seconds": s.seconds, "cached": s.cached, "tokens": s.tokens}
    if baseline is not None:
        out["paired"] = scorer.paired(subnet)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
