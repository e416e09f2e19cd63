"""From the model space to the firmware: a :class:`SubnetConfig` becomes a
:class:`firmware.model.ModelDesc`, and a trained :class:`Transformer` becomes
``(ModelDesc, float state)`` for :func:`firmware.quantize.quantize`.

The float state names every tensor as the quantized model does
(``firmware/model.py``): ``wte``, ``wpe``, ``layers.{i}.ln1.weight``/``.bias``,
``layers.{i}.attn.{q,k,v,out}.weight``/``.bias``, ``layers.{i}.ln2.*``, the
FFN under ``layers.{i}.ffn.*`` (``up``, ``down``, ``gate``, ``up_v``, ``up_u``,
``down_v``, ``down_u``) or, once, ``shared_ffn.*``, and ``ln_f.*``.
"""

import torch

from firmware.model import ModelDesc
from .space import SubnetConfig
from .transformer import Transformer

__all__ = ["to_model_desc", "float_state", "export"]


def to_model_desc(cfg: SubnetConfig) -> ModelDesc:
    """The firmware's description of the architecture ``cfg``."""
    return ModelDesc(vocab_size=cfg.vocab_size, context_len=cfg.context_len, d_model=cfg.d_model,
                     head_dim=cfg.head_dim, heads=cfg.heads, ffn_dims=cfg.ffn_dims,
                     ffn_variants=cfg.ffn_variants, lowrank_rank=cfg.lowrank_rank)


def float_state(model: Transformer) -> dict[str, torch.Tensor]:
    """The float tensors of ``model`` under the firmware's names (detached float32 copies on the CPU)."""
    out = {}
    for name, t in model.state_dict().items():
        if name.startswith("blocks."):
            _, i, rest = name.split(".", 2)
            name = f"layers.{i}.{rest}"
        elif name in ("wte.weight", "wpe.weight"):
            name = name[:3]
        out[name] = t.detach().to("cpu", torch.float32).clone()
    return out


def export(model: Transformer) -> tuple[ModelDesc, dict[str, torch.Tensor]]:
    """``(to_model_desc(model.cfg), float_state(model))``: what the quantizer takes."""
    return to_model_desc(model.cfg), float_state(model)
