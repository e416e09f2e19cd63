"""Fmax with each PE multiplier: the DSP primitive with its own registers against the generic ``*``.

    python -m bench.dsp_fmax configs/default.toml configs/orangecrab-25f.toml \\
        [--multipliers generic,auto] [--clock-mhz 150] [--out build/dsp_fmax]

Each config is built (``gen.build``, up to ``--stage``, default ``pnr``; timing
misses allowed so the reports are written) once per multiplier, with the
config's other parameters unchanged except ``--clock-mhz`` when given (a
higher constraint makes nextpnr work harder than a clock the design meets
easily). A result line gives the multiplier as resolved (``auto`` -> the
board's family or ``generic``), Fmax, the critical path, the DSP count, and the
peak int8 MAC/s, ``rows * cols * Fmax``. Lines are appended to ``--results``
(default ``OUT/dsp_fmax.jsonl``); docs/fpga.md records the figures.
"""

import argparse
import dataclasses
import json
import pathlib
import sys

from bench.fpga_build import build_one
from gen.build import REPO, multiplier_for
from gen.config import Config, ConfigError, load_config


def variants(config: Config, multipliers, clock_mhz=None):
    """``config`` once per multiplier (and at ``clock_mhz``), each named after both."""
    target = config.target
    if clock_mhz:
        target = dataclasses.replace(target, clock_mhz=clock_mhz)
    suffix = f"-{clock_mhz:g}mhz" if clock_mhz else ""
    for multiplier in multipliers:
        acc = dataclasses.replace(config.accelerator, multiplier=multiplier)
        yield Config(name=f"{config.name}-{multiplier}{suffix}", accelerator=acc, target=target,
                     source=f"{config.source} with multiplier = {multiplier!r}"
                            + (f", clock_mhz = {clock_mhz:g}" if clock_mhz else ""))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.dsp_fmax", description=__doc__)
    parser.add_argument("configs", nargs="+", help="configs to build")
    parser.add_argument("--multipliers", default="generic,auto",
                        help="[accelerator] multiplier values (default: %(default)s)")
    parser.add_argument("--clock-mhz", type=float, help="constraint (default: each config's)")
    parser.add_argument("--stage", default="pnr", help="last stage (default: pnr)")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "build" / "dsp_fmax")
    parser.add_argument("--results", type=pathlib.Path)
    args = parser.parse_args(argv)
    results = args.results or args.out / "dsp_fmax.jsonl"
    results.parent.mkdir(parents=True, exist_ok=True)
    try:
        configs = [variant for path in args.configs
                   for variant in variants(load_config(path), args.multipliers.split(","),
                                           args.clock_mhz)]
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for config in configs:
        row = build_one(config, args.out / config.name, args.stage)
        acc = config.accelerator
        row["multiplier"] = multiplier_for(config)
        if row.get("fmax_mhz"):
            row["peak_gmacs"] = round(acc.rows * acc.cols * row["fmax_mhz"] / 1e3, 2)
        with open(results, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
