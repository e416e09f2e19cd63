"""Simulated cycles per second of each simulation backend (``python -m bench.simspeed``).

For each config it compiles one random matmul, runs it on every installed backend
(build time reported apart: the compiled models are cached per RTL hash) and
prints cycles, wall seconds and cycles per second. The fastest backend is the
default of ``Device.simulated``; docs/performance.md records the figures.
"""

import argparse
import sys
import time

import numpy as np

from gen.config import load_config, ConfigError
from firmware import sim
from firmware.compiler import compile_matmul


def measure(config_path: str, backends, shape, seed=0):
    config = load_config(config_path)
    g = config.accelerator.geometry
    rng = np.random.default_rng(seed)
    M, K, N = shape
    a = rng.integers(-128, 128, (M, K)).astype(np.int8)
    b = rng.integers(-128, 128, (K, N)).astype(np.int8)
    program = compile_matmul(g, a, b)
    data = program.to_bytes()
    rows = []
    reference = None
    for name in backends:
        start = time.monotonic()
        backend = sim.make_backend(name, config)
        built = time.monotonic()
        reply, cycles = backend.run(data, program.reply_bytes)
        ran = time.monotonic()
        if reference is None:
            reference = (reply, cycles)
        elif (reply, cycles) != reference:
            raise SystemExit(f"error: {name} disagrees with {backends[0]} on {config_path}")
        rows.append((config.name, name, cycles, built - start, ran - built, cycles / (ran - built)))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.simspeed", description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append",
                        help="config TOML (repeatable; default: configs/tiny.toml, configs/default.toml)")
    parser.add_argument("--backend", action="append", choices=sim.BACKENDS,
                        help="backends to time (default: all installed)")
    parser.add_argument("--shape", default="32,64,32", help="M,K,N of the matmul (default 32,64,32)")
    args = parser.parse_args(argv)
    configs = args.config or ["configs/tiny.toml", "configs/default.toml"]
    backends = args.backend or sim.available_backends()
    try:
        shape = tuple(int(x) for x in args.shape.split(","))
        assert len(shape) == 3
    except (ValueError, AssertionError):
        print(f"error: --shape must be M,K,N, not {args.shape!r}", file=sys.stderr)
        return 2
    print(f"{'config':<12} {'backend':<10} {'cycles':>9} {'build s':>8} {'run s':>8} {'cycles/s':>10}")
    try:
        for path in configs:
            for row in measure(path, backends, shape):
                print(f"{row[0]:<12} {row[1]:<10} {row[2]:>9} {row[3]:>8.1f} {row[4]:>8.2f} "
                      f"{row[5]:>10.0f}", flush=True)
    except (ConfigError, sim.SimToolMissing) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
