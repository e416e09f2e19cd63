"""Build configs to bitstreams and print resources, Fmax and time per stage.

    python -m bench.fpga_build configs/tiny.toml configs/default.toml ... [--out build/bench]
    python -m bench.fpga_build --sweep icebreaker --arrays 1x1,2x2,2x4 [--clock-mhz 12]

The first form builds each config (every stage up to the bitstream, timing
misses allowed so the reports are written). The second builds a series of
square or rectangular arrays on one board (the other accelerator parameters
from ``--base``) to find the biggest that fits and its Fmax; each result line
also gives the peak int8 throughput, 2 x MACs x Fmax. Results are appended as
JSON lines to ``--results`` (default ``build/bench/fpga.jsonl``) so a sweep can
be run piecewise in the background. docs/fpga.md records the figures.
"""

import argparse
import dataclasses
import json
import pathlib
import sys
import time

from gen.build import Build, BuildError, REPO
from gen.config import load_config, ConfigError, Config, TargetConfig


def _row(config: Config, build: Build | None, error: str | None, wall_s: float) -> dict:
    acc = config.accelerator
    row = {"config": config.name, "board": config.target.board,
           "array": f"{acc.rows}x{acc.cols}", "dataflow": acc.dataflow,
           "clock_mhz": config.target.clock_mhz, "wall_s": round(wall_s, 1), "error": error}
    if build is not None:
        row["stage_s"] = {s: r.get("seconds") for s, r in build.stages.items()}
        path = build.out / "resources.json"
        if path.exists() and error is None or (path.exists() and "timing" in (error or "")):
            res = json.loads(path.read_text())
            row.update(device=res["device"], fmax_mhz=res["fmax_mhz"],
                       timing_met=res["timing_met"], critical_path=res["critical_path"],
                       resources={k: f"{v['used']}/{v['available']}"
                                  for k, v in res["resources"].items()})
            if res["fmax_mhz"]:
                row["peak_gops"] = round(2 * acc.rows * acc.cols * res["fmax_mhz"] / 1e3, 3)
    return row


def build_one(config: Config, out: pathlib.Path, stage: str) -> dict:
    start = time.monotonic()
    build = None
    error = None
    try:
        build = Build(config, out, allow_timing_fail=True)
        build.run(stage)
    except BuildError as e:
        error = str(e)
    return _row(config, build, error, time.monotonic() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.fpga_build", description=__doc__)
    parser.add_argument("configs", nargs="*", help="configs to build")
    parser.add_argument("--sweep", help="board to sweep array sizes on")
    parser.add_argument("--arrays", default="1x1,2x2,4x4,8x8",
                        help="ROWSxCOLS list for --sweep (default: %(default)s)")
    parser.add_argument("--base", default="configs/default.toml",
                        help="config whose other parameters a sweep uses")
    parser.add_argument("--clock-mhz", type=float, help="clock for --sweep (default: the base's)")
    parser.add_argument("--stage", default="bitstream", help="last stage (default: bitstream)")
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
                target = TargetConfig(board=args.sweep,
                                      clock_mhz=args.clock_mhz or base.target.clock_mhz)
                configs.append(Config(name=f"{args.sweep}-{rows}x{cols}", accelerator=acc,
                                      target=target, source=f"sweep of {args.base}"))
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for config in configs:
        row = build_one(config, args.out / config.name, args.stage)
        with open(results, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
