"""Build configs to bitstreams and print resources, Fmax and time per stage.

    python -m bench.fpga_build configs/tiny.toml configs/default.toml ... [--out build/bench]
    python -m bench.fpga_build --sweep icebreaker --arrays 1x1,2x2,2x4 [--clock-mhz 12]

The first form builds each config (every stage up to the bitstream, timing
misses allowed so the reports are written). The second builds a series of
square or rectangular arrays on one board (the other accelerator parameters
from ``--base``) to find the biggest that fits and its Fmax; each result line
also gives the peak int8 throughput, 2 x MACs x Fmax. Results are appended as
JSON lines to ``--results`` (default ``build/bench/fpga.jsonl``) so a sweep can
be run piecewise in the background: each line is the build's ``record.json``
(numbers only: resources used and available after synthesis and after place and
route, Fmax per clock, the overflow of a design that does not fit, seconds per
stage). A ``--sweep`` may name a device without a board (``--sweep hx8k``): the
accelerator's own ports are then the top level. docs/fpga.md records the figures.
"""

import argparse
import dataclasses
import json
import pathlib
import sys

from gen.build import Build, BuildError, REPO
from gen.config import load_config, ConfigError, Config, TargetConfig


def build_one(config: Config, out: pathlib.Path, stage: str, seed=None) -> dict:
    """Build one config (timing misses allowed, so the reports are written) and return its
    ``record.json`` (see gen.build) with the array and peak throughput added."""
    error = None
    try:
        Build(config, out, allow_timing_fail=True, seed=seed).run(stage)
    except BuildError as e:
        error = str(e)
    try:
        row = json.loads((out / "record.json").read_text())
    except (OSError, ValueError):
        row = {}
    if row.get("error") != error:      # stopped before the build began: no record of its own
        row = {"config_name": config.name, "status": "failed", "error": error}
    acc = config.accelerator
    row.update(array=f"{acc.rows}x{acc.cols}", dataflow=acc.dataflow)
    fmax = min((row.get("fmax_mhz") or {}).values(), default=None)
    if fmax:
        row["peak_gops"] = round(2 * acc.rows * acc.cols * fmax / 1e3, 3)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.fpga_build", description=__doc__)
    parser.add_argument("configs", nargs="*", help="configs to build")
    parser.add_argument("--sweep", help="board or device to sweep array sizes on")
    parser.add_argument("--arrays", default="1x1,2x2,4x4,8x8",
                        help="ROWSxCOLS list for --sweep (default: %(default)s)")
    parser.add_argument("--base", default="configs/default.toml",
                        help="config whose other parameters a sweep uses")
    parser.add_argument("--clock-mhz", type=float, help="clock for --sweep (default: the base's)")
    parser.add_argument("--stage", default="bitstream", help="last stage (default: bitstream)")
    parser.add_argument("--seed", type=int, help="nextpnr placement seed")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "build" / "bench")
    parser.add_argument("--results", type=pathlib.Path)
    args = parser.parse_args(argv)
    results = args.results or args.out / "fpga.jsonl"
    results.parent.mkdir(parents=True, exist_ok=True)
    try:
        configs = [load_config(path) for path in args.configs]
        if args.sweep:
            base = load_config(args.base)
            for spec in args.arrays.split(","):
                rows, cols = (int(n) for n in spec.lower().split("x"))
                acc = dataclasses.replace(base.accelerator, rows=rows, cols=cols)
                from boards import BOARDS
                where = {"board": args.sweep} if args.sweep in BOARDS else {"device": args.sweep}
                target = TargetConfig(**where, clock_mhz=args.clock_mhz or base.target.clock_mhz)
                configs.append(Config(name=f"{args.sweep}-{rows}x{cols}", accelerator=acc,
                                      target=target, source=f"sweep of {args.base}"))
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for config in configs:
        row = build_one(config, args.out / config.name, args.stage, args.seed)
        with open(results, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
