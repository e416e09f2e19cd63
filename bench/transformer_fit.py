"""The largest model of the default search space that each board can hold on chip.

    python -m bench.transformer_fit [--space configs/supernet_default.toml]

For each board it takes the array of its board config (``configs/tiny.toml`` for
the iCEBreaker, ``configs/orangecrab-25f.toml``, ``configs/default.toml`` for the
ULX3S 85F) and asks, for every model of the space (uniform layers: one head
count, FFN width and variant for all layers), what memories the model compiler
needs (``firmware.compile_model.plan_memory`` and ``program_length``: weights,
constants, KV cache for the whole context, program) and whether those memories
fit the device's block RAM (``gen/memfit.py``, the config-time model that
reproduces synthesis' counts). The largest model is the one with the most
weight bytes. A model whose head_dim is not a multiple of cols, or any model on
an array that is not square, cannot run at all.
"""

import argparse
import dataclasses
import itertools
import math

from boards import BOARDS, DEVICES
from firmware.compile_model import plan_memory, program_length, ModelRefused, check_fits
from firmware.model import ModelDesc
from gen.config import load_config, read_toml
from gen.memfit import memory_report
from rtl.isa import Geometry, UNITS, INSTRUCTION_BYTES

__all__ = ["space_models", "sized_geometry", "largest_fitting", "BOARD_CONFIGS", "VOCAB"]

VOCAB = 85      # the Shakespeare tokenizer's characters and <unk> (the shipped model's vocabulary)
BOARD_CONFIGS = {"icebreaker": "configs/tiny.toml", "orangecrab-25f": "configs/orangecrab-25f.toml",
                 "ulx3s-85f": "configs/default.toml"}


def space_models(path="configs/supernet_default.toml", vocab=VOCAB) -> list[ModelDesc]:
    """Every model of the space's [space] table with uniform layers."""
    space = read_toml(path)["space"]
    out = []
    for d, layers, heads, ffn, variant in itertools.product(
            space["d_model"], space["layers"], space["heads"], space["ffn_dim"],
            space["ffn_variants"]):
        ranks = space.get("lowrank_rank", [0]) if variant == "lowrank" else [0]
        for rank in ranks:
            out.append(ModelDesc(vocab, space["context_len"], d, space["head_dim"],
                                 (heads,) * layers, (ffn,) * layers, (variant,) * layers, rank))
    return out


def sized_geometry(desc: ModelDesc, base: Geometry) -> Geometry | None:
    """``base`` with memories just big enough for ``desc`` (tokens = its context, every
    vector unit); None when no such geometry exists (rows beyond what instructions address)."""
    g = dataclasses.replace(base, units=UNITS, tokens=desc.context_len,
                            program_kib=max(base.program_kib, 1),
                            scratchpad_kib=max(base.scratchpad_kib, 1),
                            accumulator_kib=max(base.accumulator_kib, 1))
    _, sp_rows, acc_rows = plan_memory(desc, g)
    words = program_length(desc, g)
    kib = lambda rows, row_bytes: math.ceil(rows * row_bytes / 1024 * 4) / 4 + 0.25
    try:
        return dataclasses.replace(g, scratchpad_kib=kib(sp_rows, g.sp_row_bytes),
                                   accumulator_kib=kib(acc_rows, g.acc_row_bytes),
                                   program_kib=kib(words, INSTRUCTION_BYTES))
    except ValueError:
        return None


def largest_fitting(board_name, config_path, models):
    """(desc, geometry, block RAMs used, available) of the largest model that fits, or None."""
    board = BOARDS[board_name]
    device = DEVICES[board.device]
    family = board.family
    available = device.limits["DP16KD" if family == "ecp5" else "ICESTORM_RAM"]
    base = load_config(config_path).accelerator.geometry
    capacity = available * (18 if family == "ecp5" else 4) * 1024 // 8
    for desc in sorted(models, key=lambda d: (d.weight_bytes(), d.macs(1, "decode")), reverse=True):
        if desc.weight_bytes() + desc.kv_cache_bytes() > capacity:
            continue        # more bytes than all the block RAM holds
        g = sized_geometry(desc, base)
        if g is None:
            continue
        try:
            check_fits(desc, g)
        except ModelRefused:
            continue
        report = memory_report(g, family, available)
        if report["used"] <= available:
            return desc, g, report["used"], available
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.transformer_fit",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="configs/supernet_default.toml")
    args = parser.parse_args(argv)
    models = space_models(args.space)
    print(f"{len(models)} models in {args.space} (uniform layers, vocab {VOCAB})")
    print("| board | array | largest model that fits | weights KiB | scratchpad / accumulator / "
          "program KiB | block RAMs used / available |")
    print("|---|---|---|---|---|---|")
    for board_name, config_path in BOARD_CONFIGS.items():
        base = load_config(config_path).accelerator.geometry
        found = largest_fitting(board_name, config_path, models)
        array = f"{base.rows}x{base.cols} {base.dataflow.upper()}"
        if found is None:
            smallest = min(models, key=lambda d: d.weight_bytes())
            print(f"| {board_name} | {array} | none (the smallest, {smallest.short()}, needs "
                  f"{smallest.weight_bytes() / 1024:.0f} KiB of weights) | | | |")
            continue
        desc, g, used, available = found
        print(f"| {board_name} | {array} | {desc.short()} | {desc.weight_bytes() / 1024:.0f} | "
              f"{g.scratchpad_kib:g} / {g.accumulator_kib:g} / {g.program_kib:g} | "
              f"{used} / {available} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
