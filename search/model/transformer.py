"""A decoder-only Transformer LM (:class:`Transformer`) and the weight-sharing
supernet (:class:`Supernet`) that every subnet of a :class:`SearchSpace` is
sliced from.

Both use pre-LayerNorm blocks, learned positions, a tied LM head, exact-erf
GELU, no dropout, and attention written as explicit matrix products (so
:mod:`torch.utils.flop_counter` sees every GEMM, and the firmware sees the
same operations the accelerator runs).

Slicing rule (BigNAS/HAT): a subnet uses the *first* ``d_model`` channels,
the first ``layers`` layers, the first ``heads`` heads of a layer, the first
``ffn_dim`` hidden units and the first ``rank`` low-rank components.
"""

import math

import torch
from torch import nn
import torch.nn.functional as F

from .space import SubnetConfig, SearchSpace

__all__ = ["Transformer", "Supernet"]

_INIT_STD = 0.02


def _lowrank_std(rank):
    # U @ V then has entries of std _INIT_STD, like a dense weight.
    return math.sqrt(_INIT_STD / math.sqrt(rank))


def _attention(q, k, v, offset):
    """Causal attention of q (B, H, Tq, hd) over k, v (B, H, Tk, hd).

    offset : position of q's first row among the keys (Tk - Tq with a KV cache).
    """
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    tq, tk = q.shape[-2], k.shape[-2]
    if tq > 1:
        qpos = torch.arange(tq, device=q.device)[:, None] + offset
        mask = torch.arange(tk, device=q.device)[None, :] > qpos
        scores = scores.masked_fill(mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


# --- the standalone model ---------------------------------------------------------------

class StandardFFN(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.up = nn.Linear(d, f)
        self.down = nn.Linear(f, d)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class GluFFN(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.gate = nn.Linear(d, f)
        self.up = nn.Linear(d, f)
        self.down = nn.Linear(f, d)

    def forward(self, x):
        return self.down(F.gelu(self.gate(x)) * self.up(x))


class LowRankFFN(nn.Module):
    """StandardFFN with each weight W (out x in) replaced by U (out x r) @ V (r x in)."""

    def __init__(self, d, f, rank):
        super().__init__()
        self.up_v = nn.Linear(d, rank, bias=False)
        self.up_u = nn.Linear(rank, f)
        self.down_v = nn.Linear(f, rank, bias=False)
        self.down_u = nn.Linear(rank, d)

    def forward(self, x):
        return self.down_u(self.down_v(F.gelu(self.up_u(self.up_v(x)))))


class Attention(nn.Module):
    def __init__(self, d, heads, head_dim):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        a = heads * head_dim
        self.q, self.k, self.v = nn.Linear(d, a), nn.Linear(d, a), nn.Linear(d, a)
        self.out = nn.Linear(a, d)

    def forward(self, x, cache=None):
        b, t, _ = x.shape
        split = lambda y: y.view(b, t, self.heads, self.head_dim).transpose(1, 2)
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        y = _attention(q, k, v, k.shape[2] - t)
        return self.out(y.transpose(1, 2).reshape(b, t, -1)), (k, v)


class Block(nn.Module):
    """Pre-LayerNorm block: x + attn(ln1(x)), then x + ffn(ln2(x)) unless the FFN is removed."""

    def __init__(self, d, heads, head_dim, ffn=None, shared_ffn=None):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = Attention(d, heads, head_dim)
        self.ln2 = nn.LayerNorm(d)
        self.ffn = ffn
        # The shared FFN belongs to the Transformer; a list keeps it out of this
        # block's children, so state_dict holds its weights once.
        self._shared_ffn = [shared_ffn] if shared_ffn is not None else []

    def forward(self, x, cache=None):
        y, cache = self.attn(self.ln1(x), cache)
        x = x + y
        ffn = self.ffn if self.ffn is not None else next(iter(self._shared_ffn), None)
        if ffn is not None:
            x = x + ffn(self.ln2(x))
        return x, cache


class Transformer(nn.Module):
    """A standalone decoder-only LM of one :class:`SubnetConfig`.

    ``forward(idx)`` maps token ids (B, T) with T <= context_len to logits
    (B, T, vocab_size). With ``cache=`` (a list from a previous call's
    ``return_cache=True``) it continues a sequence token by token.
    """

    def __init__(self, cfg: SubnetConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.wte = nn.Embedding(cfg.vocab_size, d)
        self.wpe = nn.Embedding(cfg.context_len, d)
        self.shared_ffn = StandardFFN(d, cfg.shared_ffn_dim) if cfg.shared_ffn_dim else None
        blocks = []
        for h, f, v in zip(cfg.heads, cfg.ffn_dims, cfg.ffn_variants):
            ffn = {"standard": lambda: StandardFFN(d, f), "glu": lambda: GluFFN(d, f),
                   "lowrank": lambda: LowRankFFN(d, f, cfg.lowrank_rank)}.get(v, lambda: None)()
            blocks.append(Block(d, h, cfg.head_dim, ffn, self.shared_ffn if v == "shared" else None))
        self.blocks = nn.ModuleList(blocks)
        self.ln_f = nn.LayerNorm(d)
        self.reset_parameters()

    def reset_parameters(self):
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif ".ln" in name or name.startswith("ln_f"):
                nn.init.ones_(p)
            elif "_u." in name or "_v." in name:
                nn.init.normal_(p, std=_lowrank_std(self.cfg.lowrank_rank))
            else:
                nn.init.normal_(p, std=_INIT_STD)

    def forward(self, idx, cache=None, return_cache=False):
        b, t = idx.shape
        start = 0 if cache is None else cache[0][0].shape[2]
        if start + t > self.cfg.context_len:
            raise ValueError(f"sequence of {start + t} tokens exceeds context_len={self.cfg.context_len}")
        pos = torch.arange(start, start + t, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        new_cache = []
        for i, block in enumerate(self.blocks):
            x, c = block(x, None if cache is None else cache[i])
            new_cache.append(c)
        logits = self.ln_f(x) @ self.wte.weight.t()
        return (logits, new_cache) if return_cache else logits


# --- the supernet -----------------------------------------------------------------------

def _param(*shape):
    return nn.Parameter(torch.empty(*shape))


class Supernet(nn.Module):
    """Weights of the largest subnet of ``space``; any subnet is a slice of them.

    ``forward(idx, subnet)`` runs ``subnet`` (a :class:`SubnetConfig` the space
    can slice) on token ids (B, T) and returns logits (B, T, vocab_size).
    ``extract(subnet)`` copies the subnet's slices into a standalone
    :class:`Transformer` that computes the same logits.
    """

    def __init__(self, space: SearchSpace):
        super().__init__()
        if space.vocab_size < 2:
            raise ValueError("the space's vocab_size must be set from the corpus first")
        self.space = space
        D, L, H, Fm = max(space.d_model), max(space.layers), max(space.heads), max(space.ffn_dim)
        A, R, V = H * space.head_dim, max(space.lowrank_rank, default=0), space.vocab_size
        self.wte = _param(V, D)
        self.wpe = _param(space.context_len, D)
        self.ln_f_w, self.ln_f_b = _param(D), _param(D)
        variants = space.ffn_variants
        if "shared" in variants:
            self.shared = nn.ParameterDict({"up_w": _param(Fm, D), "up_b": _param(Fm),
                                            "down_w": _param(D, Fm), "down_b": _param(D)})
        layers = []
        for _ in range(L):
            p = {"ln1_w": _param(D), "ln1_b": _param(D), "ln2_w": _param(D), "ln2_b": _param(D),
                 "out_w": _param(D, A), "out_b": _param(D)}
            for n in "qkv":
                p[f"{n}_w"], p[f"{n}_b"] = _param(A, D), _param(A)
            if "standard" in variants:
                p.update(std_up_w=_param(Fm, D), std_up_b=_param(Fm),
                         std_down_w=_param(D, Fm), std_down_b=_param(D))
            if "glu" in variants:
                p.update(glu_gate_w=_param(Fm, D), glu_gate_b=_param(Fm), glu_up_w=_param(Fm, D),
                         glu_up_b=_param(Fm), glu_down_w=_param(D, Fm), glu_down_b=_param(D))
            if "lowrank" in variants:
                p.update(lr_up_v=_param(R, D), lr_up_u=_param(Fm, R), lr_up_b=_param(Fm),
                         lr_down_v=_param(R, Fm), lr_down_u=_param(D, R), lr_down_b=_param(D))
            layers.append(nn.ParameterDict(p))
        self.layers = nn.ModuleList(layers)
        self.reset_parameters()

    def reset_parameters(self):
        R = max(self.space.lowrank_rank, default=1)
        for name, p in self.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("ln1_w", "ln2_w", "ln_f_w"):
                nn.init.ones_(p)
            elif leaf.endswith("_b"):
                nn.init.zeros_(p)
            elif leaf.startswith("lr_"):
                # Scaled for the largest rank; smaller ranks start slightly smaller.
                nn.init.normal_(p, std=_lowrank_std(R))
            else:
                nn.init.normal_(p, std=_INIT_STD)

    def forward(self, idx, subnet: SubnetConfig):
        self.space.check(subnet)
        b, t = idx.shape
        d, hd, r = subnet.d_model, subnet.head_dim, subnet.lowrank_rank
        if t > subnet.context_len:
            raise ValueError(f"sequence of {t} tokens exceeds context_len={subnet.context_len}")
        x = self.wte[idx, :d] + self.wpe[:t, :d]
        for p, h, f, v in zip(self.layers, subnet.heads, subnet.ffn_dims, subnet.ffn_variants):
            a = h * hd
            y = F.layer_norm(x, (d,), p["ln1_w"][:d], p["ln1_b"][:d])
            split = lambda n: F.linear(y, p[f"{n}_w"][:a, :d], p[f"{n}_b"][:a]) \
                .view(b, t, h, hd).transpose(1, 2)
            att = _attention(split("q"), split("k"), split("v"), 0)
            x = x + F.linear(att.transpose(1, 2).reshape(b, t, a), p["out_w"][:d, :a], p["out_b"][:d])
            if v == "none":
                continue
            y = F.layer_norm(x, (d,), p["ln2_w"][:d], p["ln2_b"][:d])
            if v in ("standard", "shared"):
                w = self.shared if v == "shared" else {k[4:]: p[k] for k in
                                                       ("std_up_w", "std_up_b", "std_down_w", "std_down_b")}
                y = F.linear(F.gelu(F.linear(y, w["up_w"][:f, :d], w["up_b"][:f])),
                             w["down_w"][:d, :f], w["down_b"][:d])
            elif v == "glu":
                g = F.gelu(F.linear(y, p["glu_gate_w"][:f, :d], p["glu_gate_b"][:f]))
                y = F.linear(g * F.linear(y, p["glu_up_w"][:f, :d], p["glu_up_b"][:f]),
                             p["glu_down_w"][:d, :f], p["glu_down_b"][:d])
            else:  # lowrank
                y = F.linear(F.linear(y, p["lr_up_v"][:r, :d]), p["lr_up_u"][:f, :r], p["lr_up_b"][:f])
                y = F.linear(F.linear(F.gelu(y), p["lr_down_v"][:r, :f]),
                             p["lr_down_u"][:d, :r], p["lr_down_b"][:d])
            x = x + y
        x = F.layer_norm(x, (d,), self.ln_f_w[:d], self.ln_f_b[:d])
        return x @ self.wte[:, :d].t()

    @torch.no_grad()
    def extract(self, subnet: SubnetConfig) -> Transformer:
        """A standalone :class:`Transformer` holding copies of ``subnet``'s slices."""
        self.space.check(subnet)
        model = Transformer(subnet).to(self.wte.device)
        d, hd, r = subnet.d_model, subnet.head_dim, subnet.lowrank_rank
        copy = lambda dst, src: dst.copy_(src)
        copy(model.wte.weight, self.wte[:, :d])
        copy(model.wpe.weight, self.wpe[:, :d])
        copy(model.ln_f.weight, self.ln_f_w[:d])
        copy(model.ln_f.bias, self.ln_f_b[:d])
        if model.shared_ffn is not None:
            f = subnet.shared_ffn_dim
            copy(model.shared_ffn.up.weight, self.shared["up_w"][:f, :d])
            copy(model.shared_ffn.up.bias, self.shared["up_b"][:f])
            copy(model.shared_ffn.down.weight, self.shared["down_w"][:d, :f])
            copy(model.shared_ffn.down.bias, self.shared["down_b"][:d])
        for block, p, h, f, v in zip(model.blocks, self.layers, subnet.heads, subnet.ffn_dims,
                                     subnet.ffn_variants):
            a = h * hd
            for ln in ("ln1", "ln2"):
                copy(getattr(block, ln).weight, p[f"{ln}_w"][:d])
                copy(getattr(block, ln).bias, p[f"{ln}_b"][:d])
            for n in "qkv":
                copy(getattr(block.attn, n).weight, p[f"{n}_w"][:a, :d])
                copy(getattr(block.attn, n).bias, p[f"{n}_b"][:a])
            copy(block.attn.out.weight, p["out_w"][:d, :a])
            copy(block.attn.out.bias, p["out_b"][:d])
            ffn = block.ffn
            if v == "standard":
                copy(ffn.up.weight, p["std_up_w"][:f, :d]); copy(ffn.up.bias, p["std_up_b"][:f])
                copy(ffn.down.weight, p["std_down_w"][:d, :f]); copy(ffn.down.bias, p["std_down_b"][:d])
            elif v == "glu":
                for n in ("gate", "up"):
                    copy(getattr(ffn, n).weight, p[f"glu_{n}_w"][:f, :d])
                    copy(getattr(ffn, n).bias, p[f"glu_{n}_b"][:f])
                copy(ffn.down.weight, p["glu_down_w"][:d, :f]); copy(ffn.down.bias, p["glu_down_b"][:d])
            elif v == "lowrank":
                copy(ffn.up_v.weight, p["lr_up_v"][:r, :d])
                copy(ffn.up_u.weight, p["lr_up_u"][:f, :r]); copy(ffn.up_u.bias, p["lr_up_b"][:f])
                copy(ffn.down_v.weight, p["lr_down_v"][:r, :f])
                copy(ffn.down_u.weight, p["lr_down_u"][:d, :r]); copy(ffn.down_u.bias, p["lr_down_b"][:d])
        return model
