"""Area of the vector unit, one unit at a time (``nice python -m bench.unit_area``).

For each board's default config (UP5K: configs/tiny.toml, 25F:
configs/orangecrab-25f.toml, 85F: configs/default.toml) it builds the
``VectorUnit`` alone with one unit of ``rtl.isa.UNITS`` enabled (and with all of
them), at ``vector_lanes`` = 1 and 2, writes Verilog with
``amaranth.back.verilog`` and synthesizes it with YoWASP Yosys (``synth_ice40
-dsp`` for the UP5K, ``synth_ecp5`` for the ECP5 parts). It prints LUT4s, carry
cells, flip-flops and DSP multipliers per unit at one lane, and what each lane
after the first adds. The 25F and 85F share the ECP5 cells, so they differ only
by their default cols (4 and 8) and by what fraction of the part a figure is.
docs/rtl.md records the table.
"""

import argparse
import concurrent.futures
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

from amaranth.back import verilog

from boards import DEVICES
from gen.config import load_config
from gen.toolchain import find_toolchain
from rtl.isa import UNITS
from rtl.vector import VectorUnit

TARGETS = [  # (label, config, device)
    ("UP5K", "configs/tiny.toml", "up5k"),
    ("25F", "configs/orangecrab-25f.toml", "25k"),
    ("85F", "configs/default.toml", "85k"),
]
# Abc9 names each bit it maps "wire[bit]"; Amaranth's array elements are "x[0]": Yosys
# aborts where both meet unless the hidden names are renamed first (gen/build.py does too).
_ABC9_NAMES = "rename -hide w:*] x:* %d"
CELLS = {
    "ice40": {"lut": ("SB_LUT4",), "carry": ("SB_CARRY",), "dsp": ("SB_MAC16",),
              "ff": ("SB_DFF", "SB_DFFE", "SB_DFFSR", "SB_DFFR", "SB_DFFS", "SB_DFFESR",
                     "SB_DFFER", "SB_DFFES", "SB_DFFSS", "SB_DFFESS")},
    "ecp5": {"lut": ("LUT4",), "carry": ("CCU2C",), "dsp": ("MULT18X18D",),
             "ff": ("TRELLIS_FF",)},
}


def synthesize(family, geometry, workdir):
    """{lut, carry, ff, dsp} of the VectorUnit for ``geometry``."""
    text = verilog.convert(VectorUnit(geometry), name="top", emit_src=False)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "top.v"), "w") as f:
        f.write(text)
    synth = "synth_ice40 -dsp" if family == "ice40" else "synth_ecp5"
    script = (f"read_verilog top.v\n{_ABC9_NAMES}\n{synth} -top top\n"
              f"tee -q -o stat.json stat -json\n")
    with open(os.path.join(workdir, "run.ys"), "w") as f:
        f.write(script)
    yosys = find_toolchain().tool("yosys").path
    result = subprocess.run([yosys, "-q", "run.ys"], cwd=workdir, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"yosys failed in {workdir}: {(result.stderr or result.stdout)[-2000:]}")
    with open(os.path.join(workdir, "stat.json")) as f:
        cells = json.load(f)["design"]["num_cells_by_type"]
    return {key: sum(cells.get(name, 0) for name in names)
            for key, names in CELLS[family].items()}


def jobs():
    for label, config, device in TARGETS:
        base = load_config(config).accelerator.geometry
        family = DEVICES[device].family
        for unit in (*UNITS, "all"):
            units = UNITS if unit == "all" else (unit,)
            for lanes in (1, 2):
                g = dataclasses.replace(base, units=units, vector_lanes=lanes)
                yield (label, device, unit, lanes), family, g


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.unit_area",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("-j", "--jobs", type=int, default=2, help="Yosys runs at once (default 2)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="unit_area_")
    todo = list(jobs())
    results = {}
    start = time.time()
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(synthesize, family, g, os.path.join(work, "_".join(map(str, key)))): key
                   for key, family, g in todo}
        for n, future in enumerate(concurrent.futures.as_completed(futures), 1):
            key = futures[future]
            results[key] = future.result()
            print(f"[{n}/{len(todo)}, {time.time() - start:.0f} s] {key}: {results[key]}",
                  file=sys.stderr, flush=True)

    print("| part (cols) | unit | LUT4 | carry | FF | DSP | +LUT4/lane | +carry/lane | +FF/lane | +DSP/lane |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, config, device in TARGETS:
        cols = load_config(config).accelerator.geometry.cols
        limits = DEVICES[device].limits
        lut_limit = limits.get("ICESTORM_LC") or limits.get("TRELLIS_COMB")
        dsp_limit = limits.get("ICESTORM_DSP") or limits.get("MULT18X18D")
        for unit in (*UNITS, "all"):
            one, two = results[(label, device, unit, 1)], results[(label, device, unit, 2)]
            d = {k: two[k] - one[k] for k in one}
            print(f"| {label} ({cols}) | {unit} | {one['lut']} ({100 * one['lut'] / lut_limit:.0f}%) "
                  f"| {one['carry']} | {one['ff']} | {one['dsp']} of {dsp_limit} | {d['lut']} "
                  f"| {d['carry']} | {d['ff']} | {d['dsp']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({" ".join(map(str, k)): v for k, v in results.items()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
