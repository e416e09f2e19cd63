"""Array utilization of GEMMs per config (``python -m bench.utilization``).

For each config and GEMM (M x K x N) it compiles the matmul (firmware.compiler),
counts cycles with the cycle model (firmware/cycles.py, checked against the RTL
to the cycle) and, unless ``--no-rtl``, runs the program on the simulated RTL
(the fastest backend) to confirm the total. Utilization is useful MACs
(M * K * N) / (cycles * rows * cols), end to end (first host byte to last reply
byte, loads and stores included) and over the compute phase only (MATMUL runs).
docs/performance.md records the figures.
"""

import argparse
import dataclasses
import sys
import time

import numpy as np

from gen.config import load_config, ConfigError
from firmware import sim
from firmware.compiler import compile_matmul
from firmware.cycles import cycle_report

GEMMS = [(64, 64, 64), (128, 128, 128), (256, 256, 256), (1, 256, 256)]


def measure(config, shape, backend=None, seed=0):
    g = config.accelerator.geometry
    M, K, N = shape
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, (M, K))
    b = rng.integers(-128, 128, (K, N))
    program = compile_matmul(g, a, b)
    report = cycle_report(program, g)
    macs = M * K * N
    row = {
        "config": config.name, "dataflow": g.dataflow, "array": f"{g.rows}x{g.cols}",
        "gemm": "x".join(map(str, shape)), "total_cycles": report.total_cycles,
        "compute_cycles": report.compute_cycles,
        "util_total": report.utilization(macs, g.rows, g.cols),
        "util_compute": report.utilization(macs, g.rows, g.cols, compute_only=True),
        "bytes_in": len(program), "bytes_out": program.reply_bytes, "rtl_cycles": None,
    }
    if backend is not None:
        reply, cycles = backend.run(program.to_bytes(), program.reply_bytes)
        if not (program.decode(reply) == a @ b).all():
            raise SystemExit(f"error: the RTL got {row['gemm']} wrong on {config.name}")
        row["rtl_cycles"] = cycles
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.utilization",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append",
                        help="config TOML (repeatable; default: configs/tiny.toml, "
                             "configs/default.toml and its OS twin)")
    parser.add_argument("--no-rtl", action="store_true", help="cycle model only, no simulation")
    parser.add_argument("--backend", choices=sim.BACKENDS, help="simulation backend (default: fastest)")
    parser.add_argument("--plot", help="also draw utilization bars into this PNG")
    args = parser.parse_args(argv)
    try:
        configs = [load_config(p) for p in (args.config or ["configs/tiny.toml", "configs/default.toml"])]
        if not args.config:
            base = configs[1]
            os_twin = dataclasses.replace(base, name="default-os", accelerator=dataclasses.replace(
                base.accelerator, dataflow="os"))
            configs.append(os_twin)
        rows = []
        print(f"{'config':<11} {'array':<6} {'df':<3} {'gemm':<12} {'total cyc':>10} "
              f"{'compute cyc':>11} {'util e2e':>8} {'util comp':>9} {'RTL cyc':>10}")
        for config in configs:
            backend = None
            if not args.no_rtl:
                backend = sim.make_backend(args.backend or sim.default_backend(), config)
            for shape in GEMMS:
                start = time.monotonic()
                row = measure(config, shape, backend)
                rows.append(row)
                rtl = "-" if row["rtl_cycles"] is None else str(row["rtl_cycles"])
                if row["rtl_cycles"] is not None and row["rtl_cycles"] != row["total_cycles"]:
                    rtl += " (!= model)"
                print(f"{row['config']:<11} {row['array']:<6} {row['dataflow']:<3} {row['gemm']:<12} "
                      f"{row['total_cycles']:>10} {row['compute_cycles']:>11} "
                      f"{row['util_total']:>8.1%} {row['util_compute']:>9.1%} {rtl:>10}"
                      f"   [{time.monotonic() - start:.1f} s]", flush=True)
    except (ConfigError, sim.SimToolMissing) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.plot:
        plot(rows, args.plot)
    return 0


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [f"{r['config']}\n{r['gemm']}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.6), 4))
    ax.bar(x - 0.2, [r["util_compute"] for r in rows], 0.4, label="compute phase")
    ax.bar(x + 0.2, [r["util_total"] for r in rows], 0.4, label="end to end")
    ax.set_xticks(x, labels, rotation=90, fontsize=7)
    ax.set_ylabel("array utilization")
    ax.set_ylim(0, 1.15)  # room for the legend above the bars
    ax.legend(loc="upper center", ncol=2, fontsize=8)
    fig.tight_layout()
    import pathlib
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
