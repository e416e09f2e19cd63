"""Golden results in torch, independent of firmware/ (which uses numpy).

int matmuls are exact (int64 products and sums, then wrapped to the accumulator
width as int32 addition wraps); requantization is rtl/isa.py's formula in torch
integers.
"""

import numpy as np
import torch


def _tensor(x):
    return torch.as_tensor(np.asarray(x, dtype=np.int64))


def wrap(x: torch.Tensor, width: int) -> torch.Tensor:
    if width >= 64:
        return x
    half = 1 << (width - 1)
    return torch.remainder(x + half, 1 << width) - half


def matmul(a, b, bias=None, *, acc_width=32) -> torch.Tensor:
    """acc_width-bit ``a @ b (+ bias)`` as int64: the accumulator wraps, the bias add wraps."""
    acc = wrap(torch.matmul(_tensor(a), _tensor(b)), acc_width)
    if bias is not None:
        acc = wrap(acc + _tensor(bias), acc_width)
    return acc


def requantize(a, b, bias, mult: int, shift: int, *, input_width=8, acc_width=32) -> torch.Tensor:
    """rtl/isa.py: x = acc + bias (exact), round half up by 2**shift, saturate to input_width."""
    x = wrap(torch.matmul(_tensor(a), _tensor(b)), acc_width)
    if bias is not None:
        x = x + _tensor(bias)
    y = x * mult
    if shift:
        # An arithmetic shift floors; 2**63 itself would not fit in int64.
        y = torch.bitwise_right_shift(y + (1 << (shift - 1)), shift)
    low, high = -(1 << (input_width - 1)), (1 << (input_width - 1)) - 1
    return torch.clamp(y, low, high)
