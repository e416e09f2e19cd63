"""Tandem's model space: a decoder-only Transformer LM with per-layer FFN
variants, a weight-sharing supernet trained with the BigNAS sandwich rule,
exact parameter/MAC counts, and perplexity on a real corpus.

The API the co-search (``search/``) builds on::

    from search.model import (SearchSpace, SubnetConfig, Supernet, Transformer,
                              count_params, count_macs, gemm_shapes, evaluate,
                              load_supernet, load_corpus)

    net, space, tokenizer = load_supernet("build/supernet_default")  # a trained supernet
    corpus = load_corpus("shakespeare", tokenizer=tokenizer)
    sub = space.subnet(d_model=128, heads=(4, 4, 2), ffn_dims=(512, 256, 0),
                       ffn_variants=("standard", "lowrank", "none"), lowrank_rank=32)
    ppl = evaluate(net, sub, corpus)            # validation perplexity per character
    model = net.extract(sub)                    # standalone torch model, same logits
    count_params(sub)                           # exact parameters of `model`
    count_macs(sub, 128, mode="prompt")         # MACs of one 128-token forward pass
    count_macs(sub, 128, mode="generate")       # MACs of one decoded token at position 127
    for g in gemm_shapes(sub, 128, "prompt", batch=1):  # the matmuls the accelerator runs
        g.layer, g.op, g.m, g.k, g.n, g.count   # (M x K) @ (K x N), `count` times

    codec = GenomeCodec(space)                  # fixed-length index genome of every choice
    sub = codec.decode(codec.random(rng))       # encode / decode / repair / check
    scorer = Scorer(net, corpus, cache_dir="build/score_cache", baseline="largest")
    scorer.score(sub).ppl                       # stratified valid tokens, cached on disk by sub.key()
    scorer.paired(sub)                          # delta vs the baseline, with its standard error
    load_supernet(CI_SUPERNET)                  # the small supernet shipped in the repository

Pieces:

* :class:`SubnetConfig` (``space.py``): one architecture: ``d_model`` (shared
  by all layers), ``heads``/``ffn_dims``/``ffn_variants`` per layer (the
  number of layers is their length), ``lowrank_rank``, plus the fixed
  ``vocab_size``, ``context_len`` and ``head_dim``. Frozen and normalized, so
  it can be a dict key.
* FFN variants (:data:`FFN_VARIANTS`): ``standard`` (Linear-GELU-Linear),
  ``none`` (removed), ``lowrank`` (each weight U @ V of rank r), ``shared``
  (one FFN for every layer that chooses it) and ``glu`` (GEGLU).
* :class:`SearchSpace`: the choices; ``largest()``, ``smallest()``,
  ``sample(rng)``, ``subnet(...)``, ``check(cfg)`` (membership in every
  choice), ``largest(variant)``/``smallest(variant)`` per FFN variant,
  ``largest_within(max_params)``.
* :class:`Supernet` (``transformer.py``): weights of the largest subnet;
  ``forward(idx, subnet)`` slices them; ``extract(subnet)`` returns a
  standalone :class:`Transformer` (plain ``nn.Linear``/``nn.LayerNorm``, KV
  cache for generation).
* Counting (``space.py``): ``count_params``, ``count_macs``,
  ``macs_per_token`` and ``gemm_shapes``; conventions in that module's docstring.
* Data (``data.py``): ``load_corpus("shakespeare")`` (offline, from the
  ``shakespeare`` 0.6 package) or ``"wikitext2"`` (Hugging Face or a local
  copy); a character tokenizer built from the training split.
* Training (``train.py``): ``python -m search.model.train --config
  configs/supernet_default.toml``; ``train_supernet(run)``, ``load_supernet(dir)``.
* Evaluation (``perplexity.py``): ``evaluate(supernet, subnet, data)`` on
  windows stratified over the whole validation split.
* Scoring (``score.py``): :class:`Scorer`, cached and paired;
  ``python -m search.model.score --checkpoint DIR --subnet largest``.
* Genome (``genome.py``): :class:`GenomeCodec`.
* Ranking check (``rank.py``): ``python -m search.model.rank --config configs/rank_ci.toml``.
* The FFN study (``ffn_study.py``): ``python -m search.model.ffn_study``.

Figures (throughput, perplexities, evaluation time) are in ``docs/models.md``.
"""

from .space import (FFN_VARIANTS, SubnetConfig, SearchSpace, GemmShape, gemm_shapes, count_params,
                    count_macs, macs_per_token)
from .transformer import Transformer, Supernet
from .data import CharTokenizer, Corpus, load_corpus, load_shakespeare, load_wikitext2
from .config import ModelConfigError, TrainConfig, RunConfig, load_run_config
from .perplexity import evaluate, nll
from .genome import GenomeCodec

_LAZY = {"train_supernet": "train", "load_supernet": "train", "CI_SUPERNET": "train", "Scorer": "score"}


def __getattr__(name):
    # train.py and score.py are also ``python -m`` entry points; importing them lazily
    # keeps runpy from finding it half-imported.
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["FFN_VARIANTS", "SubnetConfig", "SearchSpace", "GemmShape", "gemm_shapes", "count_params",
           "count_macs", "macs_per_token", "Transformer", "Supernet", "CharTokenizer", "Corpus",
           "load_corpus", "load_shakespeare", "load_wikitext2", "evaluate", "nll", "ModelConfigError",
           "TrainConfig", "RunConfig", "load_run_config", "train_supernet", "load_supernet", "GenomeCodec",
           "Scorer", "CI_SUPERNET"]
