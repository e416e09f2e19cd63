"""The largest memories each board's config can hold, from the config-time block RAM model.

    python -m bench.memory_capacity [configs ...]

For each config it keeps everything else and finds, one memory at a time, the largest
``scratchpad_kib`` (then ``accumulator_kib``, ``program_kib``) that still fits the
device's block RAM (``gen/memfit.py``; the model reproduces synthesis' block counts).
"""

import dataclasses
import sys

from boards import BOARDS, DEVICES
from gen.config import load_config
from gen.memfit import memory_report

DEFAULT_CONFIGS = ("configs/tiny.toml", "configs/orangecrab-25f.toml", "configs/default.toml")


def _fits(geometry, family, available):
    return memory_report(geometry, family, available)["used"] <= available


def largest(geometry, key, family, available):
    """The largest whole KiB of ``key`` that fits, the others as given (0 if none)."""
    low, high = 0, 1
    tokens = max(geometry.tokens, 2)  # a program memory needs a token buffer
    replace = lambda kib: dataclasses.replace(geometry, **{key: kib, "tokens": tokens})
    while high <= 4096 and _fits(replace(high), family, available):
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if _fits(replace(mid), family, available) else (low, mid)
    return low


def main(argv=None):
    paths = (argv if argv is not None else sys.argv[1:]) or DEFAULT_CONFIGS
    print("| config | device | block RAMs used / available | largest scratchpad_kib | "
          "largest accumulator_kib | largest program_kib |")
    print("|---|---|---|---|---|---|")
    for path in paths:
        config = load_config(path)
        device = DEVICES[BOARDS[config.target.board].device if config.target.board
                         else config.target.device]
        block = "DP16KD" if device.family == "ecp5" else "ICESTORM_RAM"
        available = device.limits[block]
        a = config.accelerator
        used = memory_report(a.geometry, device.family, available)["used"]
        sizes = [largest(a.geometry, key, device.family, available)
                 for key in ("scratchpad_kib", "accumulator_kib", "program_kib")]
        program = sizes[2] if a.program_kib else "— (no program memory)"
        print(f"| `{config.name}` | {device.part} | {used} / {available} {block} | "
              f"{sizes[0]} | {sizes[1]} | {program} |")


if __name__ == "__main__":
    main()
