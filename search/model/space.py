"""The model space: one architecture (:class:`SubnetConfig`), the space of them
(:class:`SearchSpace`), and exact counts of what an architecture costs.

Counting conventions (the same everywhere in Tandem):

* A **MAC** is one multiply-accumulate of a matrix product. Only matrix
  products count: embedding look-ups, LayerNorm, softmax, GELU, the causal
  mask, residual adds and the GLU gate's elementwise product are not MACs.
  FLOPs as :mod:`torch.utils.flop_counter` reports them are ``2 * MACs``.
* Attention scores are counted for the full ``query x key`` square, causal
  mask or not: that is the GEMM a systolic array executes (and what
  ``flop_counter`` counts).
* ``mode="prompt"``: one forward pass over a prompt of ``seq_len`` tokens,
  logits at every position (as in training and perplexity evaluation).
* ``mode="generate"``: one decoding step with a KV cache: one new token at
  position ``seq_len - 1`` that attends to ``seq_len`` keys (itself included).
* The LM head is tied to the token embedding: it costs MACs but no extra
  parameters.
"""

from dataclasses import dataclass
import hashlib
import json
import random
import typing

__all__ = ["FFN_VARIANTS", "SubnetConfig", "SearchSpace", "GemmShape", "gemm_shapes",
           "count_params", "count_macs", "macs_per_token"]

#: FFN variants a layer may choose.
#: ``standard``: Linear(d, f) -> GELU -> Linear(f, d).
#: ``none``: no FFN (the residual passes through).
#: ``lowrank``: ``standard`` with each weight reparametrized as U @ V of rank r.
#: ``shared``: one ``standard`` FFN whose weights all layers choosing it share.
#: ``glu``: gated (GEGLU): (GELU(x Wg) * (x Wu)) Wd.
FFN_VARIANTS = ("standard", "none", "lowrank", "shared", "glu")


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")


@dataclass(frozen=True)
class SubnetConfig:
    """One decoder-only Transformer LM architecture.

    All sizes are counts of elements (not bytes).

    vocab_size : tokens in the vocabulary, >= 2.
    context_len : longest sequence the model reads (positions), >= 1.
    d_model : width of the residual stream, shared by all layers.
    head_dim : width of one attention head (fixed across the space).
    heads : attention heads of each layer; ``len(heads)`` is the number of layers.
    ffn_dims : FFN hidden width of each layer (0 for ``none`` layers; every
        ``shared`` layer must give the same width, since they share one FFN).
    ffn_variants : one of :data:`FFN_VARIANTS` per layer.
    lowrank_rank : rank r of every ``lowrank`` weight (0 when no layer is lowrank).

    The config is normalized at construction: ``none`` layers get
    ``ffn_dim = 0`` and ``lowrank_rank`` becomes 0 when no layer is lowrank,
    so equal architectures compare (and hash) equal.
    """
    vocab_size: int
    context_len: int
    d_model: int
    head_dim: int
    heads: tuple
    ffn_dims: tuple
    ffn_variants: tuple
    lowrank_rank: int = 0

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)
        set_("heads", tuple(self.heads))
        set_("ffn_variants", tuple(self.ffn_variants))
        for name in ("vocab_size", "context_len", "d_model", "head_dim"):
            _positive(name, getattr(self, name))
        if not self.heads:
            raise ValueError("heads must name at least one layer, not ()")
        if len(self.ffn_dims) != len(self.heads) or len(self.ffn_variants) != len(self.heads):
            raise ValueError(f"heads, ffn_dims and ffn_variants must have one entry per layer; "
                             f"got {len(self.heads)}, {len(self.ffn_dims)}, {len(self.ffn_variants)}")
        for h in self.heads:
            _positive("heads[i]", h)
        for v in self.ffn_variants:
            if v not in FFN_VARIANTS:
                raise ValueError(f"ffn variant {v!r} is not one of {', '.join(FFN_VARIANTS)}")
        dims = tuple(0 if v == "none" else f for f, v in zip(self.ffn_dims, self.ffn_variants))
        for f, v in zip(dims, self.ffn_variants):
            if v != "none":
                _positive(f"ffn_dim of a {v} layer", f)
        set_("ffn_dims", dims)
        shared = {f for f, v in zip(dims, self.ffn_variants) if v == "shared"}
        if len(shared) > 1:
            raise ValueError(f"shared layers share one FFN, so they need one ffn_dim, not {sorted(shared)}")
        if "lowrank" in self.ffn_variants:
            _positive("lowrank_rank", self.lowrank_rank)
        else:
            set_("lowrank_rank", 0)

    @property
    def layers(self) -> int:
        return len(self.heads)

    @property
    def shared_ffn_dim(self) -> int:
        """Hidden width of the shared FFN, 0 when no layer uses it."""
        return next((f for f, v in zip(self.ffn_dims, self.ffn_variants) if v == "shared"), 0)

    def to_dict(self) -> dict:
        return {"vocab_size": self.vocab_size, "context_len": self.context_len,
                "d_model": self.d_model, "head_dim": self.head_dim, "heads": list(self.heads),
                "ffn_dims": list(self.ffn_dims), "ffn_variants": list(self.ffn_variants),
                "lowrank_rank": self.lowrank_rank}

    def key(self) -> str:
        """A canonical name of this architecture: equal configs (after
        normalization) have equal keys; 16 hex digits of a SHA-256."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict) -> "SubnetConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def short(self) -> str:
        """A compact one-line description, e.g. ``L4 d192 h4,4,4,4 ffn standard:768x4``."""
        layers = ",".join(f"{v}:{f}" if v != "none" else "none"
                          for f, v in zip(self.ffn_dims, self.ffn_variants))
        rank = f" r{self.lowrank_rank}" if self.lowrank_rank else ""
        return (f"L{self.layers} d{self.d_model} h{','.join(map(str, self.heads))} "
                f"ffn[{layers}]{rank}")


@dataclass(frozen=True)
class SearchSpace:
    """The choices a subnet may make; the supernet holds weights for the largest.

    context_len, head_dim : fixed for the whole space.
    d_model : choices of the residual width (one per subnet, shared by its layers).
    layers : choices of the number of layers.
    heads : choices of heads per layer.
    ffn_dim : choices of FFN hidden width per layer.
    ffn_variants : the FFN variants a layer may choose.
    lowrank_rank : choices of the low-rank rank (one per subnet); needed when
        ``lowrank`` is allowed.
    vocab_size : set from the corpus's tokenizer (0 until then).
    """
    context_len: int = 128
    head_dim: int = 32
    d_model: tuple = (192,)
    layers: tuple = (2, 3, 4)
    heads: tuple = (2, 4)
    ffn_dim: tuple = (256, 512, 768)
    ffn_variants: tuple = FFN_VARIANTS
    lowrank_rank: tuple = (32, 64)
    vocab_size: int = 0

    def __post_init__(self):
        for name in ("d_model", "layers", "heads", "ffn_dim", "ffn_variants", "lowrank_rank"):
            value = getattr(self, name)
            if isinstance(value, (int, str)):
                value = (value,)
            object.__setattr__(self, name, tuple(sorted(set(value), key=value.index))
                               if name == "ffn_variants" else tuple(sorted(set(value))))
        _positive("context_len", self.context_len)
        _positive("head_dim", self.head_dim)
        for name in ("d_model", "layers", "heads", "ffn_dim"):
            if not getattr(self, name):
                raise ValueError(f"{name} needs at least one choice")
            for v in getattr(self, name):
                _positive(f"{name} choice", v)
        if not self.ffn_variants:
            raise ValueError("ffn_variants needs at least one choice")
        for v in self.ffn_variants:
            if v not in FFN_VARIANTS:
                raise ValueError(f"ffn_variants: {v!r} is not one of {', '.join(FFN_VARIANTS)}")
        if "lowrank" in self.ffn_variants:
            if not self.lowrank_rank:
                raise ValueError("lowrank_rank needs at least one choice when lowrank is allowed")
            for v in self.lowrank_rank:
                _positive("lowrank_rank choice", v)

    # --- the subnets the sandwich rule trains -------------------------------------------

    def subnet(self, *, d_model, heads, ffn_dims, ffn_variants, lowrank_rank=0) -> SubnetConfig:
        """A :class:`SubnetConfig` of this space (fills vocab, context and head_dim)."""
        cfg = SubnetConfig(self.vocab_size, self.context_len, d_model, self.head_dim,
                           tuple(heads), tuple(ffn_dims), tuple(ffn_variants), lowrank_rank)
        self.check(cfg)
        return cfg

    def _extreme(self, pick, variant=None) -> SubnetConfig:
        layers = pick(self.layers)
        d, h, f = pick(self.d_model), pick(self.heads), pick(self.ffn_dim)
        rank = pick(self.lowrank_rank) if self.lowrank_rank else 0
        if variant is None:
            costs = {v: _ffn_macs_per_token(d, f, v, rank) for v in self.ffn_variants}
            variant = pick(self.ffn_variants, key=costs.__getitem__)
        elif variant not in self.ffn_variants:
            raise ValueError(f"ffn variant {variant!r} is not allowed in this space "
                             f"({', '.join(self.ffn_variants)})")
        return self.subnet(d_model=d, heads=(h,) * layers, ffn_dims=(f,) * layers,
                           ffn_variants=(variant,) * layers,
                           lowrank_rank=rank if variant == "lowrank" else 0)

    def largest(self, variant: str | None = None) -> SubnetConfig:
        """Every dimension at its largest choice; in every layer ``variant``, or
        (None) the FFN variant with the most MACs."""
        return self._extreme(lambda xs, key=None: max(xs, key=key), variant)

    def smallest(self, variant: str | None = None) -> SubnetConfig:
        """Every dimension at its smallest choice; in every layer ``variant``, or
        (None) the FFN variant with the fewest MACs."""
        return self._extreme(lambda xs, key=None: min(xs, key=key), variant)

    def largest_within(self, max_params: int) -> SubnetConfig | None:
        """The uniform subnet (every layer alike) with the most parameters, then
        MACs, of at most ``max_params`` parameters; None when none fits. E.g.
        the largest that fits a board: ``max_params = weight_kib * 1024`` for
        int8 weights."""
        best, best_cost = None, None
        for layers in self.layers:
            for d in self.d_model:
                for h in self.heads:
                    for f in self.ffn_dim:
                        for v in self.ffn_variants:
                            for r in (self.lowrank_rank if v == "lowrank" else (0,)):
                                cfg = self.subnet(d_model=d, heads=(h,) * layers, ffn_dims=(f,) * layers,
                                                  ffn_variants=(v,) * layers, lowrank_rank=r)
                                cost = (count_params(cfg), count_macs(cfg, self.context_len))
                                if cost[0] <= max_params and (best_cost is None or cost > best_cost):
                                    best, best_cost = cfg, cost
        return best

    def sample(self, rng: random.Random, *, layers: int | None = None,
               ffn_variants: typing.Sequence[str] | None = None) -> SubnetConfig:
        """A subnet with every choice drawn uniformly (layers, then per-layer choices).

        layers, ffn_variants : fix the number of layers and each layer's FFN
            variant instead of drawing them (the supernet trainer balances
            variants this way); the other choices are still drawn.
        """
        if ffn_variants is not None:
            layers = len(ffn_variants) if layers is None else layers
            if len(ffn_variants) != layers:
                raise ValueError(f"ffn_variants names {len(ffn_variants)} layers, not {layers}")
        layers = rng.choice(self.layers) if layers is None else layers
        d = rng.choice(self.d_model)
        shared_dim = rng.choice(self.ffn_dim)
        rank = rng.choice(self.lowrank_rank) if "lowrank" in self.ffn_variants else 0
        heads, dims, variants = [], [], []
        for i in range(layers):
            heads.append(rng.choice(self.heads))
            f = rng.choice(self.ffn_dim)
            v = rng.choice(self.ffn_variants) if ffn_variants is None else ffn_variants[i]
            dims.append(shared_dim if v == "shared" else f)
            variants.append(v)
        return self.subnet(d_model=d, heads=heads, ffn_dims=dims, ffn_variants=variants,
                           lowrank_rank=rank if "lowrank" in variants else 0)

    def check(self, cfg: SubnetConfig) -> None:
        """Raise ValueError naming the first choice of ``cfg`` that is not one of
        this space's choices (a supernet could slice a smaller width, but it never
        trained that slice, so its score would mean nothing)."""
        if cfg.vocab_size != self.vocab_size or cfg.context_len != self.context_len \
                or cfg.head_dim != self.head_dim:
            raise ValueError(f"subnet has vocab_size/context_len/head_dim {cfg.vocab_size}/"
                             f"{cfg.context_len}/{cfg.head_dim}; the space has {self.vocab_size}/"
                             f"{self.context_len}/{self.head_dim}")
        def member(name, value, choices):
            if value not in choices:
                raise ValueError(f"subnet {name} {value} is not one of the space's choices "
                                 f"({', '.join(map(str, choices))})")
        member("d_model", cfg.d_model, self.d_model)
        member("layers", cfg.layers, self.layers)
        for i, (h, f, v) in enumerate(zip(cfg.heads, cfg.ffn_dims, cfg.ffn_variants)):
            if v not in self.ffn_variants:
                raise ValueError(f"ffn variant {v!r} is not allowed in this space "
                                 f"({', '.join(self.ffn_variants)})")
            member(f"heads[{i}]", h, self.heads)
            if v != "none":
                member(f"ffn_dims[{i}]", f, self.ffn_dim)
        if cfg.lowrank_rank:
            member("lowrank_rank", cfg.lowrank_rank, self.lowrank_rank)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


# --- exact counts -----------------------------------------------------------------------

class GemmShape(typing.NamedTuple):
    """One matrix product ``(M x K) @ (K x N)``, executed ``count`` times.

    layer : transformer layer index, or None for the LM head.
    op : "q", "k", "v", "scores" (Q K^T of one head), "context" (P V of one head),
        "out" (attention output projection), "ffn_up", "ffn_gate", "ffn_down",
        "ffn_up_v", "ffn_up_u", "ffn_down_v", "ffn_down_u" (lowrank factors:
        ``_v`` is the rank-r projection, ``_u`` the expansion), "lm_head".
    m : rows of the activation operand (tokens).
    k : reduction length.
    n : output columns (the weight's output features, or keys for "scores").
    count : how many such products (heads x sequences for "scores"/"context", else 1).
    weight : True when the right operand is a model weight (stationary in a
        weight-stationary array); False for the activation x activation
        products of attention.
    """
    layer: int | None
    op: str
    m: int
    k: int
    n: int
    count: int = 1
    weight: bool = True

    @property
    def macs(self) -> int:
        return self.m * self.k * self.n * self.count


def _ffn_gemms(layer, tokens, d, f, variant, rank):
    if variant in ("standard", "shared"):
        return [GemmShape(layer, "ffn_up", tokens, d, f), GemmShape(layer, "ffn_down", tokens, f, d)]
    if variant == "glu":
        return [GemmShape(layer, "ffn_gate", tokens, d, f), GemmShape(layer, "ffn_up", tokens, d, f),
                GemmShape(layer, "ffn_down", tokens, f, d)]
    if variant == "lowrank":
        return [GemmShape(layer, "ffn_up_v", tokens, d, rank), GemmShape(layer, "ffn_up_u", tokens, rank, f),
                GemmShape(layer, "ffn_down_v", tokens, f, rank), GemmShape(layer, "ffn_down_u", tokens, rank, d)]
    return []


def _ffn_macs_per_token(d, f, variant, rank):
    return sum(g.macs for g in _ffn_gemms(0, 1, d, f, variant, rank))


def _check_mode(cfg, seq_len, mode):
    if mode not in ("prompt", "generate"):
        raise ValueError(f"mode must be 'prompt' or 'generate', not {mode!r}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or not 1 <= seq_len <= cfg.context_len:
        raise ValueError(f"seq_len must be from 1 to context_len={cfg.context_len}, not {seq_len!r}")


def gemm_shapes(cfg: SubnetConfig, seq_len: int, mode: str = "prompt", *,
                lm_head: bool = True, batch: int = 1) -> list[GemmShape]:
    """The matrix products one forward pass of ``cfg`` executes, in order.

    seq_len : prompt length (``mode="prompt"``) or the position + 1 of the
        generated token, i.e. the number of keys it attends to (``mode="generate"``).
    lm_head : include the tied output projection to the vocabulary.
    batch : sequences processed together. Products with a weight stack the
        batch's tokens (``m`` is ``batch`` times the tokens of one sequence);
        attention's ``scores`` and ``context`` are per sequence and per head,
        so the batch multiplies their ``count``, not ``m``.
    """
    _check_mode(cfg, seq_len, mode)
    _positive("batch", batch)
    tokens = seq_len if mode == "prompt" else 1
    rows = batch * tokens
    d, hd = cfg.d_model, cfg.head_dim
    out = []
    for i, (h, f, v) in enumerate(zip(cfg.heads, cfg.ffn_dims, cfg.ffn_variants)):
        a = h * hd
        out += [GemmShape(i, "q", rows, d, a), GemmShape(i, "k", rows, d, a),
                GemmShape(i, "v", rows, d, a),
                GemmShape(i, "scores", tokens, hd, seq_len, batch * h, False),
                GemmShape(i, "context", tokens, seq_len, hd, batch * h, False),
                GemmShape(i, "out", rows, a, d)]
        out += _ffn_gemms(i, rows, d, f, v, cfg.lowrank_rank)
    if lm_head:
        out.append(GemmShape(None, "lm_head", rows, d, cfg.vocab_size))
    return out


def count_macs(cfg: SubnetConfig, seq_len: int, mode: str = "prompt", *, lm_head: bool = True,
               batch: int = 1) -> int:
    """Exact multiply-accumulates of one forward pass of ``batch`` sequences.

    ``mode="prompt"``: all MACs to process a ``seq_len``-token prompt.
    ``mode="generate"``: MACs to produce one token that attends to ``seq_len``
    keys, with a KV cache. See :func:`macs_per_token` for per-token figures.
    """
    return sum(g.macs for g in gemm_shapes(cfg, seq_len, mode, lm_head=lm_head, batch=batch))


def macs_per_token(cfg: SubnetConfig, seq_len: int, mode: str = "prompt", *, lm_head: bool = True) -> float:
    """MACs per token: prompt MACs / seq_len, or the MACs of one generated token."""
    macs = count_macs(cfg, seq_len, mode, lm_head=lm_head)
    return macs / seq_len if mode == "prompt" else float(macs)


def _ffn_params(d, f, variant, rank):
    if variant == "standard":
        return d * f + f + f * d + d
    if variant == "glu":
        return 2 * (d * f + f) + f * d + d
    if variant == "lowrank":
        # up: V (r x d, no bias), U (f x r, bias f); down: V (r x f), U (d x r, bias d)
        return rank * d + f * rank + f + rank * f + d * rank + d
    return 0  # none; shared is counted once per model


def count_params(cfg: SubnetConfig) -> int:
    """Exact trainable parameters of the standalone model (weights and biases).

    Token embedding (tied with the LM head) and learned positions, per layer
    two LayerNorms, Q/K/V/output projections with biases and the FFN, the
    shared FFN once, and the final LayerNorm.
    """
    d, hd = cfg.d_model, cfg.head_dim
    total = cfg.vocab_size * d + cfg.context_len * d + 2 * d
    for h, f, v in zip(cfg.heads, cfg.ffn_dims, cfg.ffn_variants):
        a = h * hd
        total += 2 * 2 * d + 3 * (d * a + a) + a * d + d + _ffn_params(d, f, v, cfg.lowrank_rank)
    if cfg.shared_ffn_dim:
        total += _ffn_params(d, cfg.shared_ffn_dim, "standard", 0)
    return total
