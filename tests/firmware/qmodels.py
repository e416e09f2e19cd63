"""Deterministic quantized models for the model-compiler tests: random int8 weights with
constants that keep activations in range (a stand-in where no trained model file is at hand)."""

import numpy as np

from firmware.model import ModelDesc, QuantizedModel, tensor_specs

__all__ = ["random_qmodel", "small_desc"]


def small_desc(variant="standard", *, vocab=40, context=16, d_model=64, heads=2, head_dim=32,
               ffn=96, rank=16, layers=2) -> ModelDesc:
    variants = (variant,) * layers if isinstance(variant, str) else tuple(variant)
    dims = tuple(0 if v == "none" else ffn for v in variants)
    return ModelDesc(vocab, context, d_model, head_dim, (heads,) * layers, dims, variants,
                     rank if "lowrank" in variants else 0)


# (mult range, shift) per scalar or vector name suffix: chosen so that int8 activations
# have a spread of tens and the residual stream about 2**18.
_MULT_SHIFT = {
    "embed.mult_tok": 1 << 12, "embed.mult_pos": 1 << 11,
    "ln": (1 << 15, 34, 5),             # mult, shift, SH
    "req": ((1 << 14, 1 << 15), 22),    # q k v and FFN hidden
    "add": ((1 << 13, 1 << 14), 9),     # out and down into the residual stream
    "softmax": (1 << 14, 15), "context": (1 << 15, 21), "gelu": (1 << 15, 28),
    "mul": (1 << 15, 20),
}


def random_qmodel(desc: ModelDesc, seed: int = 0) -> QuantizedModel:
    rng = np.random.default_rng(seed)
    after = {p: a for p, _, _, _, a in desc.linears()}
    tensors = {}
    for name, spec in tensor_specs(desc).items():
        prefix, _, leaf = name.rpartition(".")
        if spec.kind == "int8":
            tensors[name] = np.clip(rng.normal(0, 40, spec.shape), -128, 127).astype(np.int8)
        elif name in ("embed.mult_tok", "embed.mult_pos"):
            tensors[name] = np.int64(_MULT_SHIFT[name])
        elif leaf == "gamma":
            tensors[name] = rng.integers(300, 700, spec.shape).astype(np.int32)
        elif leaf == "beta":
            tensors[name] = rng.integers(-2**21, 2**21, spec.shape).astype(np.int32)
        elif leaf == "bias":
            tensors[name] = rng.integers(-3000, 3000, spec.shape).astype(np.int32)
        elif leaf == "sh":
            tensors[name] = np.int64(_MULT_SHIFT["ln"][2])
        elif prefix.endswith(("ln1", "ln2")) or prefix == "ln_f":
            tensors[name] = np.int64(_MULT_SHIFT["ln"][0 if leaf == "mult" else 1])
        elif prefix in after:
            (lo, hi), shift = _MULT_SHIFT[after[prefix]]
            tensors[name] = (rng.integers(lo, hi, spec.shape).astype(np.int32) if leaf == "mult"
                             else np.int64(shift))
        elif prefix.endswith(".gelu") and leaf in ("b", "c", "one"):
            tensors[name] = np.int64({"b": -75, "c": 6224, "one": 6224}[leaf])
        else:
            kind = prefix.rpartition(".")[2]
            mult, shift = _MULT_SHIFT[kind]
            tensors[name] = np.int64(mult if leaf == "mult" else shift)
    return QuantizedModel(desc, tensors, logit_scale=1.0, meta={"seed": seed})
