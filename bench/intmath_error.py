"""Error of the integer vector functions against float torch (``python -m bench.intmath_error``).

The integer side is the torch reference of docs/intmath.md in
tests/rtl/test_vector.py, which the RTL matches bit for bit (and which shares
no code with the RTL). For each function it prints the max |delta| against the
float function on the same (dequantized) inputs, both on the int8 output (the
error that reaches the next layer) and before the last rounding (the error of
the approximation itself). docs/intmath.md ("Error against float") records the
figures.

* softmax: rows of n in {8, 64, 256} N(0, sigma) scores, sigma in {1, 2, 4}, at
  the scale 2**-10 that i-exp takes (mult = 1, shift = 0); probabilities are
  out / 128 (before rounding: e * f / 2**40).
* GELU: every int8 input at input scales 2/127, 4/127 and 8/127 (|x| up to 2, 4
  and 8), B, C and ONE from the formulas in docs/intmath.md, output at the input
  scale (before rounding: g * S * 0.2888 * s**2 / 2).
* LayerNorm: rows of d in {64, 256} N(0, 1) values with two outliers (+6, -6) at
  the scale 2**-12, gamma = 1 + 0.1 N(0, 1) at 2**9 (|G| < 2**11), beta =
  0.1 N(0, 1), output at 8/127, which the outliers need (before rounding:
  sat32(z * G + Bt) / 2**24).
"""

import argparse
import math
import sys

import torch

from tests.rtl.test_vector import iexp, igelu, ilayernorm, isoftmax, rq, sat16, sat32


def mult_shift(ratio):
    """(mult, shift): mult < 2**16, mult / 2**shift ~ ratio, as many bits as fit."""
    shift = 0
    while ratio * 2 ** (shift + 1) < 65535.5 and shift < 63:
        shift += 1
    return int(round(ratio * 2 ** shift)), shift


def softmax_error(gen, rows=200):
    worst_out = worst_raw = 0.0
    for n in (8, 64, 256):
        for sigma in (1.0, 2.0, 4.0):
            for _ in range(rows):
                x = (torch.randn(n, generator=gen) * sigma * 2**10).round().to(torch.int64)
                ref = torch.softmax(x.double() * 2**-10, 0)
                out = isoftmax(x, n, n, 1, 0).double() / 128
                xs = x
                e = iexp((xs - xs.max()).clamp(min=-32768))
                raw = (e * ((1 << 40) // int(e.sum()))).double() / 2**40
                worst_out = max(worst_out, float((out - ref).abs().max()))
                worst_raw = max(worst_raw, float((raw - ref).abs().max()))
    return worst_out, worst_raw


def gelu_error():
    results = []
    q = torch.arange(-128, 128, dtype=torch.int64)
    for span in (2, 4, 8):
        s_in = span / 127
        s = s_in / math.sqrt(2)
        b = math.floor(-1.769 / s)
        c = one = math.floor(1 / (0.2888 * s * s))
        g_scale = s_in * 0.2888 * s * s / 2          # real value of one unit of g
        mult, shift = mult_shift(g_scale / s_in)     # output scale = input scale
        ref = torch.nn.functional.gelu(q.double() * s_in)
        out = igelu(q, b, c, one, mult, shift).double() * s_in
        a = torch.minimum(q.abs(), torch.tensor(-b))
        y = sat32(torch.sign(q) * (c - (a + b) ** 2))
        raw = sat32(q * (y + one)).double() * g_scale
        results.append((span, float((out - ref).abs().max()), float((raw - ref).abs().max()),
                        s_in))
    return results


def layernorm_error(gen, rows=100):
    worst_out = worst_raw = 0.0
    s_x, k_g, s_out = 2**-12, 9, 8 / 127    # outliers reach |y| ~ 6: 8 covers them
    for d in (64, 256):
        for _ in range(rows):
            x = torch.randn(d, generator=gen)
            x[torch.randint(0, d, (2,), generator=gen)] = torch.tensor([6.0, -6.0])
            xi = (x / s_x).round().to(torch.int64)
            gamma = 1 + 0.1 * torch.randn(d, generator=gen)
            beta = 0.1 * torch.randn(d, generator=gen)
            gi = (gamma * 2**k_g).round().to(torch.int64)
            bi = (beta * 2**(15 + k_g)).round().to(torch.int64)
            spread = int((xi - xi.sum() // d).abs().max())
            sh = max(0, math.ceil(math.log2((spread + 1) / 32767)))
            mult, shift = mult_shift(1 / (2**(15 + k_g) * s_out))
            xf = xi.double() * s_x
            ref = torch.nn.functional.layer_norm(xf, (d,), eps=0.0) * gi.double() / 2**k_g \
                + bi.double() / 2**(15 + k_g)
            out = ilayernorm(xi, gi, bi, sh, mult, shift).double() * s_out
            # Before the final rounding: the int32 z * G + Bt.
            mean = torch.div(xi.sum(), d, rounding_mode="floor")
            ys = sat16((xi - mean) >> sh)
            std = max(math.isqrt(int((ys * ys).sum()) // d), 1)
            z = (ys * ((1 << 31) // std)) >> 16
            raw = sat32(z * gi + bi).double() / 2**(15 + k_g)
            assert float(ref.abs().max()) < 127 * s_out, "the output scale clips"
            worst_out = max(worst_out, float((out - ref).abs().max()))
            worst_raw = max(worst_raw, float((raw - ref).abs().max()))
    return worst_out, worst_raw, s_out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.intmath_error",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    gen = torch.Generator().manual_seed(args.seed)
    out, raw = softmax_error(gen)
    print("| function | max abs delta, int8 output | before the output rounding | output step |")
    print("|---|---:|---:|---:|")
    print(f"| softmax probability (n 8..256) | {out:.5f} | {raw:.5f} | 1/128 = 0.00781 |")
    for span, out, raw, step in gelu_error():
        print(f"| GELU, x in [-{span}, {span}] | {out:.5f} | {raw:.5f} | {step:.5f} |")
    out, raw, step = layernorm_error(gen)
    print(f"| LayerNorm, y in [-8, 8] (d 64, 256) | {out:.5f} | {raw:.5f} | {step:.5f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
