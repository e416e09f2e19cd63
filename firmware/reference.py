"""The integer reference model: the golden of the accelerator's Transformer.

:class:`IntegerTransformer` computes, in torch, exactly the integers the
hardware computes for a quantized model file: every vector operation as
``docs/intmath.md`` defines it (REQ, ADD, MUL, GELU, SOFTMAX with i-exp,
LAYERNORM with the integer square root, EMBED, ARGMAX) and the network of
"The integer Transformer" there. It shares no code with the compiler or the
quantizer: it reads the ``.npz`` file itself (the format is described in
``firmware/model.py``), and only that file passes between them.

    >>> ref = IntegerTransformer.load("firmware/data/shakespeare_l2d64.npz")
    >>> ref.logits(ids)                  # int64 [T, vocab]: a prefill, every position
    >>> cache = ref.new_cache(); ref.step(ids[0], cache)   # one decode step: int64 [vocab]
    >>> ref.generate(prompt_ids, 20)     # greedy, as the board's ARGMAX loop

Exactness: every value is an int64 torch tensor. The matrix products are
taken in float64 and converted back, which is exact because every sum of
int8 x int8 products (or 0..127 probabilities x int8) is far below 2**53;
biases are added in int64 afterwards. ``>>`` on int64 tensors is the
arithmetic (flooring) shift, ``torch.div(..., rounding_mode="floor")`` the
flooring division of the definitions.
"""

import json
import math
import pathlib

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["IntegerTransformer", "KVCache", "rq", "iexp", "isoftmax", "ilayernorm", "igelu",
           "isqrt"]

I32_MIN, I32_MAX = -2 ** 31, 2 ** 31 - 1


# --- the integer functions of docs/intmath.md, on int64 tensors -----------------------------

def rq(x: torch.Tensor, m, s: int, lo: int, hi: int) -> torch.Tensor:
    """Requantize: ``x * m`` (shift 0) or ``(x * m + 2**(s-1)) >> s``, then saturate.
    ``m`` is an int or a tensor of unsigned 16-bit multipliers (per channel)."""
    y = x * m if s == 0 else (x * m + (1 << (s - 1))) >> s
    return y.clamp(lo, hi)


def rq8(x, m, s):
    return rq(x, m, s, -128, 127)


def rq32(x, m, s):
    return rq(x, m, s, I32_MIN, I32_MAX)


def sat32(x):
    return x.clamp(I32_MIN, I32_MAX)


def sat16(x):
    return x.clamp(-2 ** 15, 2 ** 15 - 1)


def _fdiv(a, b):
    return torch.div(a, b, rounding_mode="floor")


def isqrt(v: torch.Tensor) -> torch.Tensor:
    """Floor of the square root of non-negative int64 ``v`` (< 2**52), exactly."""
    r = torch.sqrt(v.double()).floor().long()
    r = r - (r * r > v).long()
    return r + ((r + 1) * (r + 1) <= v).long()


def iexp(d: torch.Tensor) -> torch.Tensor:
    """i-exp of ``d`` in [-32768, 0] (scale 2**-10): ``exp(d / 1024) / (0.3585 * 2**-20)``."""
    t = -d
    z = (t * 1477) >> 20
    r = t - z * 710
    L = (1385 - r) ** 2 + 1006157
    return torch.where(z < 32, L >> z.clamp(max=31), torch.zeros_like(L))


def isoftmax(x: torch.Tensor, valid: torch.Tensor, mult: int, shift: int) -> torch.Tensor:
    """SOFTMAX along the last axis of int32 scores ``x``; ``valid`` (bool, broadcast
    to ``x``) marks the first n elements of each row (the causal mask); the others,
    and every element of a row with none valid, are 0. Output 0..127 at 2**-7."""
    valid = valid.expand_as(x)
    xs = rq32(x, mult, shift)
    mx = xs.masked_fill(~valid, I32_MIN).amax(-1, keepdim=True)
    e = iexp((xs - mx).clamp(min=-32768, max=0)).masked_fill(~valid, 0)
    total = e.sum(-1, keepdim=True)
    f = _fdiv(torch.full_like(total, 1 << 40), total.clamp(min=1))
    out = ((e * f + (1 << 32)) >> 33).clamp(max=127)
    return out.masked_fill(~valid, 0)


def ilayernorm(x, gamma, beta, sh: int, mult: int, shift: int) -> torch.Tensor:
    """LAYERNORM along the last axis of int32 ``x``: int8 out."""
    n = x.shape[-1]
    mean = _fdiv(x.sum(-1, keepdim=True), n)
    ys = sat16((x - mean) >> sh)
    var = _fdiv((ys * ys).sum(-1, keepdim=True), n)
    std = isqrt(var).clamp(min=1)
    inv = _fdiv(torch.full_like(std, 1 << 31), std)
    z = (ys * inv) >> 16
    return rq8(sat32(z * gamma + beta), mult, shift)


def igelu(q, b: int, c: int, one: int, mult: int, shift: int) -> torch.Tensor:
    """GELU of int8 ``q`` with the parameter registers B, C, ONE: int8 out."""
    a = q.abs().clamp(max=-b)
    y = sat32(torch.sign(q) * (c - (a + b) ** 2))
    g = sat32(q * (y + one))
    return rq8(g, mult, shift)


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact integer ``a @ b`` (see the module docstring)."""
    return torch.matmul(a.double(), b.double()).round().long()


# --- the model ------------------------------------------------------------------------------

class KVCache:
    """The int8 K and V of every layer for positions ``0 .. pos - 1``: ``k[i]``, ``v[i]``
    are int64 tensors (1, heads, pos, head_dim) holding int8 values."""

    def __init__(self, layers: int):
        self.k = [None] * layers
        self.v = [None] * layers

    @property
    def pos(self) -> int:
        return 0 if self.k[0] is None else self.k[0].shape[2]


class IntegerTransformer:
    """The integer Transformer of one quantized model file."""

    def __init__(self, header: dict, tensors: dict):
        self.header = header
        desc = header["desc"]
        self.vocab_size, self.context_len = desc["vocab_size"], desc["context_len"]
        self.d_model, self.head_dim = desc["d_model"], desc["head_dim"]
        self.heads, self.variants = list(desc["heads"]), list(desc["ffn_variants"])
        self.logit_scale = float(header["logit_scale"])
        self.chars = header.get("meta", {}).get("chars")
        self.t = {k: torch.from_numpy(np.asarray(v).astype(np.int64)) for k, v in tensors.items()}
        self.s = {k: int(v) for k, v in self.t.items() if v.dim() == 0}

    @classmethod
    def load(cls, path) -> "IntegerTransformer":
        path = pathlib.Path(path)
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if "__header__" not in arrays:
            raise ValueError(f"{path}: no __header__ member; not a quantized model file")
        header = json.loads(arrays.pop("__header__").tobytes().decode("utf-8"))
        if header.get("format") != "tandem-qmodel" or header.get("version") != 1:
            raise ValueError(f"{path}: format {header.get('format')!r} {header.get('version')!r}, "
                             f"not tandem-qmodel 1")
        return cls(header, arrays)

    # --- pieces -------------------------------------------------------------------------

    def _ffn(self, i):
        v = self.variants[i]
        return None if v == "none" else "shared_ffn" if v == "shared" else f"layers.{i}.ffn"

    def _acc(self, p, h):
        """``bias + h @ W^T`` (int32 accumulator) of the linear ``p``."""
        acc = _mm(h, self.t[f"{p}.weight"].t())
        bias = self.t.get(f"{p}.bias")
        return acc if bias is None else acc + bias

    def _req(self, p, h):
        return rq8(self._acc(p, h), self.t[f"{p}.mult"], self.s[f"{p}.shift"])

    def _add(self, x, p, h):
        return sat32(x + rq32(self._acc(p, h), self.t[f"{p}.mult"], self.s[f"{p}.shift"]))

    def _ln(self, p, x):
        return ilayernorm(x, self.t[f"{p}.gamma"], self.t[f"{p}.beta"], self.s[f"{p}.sh"],
                          self.s[f"{p}.mult"], self.s[f"{p}.shift"])

    def _gelu(self, p, q):
        s = self.s
        return igelu(q, s[f"{p}.b"], s[f"{p}.c"], s[f"{p}.one"], s[f"{p}.mult"], s[f"{p}.shift"])

    def embed(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor:
        """EMBED of token ids (B, T) at positions start..start+T-1: int32 (B, T, d)."""
        t = idx.shape[-1]
        pos = self.t["wpe"][start:start + t]
        return sat32(self.t["wte"][idx] * self.s["embed.mult_tok"] + pos * self.s["embed.mult_pos"])

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """int64 logits (B, T, vocab) of token ids (B, T); with ``cache`` (batch 1) the
        tokens continue the cached positions, and their K and V join the cache."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        b, t = idx.shape
        start = 0 if cache is None else cache.pos
        if start + t > self.context_len:
            raise ValueError(f"positions up to {start + t - 1}; the model has {self.context_len}")
        if cache is not None and b != 1:
            raise ValueError("a KV cache holds one sequence")
        hd = self.head_dim
        x = self.embed(idx, start)
        # Query row r (position start + r) sees keys 0 .. start + r.
        valid = torch.arange(start + t)[None, :] <= (torch.arange(t)[:, None] + start)
        for i, h in enumerate(self.heads):
            p = f"layers.{i}"
            y = self._ln(f"{p}.ln1", x)
            split = lambda z: z.view(b, t, h, hd).transpose(1, 2)
            q, k, v = (split(self._req(f"{p}.attn.{n}", y)) for n in "qkv")
            if cache is not None:
                if cache.k[i] is not None:
                    k, v = torch.cat([cache.k[i], k], 2), torch.cat([cache.v[i], v], 2)
                cache.k[i], cache.v[i] = k, v
            scores = _mm(q, k.transpose(-2, -1))
            probs = isoftmax(scores, valid, self.s[f"{p}.attn.softmax.mult"],
                             self.s[f"{p}.attn.softmax.shift"])
            ctx = rq8(_mm(probs, v), self.s[f"{p}.attn.context.mult"],
                      self.s[f"{p}.attn.context.shift"])
            x = self._add(x, f"{p}.attn.out", ctx.transpose(1, 2).reshape(b, t, h * hd))
            Fp = self._ffn(i)
            if Fp is None:
                continue
            y = self._ln(f"{p}.ln2", x)
            variant = self.variants[i]
            if variant in ("standard", "shared"):
                m = self._gelu(f"{Fp}.gelu", self._req(f"{Fp}.up", y))
                x = self._add(x, f"{Fp}.down", m)
            elif variant == "glu":
                g = self._gelu(f"{Fp}.gelu", self._req(f"{Fp}.gate", y))
                u = self._req(f"{Fp}.up", y)
                m = rq8(g * u, self.s[f"{Fp}.mul.mult"], self.s[f"{Fp}.mul.shift"])
                x = self._add(x, f"{Fp}.down", m)
            else:  # lowrank
                r = self._req(f"{Fp}.up_v", y)
                g = self._gelu(f"{Fp}.gelu", self._req(f"{Fp}.up_u", r))
                r = self._req(f"{Fp}.down_v", g)
                x = self._add(x, f"{Fp}.down_u", r)
        hf = self._ln("ln_f", x)
        return _mm(hf, self.t["wte"].t())

    # --- the API --------------------------------------------------------------------------

    def logits(self, tokens) -> torch.Tensor:
        """int64 logits [T, vocab] of a prefill of ``tokens`` (1-D ids), every position."""
        ids = torch.as_tensor(tokens, dtype=torch.long)
        return self.forward(ids[None])[0]

    def new_cache(self) -> KVCache:
        return KVCache(len(self.heads))

    def prefill(self, tokens, cache: KVCache) -> torch.Tensor:
        """Logits [T, vocab] of ``tokens`` after the cached positions; fills the cache."""
        ids = torch.as_tensor(tokens, dtype=torch.long)
        return self.forward(ids[None], cache)[0]

    def step(self, token: int, cache: KVCache) -> torch.Tensor:
        """One decode step: int64 logits [vocab] of ``token`` at position ``cache.pos``."""
        return self.forward(torch.tensor([[int(token)]]), cache)[0, 0]

    @staticmethod
    def argmax(logits: torch.Tensor) -> int:
        """ARGMAX: the first index of the maximum."""
        return int(torch.argmax(logits))  # torch returns the first maximal index

    def generate(self, prompt_ids, n: int) -> list[int]:
        """``n`` greedy tokens after the prompt (the board's prefill, then its decode loop)."""
        prompt = [int(i) for i in prompt_ids]
        if not prompt or n < 0 or len(prompt) + n - 1 > self.context_len:
            raise ValueError(f"a prompt of {len(prompt)} and {n} tokens needs positions up to "
                             f"{len(prompt) + n - 2}; the model has {self.context_len}")
        if n == 0:
            return []
        cache = self.new_cache()
        out = [self.argmax(self.prefill(prompt, cache)[-1])]
        while len(out) < n:
            out.append(self.argmax(self.step(out[-1], cache)))
        return out

    def float_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Integer logits as floats (``logit_scale``): for perplexity, not for the hardware."""
        return logits.double() * self.logit_scale

    @torch.no_grad()
    def nll(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 16) -> float:
        """Mean negative log-likelihood (nats per token) of targets ``y`` (N, T) after
        inputs ``x`` (N, T), from the integer logits."""
        total = 0.0
        for i in range(0, len(x), batch_size):
            logits = self.float_logits(self.forward(x[i:i + batch_size]))
            total += F.cross_entropy(logits.flatten(0, 1), y[i:i + batch_size].flatten(),
                                     reduction="sum").item()
        return total / y.numel()

    def encode(self, text: str) -> list[int]:
        if self.chars is None:
            raise ValueError("this model file carries no tokenizer (meta.chars)")
        index = {c: i for i, c in enumerate(self.chars)}
        return [index.get(c, 0) for c in text]

    def decode(self, ids) -> str:
        if self.chars is None:
            raise ValueError("this model file carries no tokenizer (meta.chars)")
        return "".join(self.chars[int(i)] for i in ids)
