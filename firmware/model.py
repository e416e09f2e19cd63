"""The neutral model description: :class:`ModelDesc` (the architecture) and
:class:`QuantizedModel` (the architecture and every integer the accelerator needs).

``search/`` turns a subnet into a :class:`ModelDesc` (``search/model/export.py``);
``firmware/`` and ``gen/`` take only these types. ``firmware/`` never imports
``search/``.

The integer Transformer
-----------------------

``docs/intmath.md`` defines every vector operation bit for bit and, in "The
integer Transformer", the network built from them. The tensors of a
:class:`QuantizedModel` are named after the places they take in it (``L`` =
``layers.{i}``, ``F`` = the layer's FFN prefix, :meth:`ModelDesc.ffn_prefix`:
``layers.{i}.ffn``, or ``shared_ffn`` for every ``shared`` layer)::

    x = EMBED: x[j] = wte[t, j] * embed.mult_tok + wpe[p, j] * embed.mult_pos
    per layer:
      h  = LAYERNORM(x; L.ln1.gamma, L.ln1.beta, SH=L.ln1.sh, L.ln1.mult, L.ln1.shift)
      q  = REQ(L.attn.q.bias + h @ L.attn.q.weight^T; M = L.attn.q.mult (per channel),
               L.attn.q.shift)                       (k, v alike; k and v are the KV cache)
      per head: s  = q_h @ k_h^T                      (int32, keys 0..pos)
                pr = SOFTMAX(s; L.attn.softmax.mult, L.attn.softmax.shift, n = pos + 1)
                c_h = REQ(pr @ v_h; L.attn.context.mult, L.attn.context.shift)
      o  = L.attn.out.bias + c @ L.attn.out.weight^T  (c: the heads side by side)
      x  = ADD(x, o; M = L.attn.out.mult (per channel), L.attn.out.shift)
      unless the variant is none:
        h = LAYERNORM(x; L.ln2.*)
        standard, shared: u = REQ(F.up(h)); g = GELU(u; F.gelu.b, .c, .one, .mult, .shift)
                          x = ADD(x, F.down(g))
        glu:     g = GELU(REQ(F.gate(h))); u = REQ(F.up(h))
                 m = MUL(g, u; F.mul.mult, F.mul.shift); x = ADD(x, F.down(m))
        lowrank: r = REQ(F.up_v(h)); g = GELU(REQ(F.up_u(r))); r2 = REQ(F.down_v(g))
                 x = ADD(x, F.down_u(r2))
    hf = LAYERNORM(x; ln_f.*);  logits = hf @ wte^T   (int32, no bias);  next = ARGMAX

``F.name(h)`` is ``F.name.bias + h @ F.name.weight^T`` (``up_v`` and
``down_v`` have no bias), and each REQ or ADD after it uses ``F.name.mult``
(one unsigned 16-bit multiplier per output channel) and ``F.name.shift``.
A shared FFN's weights, biases, multipliers and unit constants are stored
once and serve every ``shared`` layer. Scalars are shown by name; all are
integers. ``logit_scale`` turns int32 logits into float logits (for
perplexity only; the hardware never needs it).

File format (one file, ``.npz``)
--------------------------------

A NumPy ``.npz`` archive (a zip of ``.npy`` members, ``np.load(path,
allow_pickle=False)`` reads it):

* member ``__header__``: a uint8 array holding UTF-8 JSON
  ``{"format": "tandem-qmodel", "version": 1, "desc": ModelDesc.to_dict(),
  "logit_scale": float, "scales": {name: float}, "meta": {...}}``.
  ``scales`` are the calibrated float scales of the activations (for reading
  and debugging; nothing integer depends on them). ``meta`` is free JSON;
  ``meta["chars"]``, when present, is the character tokenizer: token id ``i``
  is the character ``chars[i]`` (id 0 is ``<unk>``, written ``"\\u0000"``).
* every other member is one integer tensor named as above (:func:`tensor_specs`
  lists them): int8 weights, int32 vectors (biases, LayerNorm gamma/beta,
  per-channel multipliers in 0..65535) and int64 scalars (0-d arrays).

Counting conventions (as in ``search/model/space.py``): a GEMM's ``m`` is
tokens, ``k`` the reduction, ``n`` the outputs; attention's scores count the
full query x key square of a prefill (the causal mask does not shrink the
GEMM), while softmax counts only the valid (causal) elements of each row.
"""

from dataclasses import dataclass
import json
import math
import os
import pathlib
import typing

import numpy as np

__all__ = ["FFN_VARIANTS", "ModelDesc", "Gemm", "OpCounts", "QuantizedModel", "TensorSpec",
           "tensor_specs", "linear_names", "FORMAT", "VERSION", "HEADER"]

#: ``standard``: up -> GELU -> down. ``none``: no FFN. ``lowrank``: each weight as
#: U @ V of rank ``lowrank_rank``. ``shared``: one ``standard`` FFN that every
#: shared layer uses. ``glu``: (GELU(gate) * up) -> down.
FFN_VARIANTS = ("standard", "none", "lowrank", "shared", "glu")

FORMAT = "tandem-qmodel"
VERSION = 1
HEADER = "__header__"

_MODES = ("prefill", "decode")


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")


class Gemm(typing.NamedTuple):
    """One matrix product ``(m x k) @ (k x n)``, executed ``count`` times.

    layer : layer index, None for the LM head.
    op : ``q``, ``k``, ``v``, ``scores``, ``context``, ``out``, ``ffn_up``,
        ``ffn_gate``, ``ffn_down``, ``ffn_up_v``, ``ffn_up_u``, ``ffn_down_v``,
        ``ffn_down_u``, ``lm_head`` (the names of ``search/model/space.py``).
    weight : the name of the int8 weight tensor (its identity: every shared
        layer names the same ``shared_ffn.*`` weight, the LM head names ``wte``),
        or None for attention's activation x activation products.
    """
    layer: int | None
    op: str
    m: int
    k: int
    n: int
    count: int = 1
    weight: str | None = None

    @property
    def macs(self) -> int:
        return self.m * self.k * self.n * self.count


@dataclass(frozen=True)
class OpCounts:
    """The non-GEMM operations of one forward pass (elements are int8 or int32 values).

    softmax_rows : softmax rows (query tokens x heads, summed over layers).
    softmax_elements : valid (causal) elements of those rows, summed.
    softmax_max_len : the longest row.
    layernorms : LayerNorm rows (each of ``d_model`` elements).
    gelu_elements : GELU inputs.
    residual_adds : elements of the residual ADDs (``d_model`` per token and add).
    glu_products : elements of the GLU products (MUL).
    requant_elements : elements of the REQ operations (q, k, v, attention
        context, FFN hidden and rank vectors).
    embeds : embedding rows looked up (tokens).
    logit_rows : rows of the LM head (positions whose logits are computed).
    """
    softmax_rows: int
    softmax_elements: int
    softmax_max_len: int
    layernorms: int
    gelu_elements: int
    residual_adds: int
    glu_products: int
    requant_elements: int
    embeds: int
    logit_rows: int


class TensorSpec(typing.NamedTuple):
    """One tensor of a :class:`QuantizedModel`: ``shape`` (() = a scalar) and
    ``kind``: ``int8``; ``int32``; ``mult`` (0..65535, an unsigned 16-bit
    multiplier or a vector of them); ``shift`` (0..63); ``sh`` (0..31, the
    LayerNorm pre-shift); ``gamma`` (int32, |G| < 2**11); ``int`` (an int32
    scalar)."""
    shape: tuple
    kind: str


@dataclass(frozen=True)
class ModelDesc:
    """A decoder-only Transformer LM as the accelerator runs it (sizes in elements).

    vocab_size : tokens, >= 2 (the LM head is tied to the token embedding).
    context_len : positions (learned), >= 1.
    d_model : width of the residual stream.
    head_dim : width of one attention head.
    heads : heads of each layer; ``len(heads)`` is the number of layers.
    ffn_dims : FFN hidden width of each layer (0 for ``none``; every ``shared``
        layer has the same width).
    ffn_variants : one of :data:`FFN_VARIANTS` per layer.
    lowrank_rank : rank of every ``lowrank`` weight (0 when no layer is lowrank).

    Every ``shared`` layer uses the one shared FFN (:attr:`shared_layers`).
    Normalized like ``SubnetConfig``: ``none`` layers get ffn_dim 0 and the
    rank is 0 without lowrank layers.
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
        for name in ("vocab_size", "context_len", "d_model", "head_dim", "lowrank_rank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, not {value!r}")
            set_(name, int(value))
        for name in ("heads", "ffn_dims", "ffn_variants"):
            set_(name, tuple(getattr(self, name)))
        for name in ("context_len", "d_model", "head_dim"):
            _positive(name, getattr(self, name))
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2, not {self.vocab_size!r}")
        if not self.heads:
            raise ValueError("heads must name at least one layer, not ()")
        if not len(self.heads) == len(self.ffn_dims) == len(self.ffn_variants):
            raise ValueError(f"heads, ffn_dims and ffn_variants need one entry per layer; got "
                             f"{len(self.heads)}, {len(self.ffn_dims)}, {len(self.ffn_variants)}")
        for h in self.heads:
            _positive("heads[i]", h)
        set_("heads", tuple(int(h) for h in self.heads))
        for v in self.ffn_variants:
            if v not in FFN_VARIANTS:
                raise ValueError(f"ffn variant {v!r} is not one of {', '.join(FFN_VARIANTS)}")
        dims = []
        for f, v in zip(self.ffn_dims, self.ffn_variants):
            if v == "none":
                dims.append(0)
            else:
                _positive(f"ffn_dim of a {v} layer", f)
                dims.append(int(f))
        set_("ffn_dims", tuple(dims))
        shared = {f for f, v in zip(dims, self.ffn_variants) if v == "shared"}
        if len(shared) > 1:
            raise ValueError(f"shared layers share one FFN, so they need one ffn_dim, "
                             f"not {sorted(shared)}")
        if "lowrank" in self.ffn_variants:
            _positive("lowrank_rank", self.lowrank_rank)
        else:
            set_("lowrank_rank", 0)

    # --- structure ------------------------------------------------------------------------

    @property
    def layers(self) -> int:
        return len(self.heads)

    def attn_dim(self, layer: int) -> int:
        """Width of a layer's q, k, v and attention context: heads x head_dim."""
        return self.heads[layer] * self.head_dim

    @property
    def shared_layers(self) -> tuple:
        """Indices of the layers that use the one shared FFN."""
        return tuple(i for i, v in enumerate(self.ffn_variants) if v == "shared")

    @property
    def shared_ffn_dim(self) -> int:
        """Hidden width of the shared FFN, 0 when no layer uses it."""
        return next((f for f, v in zip(self.ffn_dims, self.ffn_variants) if v == "shared"), 0)

    def ffn_prefix(self, layer: int) -> str | None:
        """Tensor-name prefix of a layer's FFN: ``layers.{i}.ffn``, ``shared_ffn`` for a
        shared layer, None for ``none``."""
        v = self.ffn_variants[layer]
        return None if v == "none" else "shared_ffn" if v == "shared" else f"layers.{layer}.ffn"

    def to_dict(self) -> dict:
        return {"vocab_size": self.vocab_size, "context_len": self.context_len,
                "d_model": self.d_model, "head_dim": self.head_dim, "heads": list(self.heads),
                "ffn_dims": list(self.ffn_dims), "ffn_variants": list(self.ffn_variants),
                "lowrank_rank": self.lowrank_rank}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelDesc":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ModelDesc fields: {', '.join(sorted(unknown))}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def short(self) -> str:
        """One line, e.g. ``L2 d64 h2,2 ffn[standard:128,none] hd32 ctx64 V66``."""
        layers = ",".join(f"{v}:{f}" if v != "none" else "none"
                          for f, v in zip(self.ffn_dims, self.ffn_variants))
        rank = f" r{self.lowrank_rank}" if self.lowrank_rank else ""
        return (f"L{self.layers} d{self.d_model} h{','.join(map(str, self.heads))} "
                f"ffn[{layers}]{rank} hd{self.head_dim} ctx{self.context_len} V{self.vocab_size}")

    # --- the linears and their tensors ----------------------------------------------------

    def linears(self) -> list[tuple[str, int, int, bool, str]]:
        """Every linear with a weight, each once: ``(prefix, out, in, has_bias, after)``
        in execution order (a shared FFN where its first layer uses it). ``after`` is
        ``req`` (REQ to int8) or ``add`` (ADD into the residual stream)."""
        d, r = self.d_model, self.lowrank_rank
        out, seen_shared = [], False
        for i in range(self.layers):
            a = self.attn_dim(i)
            p = f"layers.{i}.attn"
            out += [(f"{p}.q", a, d, True, "req"), (f"{p}.k", a, d, True, "req"),
                    (f"{p}.v", a, d, True, "req"), (f"{p}.out", d, a, True, "add")]
            v, f, F = self.ffn_variants[i], self.ffn_dims[i], self.ffn_prefix(i)
            if v == "shared":
                if seen_shared:
                    continue
                seen_shared = True
            if v in ("standard", "shared"):
                out += [(f"{F}.up", f, d, True, "req"), (f"{F}.down", d, f, True, "add")]
            elif v == "glu":
                out += [(f"{F}.gate", f, d, True, "req"), (f"{F}.up", f, d, True, "req"),
                        (f"{F}.down", d, f, True, "add")]
            elif v == "lowrank":
                out += [(f"{F}.up_v", r, d, False, "req"), (f"{F}.up_u", f, r, True, "req"),
                        (f"{F}.down_v", r, f, False, "req"), (f"{F}.down_u", d, r, True, "add")]
        return out

    def layernorms(self) -> list[str]:
        """Prefixes of the LayerNorms, each once (``layers.{i}.ln2`` only with an FFN)."""
        out = []
        for i, v in enumerate(self.ffn_variants):
            out.append(f"layers.{i}.ln1")
            if v != "none":
                out.append(f"layers.{i}.ln2")
        return out + ["ln_f"]

    # --- memory ---------------------------------------------------------------------------

    def weight_bytes(self) -> int:
        """int8 bytes of every weight matrix: the token embedding (also the LM head,
        tied), the position embedding, q/k/v/out and the FFNs, the shared FFN once.
        Biases, LayerNorm gamma/beta and multipliers are :meth:`const_words`."""
        return sum(math.prod(s.shape) for s in tensor_specs(self).values() if s.kind == "int8")

    def embedding_bytes(self) -> int:
        """The part of :meth:`weight_bytes` in the token and position tables."""
        return (self.vocab_size + self.context_len) * self.d_model

    def const_words(self) -> int:
        """int32 words of per-channel constants: every bias, every per-channel
        multiplier (one per output of each linear but the LM head) and the
        LayerNorms' gamma and beta; the shared FFN's once. (Scalar constants,
        such as shifts and unit parameters, travel in instructions.)"""
        return sum(math.prod(s.shape) for s in tensor_specs(self).values()
                   if s.kind in ("int32", "gamma") or (s.kind == "mult" and s.shape))

    def const_bytes(self) -> int:
        return 4 * self.const_words()

    def kv_cache_bytes(self, tokens: int | None = None) -> int:
        """int8 bytes of the K and V caches for ``tokens`` positions (default context_len)."""
        tokens = self.context_len if tokens is None else tokens
        return 2 * tokens * sum(self.heads) * self.head_dim

    # --- work -----------------------------------------------------------------------------

    def _check_mode(self, seq_len, mode):
        if mode not in _MODES:
            raise ValueError(f"mode must be 'prefill' or 'decode', not {mode!r}")
        if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) \
                or not 1 <= seq_len <= self.context_len:
            raise ValueError(f"seq_len must be from 1 to context_len={self.context_len}, "
                             f"not {seq_len!r}")

    def _logit_rows(self, tokens, logits):
        if logits not in ("all", "last", "none"):
            raise ValueError(f"logits must be 'all', 'last' or 'none', not {logits!r}")
        return {"all": tokens, "last": 1, "none": 0}[logits]

    def gemms(self, seq_len: int, mode: str = "prefill", *, logits: str = "all") -> list[Gemm]:
        """The matrix products of one forward pass, in order, with weight identities.

        mode="prefill": ``seq_len`` = P prompt tokens, all at once.
        mode="decode": one token at position ``seq_len - 1`` that attends to
            ``seq_len`` keys (its own included) from the KV cache.
        logits : LM-head rows: ``all`` positions (for checking), ``last``
            (generation needs only the last), ``none``.
        """
        self._check_mode(seq_len, mode)
        tokens = seq_len if mode == "prefill" else 1
        d, hd, r = self.d_model, self.head_dim, self.lowrank_rank
        out = []
        for i, (h, f, v) in enumerate(zip(self.heads, self.ffn_dims, self.ffn_variants)):
            a, p, F = h * hd, f"layers.{i}.attn", self.ffn_prefix(i)
            out += [Gemm(i, "q", tokens, d, a, 1, f"{p}.q.weight"),
                    Gemm(i, "k", tokens, d, a, 1, f"{p}.k.weight"),
                    Gemm(i, "v", tokens, d, a, 1, f"{p}.v.weight"),
                    Gemm(i, "scores", tokens, hd, seq_len, h, None),
                    Gemm(i, "context", tokens, seq_len, hd, h, None),
                    Gemm(i, "out", tokens, a, d, 1, f"{p}.out.weight")]
            if v in ("standard", "shared"):
                out += [Gemm(i, "ffn_up", tokens, d, f, 1, f"{F}.up.weight"),
                        Gemm(i, "ffn_down", tokens, f, d, 1, f"{F}.down.weight")]
            elif v == "glu":
                out += [Gemm(i, "ffn_gate", tokens, d, f, 1, f"{F}.gate.weight"),
                        Gemm(i, "ffn_up", tokens, d, f, 1, f"{F}.up.weight"),
                        Gemm(i, "ffn_down", tokens, f, d, 1, f"{F}.down.weight")]
            elif v == "lowrank":
                out += [Gemm(i, "ffn_up_v", tokens, d, r, 1, f"{F}.up_v.weight"),
                        Gemm(i, "ffn_up_u", tokens, r, f, 1, f"{F}.up_u.weight"),
                        Gemm(i, "ffn_down_v", tokens, f, r, 1, f"{F}.down_v.weight"),
                        Gemm(i, "ffn_down_u", tokens, r, d, 1, f"{F}.down_u.weight")]
        rows = self._logit_rows(tokens, logits)
        if rows:
            out.append(Gemm(None, "lm_head", rows, d, self.vocab_size, 1, "wte"))
        return out

    def macs(self, seq_len: int, mode: str = "prefill", *, logits: str = "all") -> int:
        return sum(g.macs for g in self.gemms(seq_len, mode, logits=logits))

    def op_counts(self, seq_len: int, mode: str = "prefill", *, logits: str = "all") -> OpCounts:
        """The non-GEMM operations of :meth:`gemms`'s pass (same ``seq_len``, ``mode``)."""
        self._check_mode(seq_len, mode)
        tokens = seq_len if mode == "prefill" else 1
        d, r = self.d_model, self.lowrank_rank
        # Causal lengths of the pass's query rows: 1..P (prefill) or seq_len (decode).
        lengths = (seq_len * (seq_len + 1) // 2) if mode == "prefill" else seq_len
        rows = elems = lns = gelu = adds = glu = req = 0
        for h, f, v in zip(self.heads, self.ffn_dims, self.ffn_variants):
            a = h * self.head_dim
            rows += h * tokens
            elems += h * lengths
            lns += tokens
            adds += tokens * d
            req += tokens * 4 * a  # q, k, v and the context
            if v == "none":
                continue
            lns += tokens
            adds += tokens * d
            if v in ("standard", "shared"):
                gelu += tokens * f
                req += tokens * f
            elif v == "glu":
                gelu += tokens * f
                glu += tokens * f
                req += tokens * 2 * f
            elif v == "lowrank":
                gelu += tokens * f
                req += tokens * (2 * r + f)
        return OpCounts(softmax_rows=rows, softmax_elements=elems, softmax_max_len=seq_len,
                        layernorms=lns + tokens, gelu_elements=gelu, residual_adds=adds,
                        glu_products=glu, requant_elements=req, embeds=tokens,
                        logit_rows=self._logit_rows(tokens, logits))


# --- the quantized model ------------------------------------------------------------------

def linear_names(prefix: str, has_bias: bool = True) -> list[str]:
    return [f"{prefix}.weight"] + ([f"{prefix}.bias"] if has_bias else []) \
        + [f"{prefix}.mult", f"{prefix}.shift"]


def tensor_specs(desc: ModelDesc) -> dict[str, TensorSpec]:
    """Every tensor a :class:`QuantizedModel` of ``desc`` holds, by name, in a fixed order."""
    d = desc.d_model
    specs = {"wte": TensorSpec((desc.vocab_size, d), "int8"),
             "wpe": TensorSpec((desc.context_len, d), "int8"),
             "embed.mult_tok": TensorSpec((), "mult"), "embed.mult_pos": TensorSpec((), "mult")}

    def layernorm(p):
        specs.update({f"{p}.gamma": TensorSpec((d,), "gamma"), f"{p}.beta": TensorSpec((d,), "int32"),
                      f"{p}.sh": TensorSpec((), "sh"), f"{p}.mult": TensorSpec((), "mult"),
                      f"{p}.shift": TensorSpec((), "shift")})

    def scalar_pair(p):
        specs.update({f"{p}.mult": TensorSpec((), "mult"), f"{p}.shift": TensorSpec((), "shift")})

    linears = {p: (o, i, b) for p, o, i, b, _ in desc.linears()}

    def linear(p):
        o, i, b = linears[p]
        specs[f"{p}.weight"] = TensorSpec((o, i), "int8")
        if b:
            specs[f"{p}.bias"] = TensorSpec((o,), "int32")
        specs[f"{p}.mult"] = TensorSpec((o,), "mult")
        specs[f"{p}.shift"] = TensorSpec((), "shift")

    def gelu(p):
        specs.update({f"{p}.b": TensorSpec((), "int"), f"{p}.c": TensorSpec((), "int"),
                      f"{p}.one": TensorSpec((), "int")})
        scalar_pair(p)

    done_shared = False
    for i, v in enumerate(desc.ffn_variants):
        layernorm(f"layers.{i}.ln1")
        p = f"layers.{i}.attn"
        for n in ("q", "k", "v"):
            linear(f"{p}.{n}")
        scalar_pair(f"{p}.softmax")
        scalar_pair(f"{p}.context")
        linear(f"{p}.out")
        if v == "none":
            continue
        layernorm(f"layers.{i}.ln2")
        if v == "shared":
            if done_shared:
                continue
            done_shared = True
        F = desc.ffn_prefix(i)
        if v in ("standard", "shared"):
            linear(f"{F}.up"); gelu(f"{F}.gelu"); linear(f"{F}.down")
        elif v == "glu":
            linear(f"{F}.gate"); gelu(f"{F}.gelu"); linear(f"{F}.up")
            scalar_pair(f"{F}.mul"); linear(f"{F}.down")
        else:
            linear(f"{F}.up_v"); linear(f"{F}.up_u"); gelu(f"{F}.gelu")
            linear(f"{F}.down_v"); linear(f"{F}.down_u")
    layernorm("ln_f")
    return specs


_KIND_RANGE = {"int8": (-128, 127), "int32": (-2**31, 2**31 - 1), "mult": (0, 65535),
               "shift": (0, 63), "sh": (0, 31), "gamma": (-2**11 + 1, 2**11 - 1),
               "int": (-2**31, 2**31 - 1)}
_KIND_DTYPE = {"int8": np.int8, "int32": np.int32, "mult": np.int32, "gamma": np.int32}


class QuantizedModel:
    """A :class:`ModelDesc` with every integer of the integer Transformer (see the
    module docstring): ``tensors[name]`` for each name of :func:`tensor_specs`.

    Weights are int8 arrays, vectors int32 arrays, scalars 0-d int64 arrays
    (``qm.scalar(name)`` gives a Python int). Construction checks that every
    tensor is there, with its shape and range, and that there is nothing else.
    """

    def __init__(self, desc: ModelDesc, tensors: dict, *, logit_scale: float,
                 scales: dict | None = None, meta: dict | None = None):
        if not isinstance(desc, ModelDesc):
            raise TypeError(f"desc must be a ModelDesc, not {type(desc).__name__}")
        specs = tensor_specs(desc)
        missing = [n for n in specs if n not in tensors]
        extra = [n for n in tensors if n not in specs]
        if missing or extra:
            raise ValueError("tensors do not match the model description: "
                             + "; ".join(s for s in (
                                 f"missing {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}"
                                 if missing else "", f"unexpected {', '.join(extra[:6])}" if extra else "")
                                 if s))
        self.desc = desc
        self.tensors = {}
        for name, spec in specs.items():
            t = np.asarray(tensors[name])
            if tuple(t.shape) != spec.shape:
                raise ValueError(f"tensor {name} has shape {tuple(t.shape)}, not {spec.shape}")
            if t.dtype.kind not in "iu":
                raise ValueError(f"tensor {name} must hold integers, not {t.dtype}")
            lo, hi = _KIND_RANGE[spec.kind]
            if t.size and (int(t.min()) < lo or int(t.max()) > hi):
                raise ValueError(f"tensor {name} ({spec.kind}) must lie in {lo}..{hi}, "
                                 f"not {int(t.min())}..{int(t.max())}")
            dtype = np.int64 if spec.shape == () else _KIND_DTYPE.get(spec.kind, np.int32)
            self.tensors[name] = t.astype(dtype)
        if not (isinstance(logit_scale, (int, float)) and math.isfinite(logit_scale)
                and logit_scale > 0):
            raise ValueError(f"logit_scale must be a positive finite number, not {logit_scale!r}")
        self.logit_scale = float(logit_scale)
        self.scales = {k: float(v) for k, v in (scales or {}).items()}
        self.meta = dict(meta or {})

    def __getitem__(self, name: str) -> np.ndarray:
        return self.tensors[name]

    def scalar(self, name: str) -> int:
        t = self.tensors[name]
        if t.shape != ():
            raise ValueError(f"tensor {name} is not a scalar (shape {t.shape})")
        return int(t)

    def header(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "desc": self.desc.to_dict(),
                "logit_scale": self.logit_scale, "scales": self.scales, "meta": self.meta}

    def save(self, path) -> None:
        """Write the ``.npz`` file (see the module docstring), atomically."""
        path = pathlib.Path(path)
        header = np.frombuffer(json.dumps(self.header(), sort_keys=True).encode(), dtype=np.uint8)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{HEADER: header}, **self.tensors)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path) -> "QuantizedModel":
        """Read a file written by :meth:`save`; errors are one line naming the file."""
        path = pathlib.Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a quantized model file ({e})") from None
        if HEADER not in arrays:
            raise ValueError(f"{path}: no {HEADER} member; not a {FORMAT} file")
        header = json.loads(arrays.pop(HEADER).tobytes().decode())
        if header.get("format") != FORMAT or header.get("version") != VERSION:
            raise ValueError(f"{path}: format {header.get('format')!r} version "
                             f"{header.get('version')!r}; this reader takes {FORMAT} {VERSION}")
        try:
            return cls(ModelDesc.from_dict(header["desc"]), arrays,
                       logit_scale=header["logit_scale"], scales=header.get("scales"),
                       meta=header.get("meta"))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None
