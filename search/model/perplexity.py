"""Perplexity of a model or of a subnet sliced from a supernet."""

import math

import torch
import torch.nn.functional as F

from .data import Corpus, eval_windows
from .space import SubnetConfig

__all__ = ["evaluate", "nll", "window_nll"]


@torch.no_grad()
def window_nll(model, subnet: SubnetConfig | None, x: torch.Tensor, y: torch.Tensor, *,
               batch_size: int = 64) -> torch.Tensor:
    """Mean negative log-likelihood (nats per token) of each window: float64 (N,).

    model : a :class:`Supernet` (with ``subnet``) or a :class:`Transformer`
        (``subnet`` None). x, y : (N, T) inputs and targets.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        logits = model(xb, subnet) if subnet is not None else model(xb)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), yb.flatten(), reduction="none")
        out.append(loss.view(len(xb), -1).double().mean(1).cpu())
    model.train(was_training)
    return torch.cat(out)


def nll(model, subnet: SubnetConfig | None, tokens: torch.Tensor, *, max_tokens: int | None = None,
        batch_size: int = 64) -> float:
    """Mean negative log-likelihood (nats per token) of ``tokens``.

    model : a :class:`Supernet` (with ``subnet``) or a :class:`Transformer`
        (``subnet`` None).
    tokens : 1-D ids, cut into non-overlapping windows of ``context_len``; the
        first ``max_tokens`` predictions count (all when None), in windows
        stratified over the whole split (see :func:`eval_windows`).
    """
    cfg = subnet if subnet is not None else model.cfg
    x, y = eval_windows(tokens, cfg.context_len, max_tokens)
    return float(window_nll(model, subnet, x, y, batch_size=batch_size).mean())


def evaluate(supernet, subnet: SubnetConfig, data, *, max_tokens: int | None = 32768,
             batch_size: int = 64) -> float:
    """Validation perplexity (per token) of ``subnet`` sliced from ``supernet``.

    data : a :class:`Corpus` (its validation split is used) or a 1-D token tensor.
    max_tokens : predicted tokens to score (None = the whole split), in windows
        stratified over the whole split. The default 32,768 tokens takes ~1-2 s
        per subnet on 2 CPU cores (see docs/models.md).
    """
    tokens = data.valid if isinstance(data, Corpus) else data
    return math.exp(nll(supernet, subnet, tokens, max_tokens=max_tokens, batch_size=batch_size))
