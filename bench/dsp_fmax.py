"""Fmax with each PE multiplier: the DSP primitive with its own registers against the generic ``*``.

    python -m bench.dsp_fmax configs/default.toml configs/orangecrab-25f.toml \\
        [--multipliers generic,auto] [--clock-mhz 150] [--out build/dsp_fmax]
    python -m bench.dsp_fmax configs/default.toml --array 12x12 --multipliers auto
    python -m bench.dsp_fmax --bare 16x1 [--device 85k] [--multipliers generic,ecp5]

Each config is built (``gen.build``, up to ``--stage``, default ``pnr``; timing
misses allowed so the reports are written) once per multiplier, with the
config's other parameters unchanged except ``--clock-mhz`` when given (a
higher constraint makes nextpnr work harder than a clock the design meets
easily). A result line gives the multiplier as resolved (``auto`` -> the
board's family or ``generic``), Fmax, the critical path, the DSP count, and the
peak int8 MAC/s, ``rows * cols * Fmax``. Lines are appended to ``--results``
(default ``OUT/dsp_fmax.jsonl``); docs/fpga.md records the figures.

``--bare RxC`` places the systolic array alone (``rtl.array.SystolicArray``, its
ports on the device's pins, which nextpnr times apart): the PEs' own Fmax, without
the controller, memories and host link around them.
"""

import argparse
import dataclasses
import json
import pathlib
import subprocess
import sys
import time

from bench.fpga_build import build_one
from gen.build import REPO, multiplier_for
from gen.config import Config, ConfigError, load_config


def variants(config: Config, multipliers, clock_mhz=None, array=None):
    """``config`` once per multiplier (at ``clock_mhz``, with ``array`` = (rows, cols)),
    each named after what changed."""
    target = config.target
    if clock_mhz:
        target = dataclasses.replace(target, clock_mhz=clock_mhz)
    suffix = (f"-{array[0]}x{array[1]}" if array else "") + (f"-{clock_mhz:g}mhz" if clock_mhz else "")
    base = dataclasses.replace(config.accelerator, rows=array[0], cols=array[1]) if array \
        else config.accelerator
    for multiplier in multipliers:
        acc = dataclasses.replace(base, multiplier=multiplier)
        yield Config(name=f"{config.name}-{multiplier}{suffix}", accelerator=acc, target=target,
                     source=f"{config.source} with multiplier = {multiplier!r}"
                            + (f", clock_mhz = {clock_mhz:g}" if clock_mhz else "")
                            + (f", {array[0]}x{array[1]}" if array else ""))


def bare_array(rows, cols, multiplier, device, out: pathlib.Path, freq_mhz=250) -> dict:
    """Synthesize and place ``SystolicArray(rows, cols)`` alone; Fmax and critical path."""
    from amaranth.back import verilog
    from boards import get_device
    from gen.build import _ABC9_NAMES
    from gen.toolchain import find_toolchain
    from rtl.array import SystolicArray
    dev = get_device(device)
    out.mkdir(parents=True, exist_ok=True)
    (out / "top.v").write_text(verilog.convert(
        SystolicArray(rows, cols, multiplier=multiplier), name="top", emit_src=False))
    tools = find_toolchain()
    synth = "synth_ecp5" if dev.family == "ecp5" else "synth_ice40 -dsp"
    start = time.monotonic()
    subprocess.run([tools.tool("yosys").path, "-q", "-l", "yosys.log", "-p",
                    f"read_verilog top.v; {_ABC9_NAMES}; {synth} -top top -json top.json"],
                   cwd=out, check=True)
    synth_s = time.monotonic() - start
    subprocess.run([tools.tool("nextpnr-" + dev.family).path, "--quiet", "--log", "pnr.log",
                    *dev.nextpnr_args, "--json", "top.json", "--freq", str(freq_mhz),
                    "--report", "report.json", "--timing-allow-fail"], cwd=out, check=True)
    report = json.loads((out / "report.json").read_text())
    fmax = {clock: round(v["achieved"], 2) for clock, v in report["fmax"].items()}
    path = next((p for p in report.get("critical_paths", [])
                 if "<async>" not in p["from"] + p["to"]), None)
    steps = path["path"] if path else []
    return {"bare": f"{rows}x{cols}", "device": dev.part, "multiplier": multiplier,
            "fmax_mhz": min(fmax.values()) if fmax else None,
            "critical_path": steps and {
                "from": f"{steps[0]['from']['cell']}.{steps[0]['from']['port']}",
                "to": f"{steps[-1]['to']['cell']}.{steps[-1]['to']['port']}",
                "logic_ns": round(sum(s["delay"] for s in steps if s["type"] != "routing"), 2),
                "routing_ns": round(sum(s["delay"] for s in steps if s["type"] == "routing"), 2)},
            "dsps": report["utilization"].get("MULT18X18D", report["utilization"].get(
                "ICESTORM_DSP", {})).get("used"),
            "synth_s": round(synth_s, 1), "pnr_s": round(time.monotonic() - start - synth_s, 1)}


def _record(results: pathlib.Path, row: dict):
    with open(results, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.dsp_fmax", description=__doc__)
    parser.add_argument("configs", nargs="*", help="configs to build")
    parser.add_argument("--bare", help="ROWSxCOLS: place the array alone instead")
    parser.add_argument("--device", default="85k", help="device for --bare (default: 85k)")
    parser.add_argument("--multipliers", default="generic,auto",
                        help="[accelerator] multiplier values (default: %(default)s)")
    parser.add_argument("--clock-mhz", type=float, help="constraint (default: each config's)")
    parser.add_argument("--array", help="ROWSxCOLS instead of each config's")
    parser.add_argument("--stage", default="pnr", help="last stage (default: pnr)")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "build" / "dsp_fmax")
    parser.add_argument("--results", type=pathlib.Path)
    args = parser.parse_args(argv)
    results = args.results or args.out / "dsp_fmax.jsonl"
    results.parent.mkdir(parents=True, exist_ok=True)
    if args.bare:
        rows, cols = (int(n) for n in args.bare.lower().split("x"))
        for multiplier in args.multipliers.split(","):
            _record(results, bare_array(rows, cols, multiplier, args.device,
                                        args.out / f"bare-{args.device}-{args.bare}-{multiplier}"))
        return 0
    try:
        array = tuple(int(n) for n in args.array.lower().split("x")) if args.array else None
        configs = [variant for path in args.configs
                   for variant in variants(load_config(path), args.multipliers.split(","),
                                           args.clock_mhz, array)]
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for config in configs:
        out = args.out / config.name
        row = {"config": config.name, "multiplier": multiplier_for(config),
               "build": build_one(config, out, args.stage)}
        try:    # the report of the place and route, also when timing was missed
            pnr = json.loads((out / "resources.json").read_text())
        except (OSError, ValueError):
            pnr = None
        if pnr and pnr.get("fmax_mhz"):
            acc = config.accelerator
            row.update(fmax_mhz=pnr["fmax_mhz"], critical_path=pnr.get("critical_path"),
                       used={k: v["used"] for k, v in pnr["resources"].items()},
                       peak_gmacs=round(acc.rows * acc.cols * pnr["fmax_mhz"] / 1e3, 2))
        _record(results, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
