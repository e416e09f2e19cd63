"""Post-training quantization of a float Transformer into a :class:`QuantizedModel`.

``quantize(desc, state, calibration_tokens)`` takes the architecture
(:class:`firmware.model.ModelDesc`), the float tensors (named as
``search/model/export.py`` names them: ``wte``, ``wpe``,
``layers.{i}.ln1.weight``, ``layers.{i}.attn.q.weight``, ...,
``shared_ffn.up.bias``, ``ln_f.bias``) and a few thousand tokens of training
text, and returns every integer of the integer Transformer that
``docs/intmath.md`` defines:

* weights int8, symmetric, **per output channel** (``s_w[j] = max|W[j, :]| / 127``);
  the embedding tables per tensor (EMBED has one multiplier per table);
* activations int8, symmetric, **per tensor**, with scales calibrated on the
  float model's activations over the calibration text (``s = amax / 127``;
  ``amax`` is the largest magnitude seen, or a percentile of the magnitudes
  with ``percentile=``);
* int32 accumulation, biases in int32 at the product scale ``s_in * s_w[j]``;
* every scale change as the hardware's unsigned 16-bit multiplier and 6-bit
  shift: one multiplier per output channel and one shift per linear
  (``M[j] / 2**shift ~ s_in * s_w[j] / s_out``), a scalar pair elsewhere;
* the residual stream in int32 at one scale ``s_x`` for the whole model (the
  EMBED multipliers set it: ``s_x = s_wte / mult_tok = s_wpe / mult_pos``),
  fine enough that the ADD roundings do not matter and coarse enough for 16x
  headroom over the largest calibrated magnitude;
* i-GELU's ``B, C, ONE`` from the GELU input scale, i-softmax's input
  multiplier to the fixed ``2**-10`` scale (with ``1/sqrt(head_dim)``), and
  i-LayerNorm's gamma (``G = round(gamma * 2**g)``, ``|G| < 2**11``), beta
  (``round(beta * 2**(15 + g))``) and pre-shift ``SH`` (calibrated
  ``max|x - mean| >> SH`` below ``2**14``, half of int16);
* a shared FFN once: every layer that uses it feeds it at one calibrated
  input scale (the largest over those layers), so its biases, multipliers and
  GELU constants are shared too.

The float forward used for calibration is written here (``float_forward``)
so that ``firmware/`` needs nothing from ``search/``; it computes what
``search.model.Transformer`` computes (tests check it).
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

from .model import ModelDesc, QuantizedModel, tensor_specs

__all__ = ["quantize", "float_forward", "mult_shift", "perchannel_mult_shift"]

_MULT_MAX = (1 << 16) - 1
_SHIFT_MAX = 63
_SOFTMAX_IN_BITS = 10     # SOFTMAX's input scale is 2**-10 (docs/intmath.md)
_PROB_BITS = 7            # and its output scale 2**-7
_LN_Z_BITS = 15           # i-LayerNorm's z is (x - mean) / std * 2**15
_LN_GAMMA_MAX = (1 << 11) - 1
_LN_DEV_MAX = (1 << 14) - 1   # calibrated |x - mean| >> SH stays below half of int16
_X_HEADROOM = 16          # residual stream: calibrated max |x| * 16 < 2**31
_GELU_A, _GELU_B = 0.2888, 1.769


# --- scales as multipliers and shifts ---------------------------------------------------

def mult_shift(scale: float) -> tuple[int, int]:
    """``(mult, shift)`` with ``mult / 2**shift`` nearest ``scale``, mult < 2**16: the
    largest shift whose multiplier fits."""
    m, s = perchannel_mult_shift(np.array([scale]))
    return int(m[0]), s


def perchannel_mult_shift(scales) -> tuple[np.ndarray, int]:
    """One multiplier per channel and one shift for all: ``M[j] / 2**shift ~ scales[j]``,
    the largest shift at which every ``M[j] <= 65535``."""
    scales = np.asarray(scales, dtype=np.float64)
    if not np.all(np.isfinite(scales)) or np.any(scales <= 0):
        raise ValueError("scales must be positive and finite")
    top = float(scales.max())
    if top > _MULT_MAX:
        raise ValueError(f"a scale of {top:.4g} does not fit a 16-bit multiplier")
    shift = min(_SHIFT_MAX, int(math.floor(math.log2(_MULT_MAX / top))))
    while shift > 0 and np.round(top * 2.0 ** shift) > _MULT_MAX:
        shift -= 1
    mult = np.round(scales * 2.0 ** shift).astype(np.int64)
    return np.maximum(mult, 1), shift


# --- the float model, observed -------------------------------------------------------------

def _linear(state, p, x):
    return F.linear(x, state[f"{p}.weight"], state.get(f"{p}.bias"))


def float_forward(desc: ModelDesc, state: dict, idx: torch.Tensor, observe=None) -> torch.Tensor:
    """Float logits (B, T, vocab) of token ids ``idx`` (B, T): pre-LayerNorm blocks,
    learned positions, exact-erf GELU, tied LM head. ``observe(key, tensor)``, when
    given, sees every activation the integer model quantizes (keys as in
    :func:`quantize`'s scales)."""
    obs = observe or (lambda key, t: None)
    d, hd = desc.d_model, desc.head_dim
    b, t = idx.shape
    x = state["wte"][idx] + state["wpe"][:t]
    obs("x", x)

    def ln(p, x, out_key):
        y = F.layer_norm(x, (d,), state[f"{p}.weight"], state[f"{p}.bias"])
        obs(f"{p}.dev", x - x.mean(-1, keepdim=True))
        obs(out_key, y)
        return y

    mask = torch.ones(t, t, dtype=torch.bool).triu(1)
    for i, (h, v) in enumerate(zip(desc.heads, desc.ffn_variants)):
        p, a = f"layers.{i}", h * hd
        y = ln(f"{p}.ln1", x, f"{p}.ln1.out")
        qkv = []
        for n in "qkv":
            z = _linear(state, f"{p}.attn.{n}", y)
            obs(f"{p}.attn.{n}.out", z)
            qkv.append(z.view(b, t, h, hd).transpose(1, 2))
        q, k, val = qkv
        s = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        c = torch.softmax(s.masked_fill(mask, float("-inf")), -1) @ val
        c = c.transpose(1, 2).reshape(b, t, a)
        obs(f"{p}.attn.context.out", c)
        x = x + _linear(state, f"{p}.attn.out", c)
        obs("x", x)
        if v == "none":
            continue
        Fp = desc.ffn_prefix(i)
        y = ln(f"{p}.ln2", x, f"{Fp}.in")
        if v in ("standard", "shared"):
            u = _linear(state, f"{Fp}.up", y)
            obs(f"{Fp}.up.out", u)
            g = F.gelu(u)
            obs(f"{Fp}.gelu.out", g)
            o = _linear(state, f"{Fp}.down", g)
        elif v == "glu":
            u = _linear(state, f"{Fp}.gate", y)
            obs(f"{Fp}.gate.out", u)
            g = F.gelu(u)
            obs(f"{Fp}.gelu.out", g)
            w = _linear(state, f"{Fp}.up", y)
            obs(f"{Fp}.up.out", w)
            m = g * w
            obs(f"{Fp}.mul.out", m)
            o = _linear(state, f"{Fp}.down", m)
        else:
            r = _linear(state, f"{Fp}.up_v", y)
            obs(f"{Fp}.up_v.out", r)
            u = _linear(state, f"{Fp}.up_u", r)
            obs(f"{Fp}.up_u.out", u)
            g = F.gelu(u)
            obs(f"{Fp}.gelu.out", g)
            r = _linear(state, f"{Fp}.down_v", g)
            obs(f"{Fp}.down_v.out", r)
            o = _linear(state, f"{Fp}.down_u", r)
        x = x + o
        obs("x", x)
    y = ln("ln_f", x, "ln_f.out")
    return y @ state["wte"].t()


class _Amax:
    """Largest magnitudes (or a percentile of them) of every observed activation."""

    def __init__(self, percentile):
        self.percentile = percentile
        self.seen = {}

    def __call__(self, key, t):
        self.seen.setdefault(key, []).append(t.detach().abs().flatten().float())

    def amax(self, key) -> float:
        values = torch.cat(self.seen[key])
        if self.percentile is None or key == "x" or key.endswith(".dev"):
            top = float(values.max())
        else:
            if values.numel() > 1 << 22:
                values = values[torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))[:1 << 22]]
            top = float(torch.quantile(values, self.percentile / 100))
        return max(top, 1e-6)


# --- quantization --------------------------------------------------------------------------

def _np(t):
    return t.detach().to("cpu", torch.float64).numpy()


def quantize(desc: ModelDesc, state: dict, calibration_tokens, *, percentile: float | None = None,
             meta: dict | None = None, batch_size: int = 16) -> QuantizedModel:
    """A :class:`QuantizedModel` of the float model ``state``.

    calibration_tokens : 1-D token ids (a few thousand training tokens), cut into
        windows of ``context_len`` (the last partial window is dropped unless it is
        the only one).
    percentile : activation clipping: ``amax`` is this percentile of the observed
        magnitudes (e.g. 99.99) instead of their maximum; the residual stream and
        the LayerNorm statistics always use the maximum.
    meta : free JSON stored in the file (e.g. ``{"chars": tokenizer.chars}``).
    """
    state = {k: v.detach().to("cpu", torch.float32) for k, v in state.items()}
    specs = tensor_specs(desc)
    needed = ["wte", "wpe"] + [f"{p}.{n}" for p in desc.layernorms() for n in ("weight", "bias")]
    for p, _, _, has_bias, _ in desc.linears():
        needed += [f"{p}.weight"] + ([f"{p}.bias"] if has_bias else [])
    missing = [n for n in needed if n not in state]
    if missing:
        raise ValueError(f"the float state has no {', '.join(missing[:4])}"
                         + (f" and {len(missing) - 4} more" if len(missing) > 4 else ""))
    tokens = torch.as_tensor(calibration_tokens, dtype=torch.long).flatten()
    T = desc.context_len
    if len(tokens) < 1:
        raise ValueError("calibration needs at least one token")
    windows = tokens[:len(tokens) // T * T].view(-1, T) if len(tokens) >= T else tokens[None]
    stats = _Amax(percentile)
    with torch.no_grad():
        for i in range(0, len(windows), batch_size):
            float_forward(desc, state, windows[i:i + batch_size], stats)

    scale = lambda key: stats.amax(key) / 127
    out, scales = {}, {}

    # Weights: per output channel (embeddings per tensor, see below).
    w_scale = {}
    for p, o, i, has_bias, after in desc.linears():
        w = _np(state[f"{p}.weight"])
        amax = np.abs(w).max(axis=1)
        amax = np.maximum(amax, max(float(amax.max()), 1e-8) * 1e-3)
        w_scale[p] = amax / 127
        out[f"{p}.weight"] = np.clip(np.round(w / w_scale[p][:, None]), -127, 127).astype(np.int8)

    # Activation scales (int8, per tensor) of every linear's input and output.
    act = {}
    for i, v in enumerate(desc.ffn_variants):
        p = f"layers.{i}"
        act[f"{p}.ln1.out"] = scale(f"{p}.ln1.out")
        for n in "qkv":
            act[f"{p}.attn.{n}.out"] = scale(f"{p}.attn.{n}.out")
        act[f"{p}.attn.context.out"] = scale(f"{p}.attn.context.out")
        Fp = desc.ffn_prefix(i)
        if Fp is None or f"{Fp}.in" in act:
            continue
        act[f"{Fp}.in"] = scale(f"{Fp}.in")
        for n in ("up", "gate", "gelu", "mul", "up_v", "up_u", "down_v"):
            if f"{Fp}.{n}.out" in stats.seen:
                act[f"{Fp}.{n}.out"] = scale(f"{Fp}.{n}.out")
    act["ln_f.out"] = scale("ln_f.out")

    def linear_in(p):
        """Scale of a linear's int8 input."""
        head, _, name = p.rpartition(".")
        if name in ("q", "k", "v"):
            return act[f"{head.rsplit('.', 1)[0]}.ln1.out"]
        if name == "out":
            return act[f"{head}.context.out"]
        glu = f"{head}.mul.out" in act
        return act[f"{head}." + {"up": "in", "gate": "in", "up_v": "in", "up_u": "up_v.out",
                                 "down": "mul.out" if glu else "gelu.out", "down_v": "gelu.out",
                                 "down_u": "down_v.out"}[name]]

    # The residual stream's scale: headroom over the calibrated max, and fine enough
    # that every ADD multiplier and the EMBED multipliers fit 16 bits with >= 14 bits.
    s_wte = float(np.abs(_np(state["wte"])).max()) / 127
    s_wpe = float(np.abs(_np(state["wpe"])).max()) / 127
    adds = [float((linear_in(p) * w_scale[p]).max()) for p, *_, after in desc.linears() if after == "add"]
    s_x = max(stats.amax("x") * _X_HEADROOM / 2 ** 31, max([s_wte, s_wpe] + adds) / 2 ** 14)
    scales["x"] = s_x

    # EMBED: x = wte_q * mult_tok + wpe_q * mult_pos at s_x.
    mult_tok = max(1, math.ceil(s_wte / s_x - 1e-9))
    mult_pos = max(1, math.ceil(s_wpe / s_x - 1e-9))
    out["wte"] = np.clip(np.round(_np(state["wte"]) / (mult_tok * s_x)), -127, 127).astype(np.int8)
    out["wpe"] = np.clip(np.round(_np(state["wpe"]) / (mult_pos * s_x)), -127, 127).astype(np.int8)
    out["embed.mult_tok"], out["embed.mult_pos"] = mult_tok, mult_pos

    # Linears: bias at s_in * s_w[j]; REQ to the output's scale, or ADD to s_x.
    for p, o, i, has_bias, after in desc.linears():
        s_in = linear_in(p)
        prod = s_in * w_scale[p]
        if has_bias:
            bias = np.round(_np(state[f"{p}.bias"]) / prod)
            if np.abs(bias).max() >= 2 ** 30:
                raise ValueError(f"{p}: a bias of {np.abs(bias).max():.3g} at the product scale "
                                 f"overflows the accumulator")
            out[f"{p}.bias"] = bias.astype(np.int64)
        s_out = s_x if after == "add" else act[f"{p}.out"]
        out[f"{p}.mult"], out[f"{p}.shift"] = perchannel_mult_shift(prod / s_out)

    # Attention: scores to the softmax's 2**-10, probabilities (2**-7) times v to the context.
    for i in range(desc.layers):
        p = f"layers.{i}.attn"
        s_q, s_k, s_v = act[f"{p}.q.out"], act[f"{p}.k.out"], act[f"{p}.v.out"]
        out[f"{p}.softmax.mult"], out[f"{p}.softmax.shift"] = mult_shift(
            s_q * s_k * 2 ** _SOFTMAX_IN_BITS / math.sqrt(desc.head_dim))
        out[f"{p}.context.mult"], out[f"{p}.context.shift"] = mult_shift(
            2.0 ** -_PROB_BITS * s_v / act[f"{p}.context.out"])

    # i-GELU and the GLU product.
    for i, v in enumerate(desc.ffn_variants):
        Fp = desc.ffn_prefix(i)
        if Fp is None or f"{Fp}.gelu.b" in out:
            continue
        s_u = act[f"{Fp}.{ {'glu': 'gate', 'lowrank': 'up_u'}.get(v, 'up') }.out"]
        # g = q (y + ONE) stays inside int32: 127 * 2 * ONE < 2**31.
        s_u = max(s_u, math.sqrt(2 * 254 / (_GELU_A * 2 ** 31)) * 1.01)
        s = s_u / math.sqrt(2)
        B = math.floor(-_GELU_B / s)
        C = math.floor(1 / (_GELU_A * s * s))
        out[f"{Fp}.gelu.b"], out[f"{Fp}.gelu.c"], out[f"{Fp}.gelu.one"] = B, C, C
        out[f"{Fp}.gelu.mult"], out[f"{Fp}.gelu.shift"] = mult_shift(
            s_u * _GELU_A * s * s / 2 / act[f"{Fp}.gelu.out"])
        if v == "glu":
            out[f"{Fp}.mul.mult"], out[f"{Fp}.mul.shift"] = mult_shift(
                act[f"{Fp}.gelu.out"] * act[f"{Fp}.up.out"] / act[f"{Fp}.mul.out"])
        # The REQ before the GELU must produce the (possibly raised) s_u.
        up = {"glu": "gate", "lowrank": "up_u"}.get(v, "up")
        if s_u != act[f"{Fp}.{up}.out"]:
            act[f"{Fp}.{up}.out"] = s_u
            prod = linear_in(f"{Fp}.{up}") * w_scale[f"{Fp}.{up}"]
            out[f"{Fp}.{up}.mult"], out[f"{Fp}.{up}.shift"] = perchannel_mult_shift(prod / s_u)

    # i-LayerNorm.
    for p in desc.layernorms():
        gamma, beta = _np(state[f"{p}.weight"]), _np(state[f"{p}.bias"])
        g = math.floor(math.log2(_LN_GAMMA_MAX / max(float(np.abs(gamma).max()), 1e-12)))
        bmax = float(np.abs(beta).max())
        if bmax > 0:
            g = min(g, math.floor(math.log2(2 ** 30 / bmax)) - _LN_Z_BITS)
        G = np.clip(np.round(gamma * 2.0 ** g), -_LN_GAMMA_MAX, _LN_GAMMA_MAX)
        out[f"{p}.gamma"] = G.astype(np.int64)
        out[f"{p}.beta"] = np.round(beta * 2.0 ** (_LN_Z_BITS + g)).astype(np.int64)
        dev = stats.amax(f"{p}.dev") / s_x
        out[f"{p}.sh"] = max(0, math.ceil(math.log2(max(dev, 1) / _LN_DEV_MAX)))
        if out[f"{p}.sh"] > 31:
            raise ValueError(f"{p}: the residual stream's spread needs a pre-shift of "
                             f"{out[f'{p}.sh']}; at most 31")
        if p == "ln_f":
            s_out = act["ln_f.out"]
        elif p.endswith(".ln1"):
            s_out = act[f"{p}.out"]
        else:
            s_out = act[f"{desc.ffn_prefix(int(p.split('.')[1]))}.in"]
        out[f"{p}.mult"], out[f"{p}.shift"] = mult_shift(2.0 ** -(_LN_Z_BITS + g) / s_out)

    scales.update(act)
    scales["wte"], scales["wpe"] = mult_tok * s_x, mult_pos * s_x
    tensors = {name: np.asarray(out[name]) for name in specs}
    return QuantizedModel(desc, tensors, logit_scale=act["ln_f.out"] * mult_tok * s_x,
                          scales=scales, meta=meta)
