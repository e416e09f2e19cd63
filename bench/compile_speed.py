"""How long the model compiler and its cycle model take for the models of the default space.

    python -m bench.compile_speed [--space configs/supernet_default.toml] [--limit N]

For every model of the space (uniform layers, ``bench/transformer_fit.py``) on
the default config's array with memories sized to hold it, it times
``compile_model`` (memory plan, load stream, program) and ``CycleModel`` (the
cycles of a prefill of half the context and of a decode step at its end), with
deterministic random int8 weights (``tests/firmware/qmodels.py``; the compiler
never looks at their values). It prints the median and the slowest, in CPU
seconds of this process (``time.process_time``: the machine's cores are shared,
so wall time measures the neighbours too).
"""

import argparse
import statistics
import time

from firmware.compile_model import compile_model, CycleModel
from gen.config import load_config
from tests.firmware.qmodels import random_qmodel

from .transformer_fit import space_models, sized_geometry

__all__ = ["time_model", "main"]


def time_model(desc, base):
    """(compile seconds, cycle-model seconds, program words) of one model, or None if no
    memories can hold it."""
    g = sized_geometry(desc, base)
    if g is None:
        return None
    qmodel = random_qmodel(desc)
    t0 = time.process_time()
    image = compile_model(qmodel, g)
    t1 = time.process_time()
    model = CycleModel(image)
    half = desc.context_len // 2
    model.prefill_cycles(half)
    model.decode_cycles(desc.context_len - 1)
    t2 = time.process_time()
    return t1 - t0, t2 - t1, len(image.words)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compile_speed",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="configs/supernet_default.toml")
    parser.add_argument("--config", default="configs/default.toml")
    parser.add_argument("--limit", type=int, default=0, help="time only every Nth model")
    args = parser.parse_args(argv)
    base = load_config(args.config).accelerator.geometry
    models = space_models(args.space)
    if args.limit:
        models = models[::args.limit]
    rows = []
    for desc in models:
        timed = time_model(desc, base)
        if timed is not None:
            rows.append((sum(timed[:2]), timed, desc))
    rows.sort(key=lambda r: r[0])
    totals = [r[0] for r in rows]
    print(f"{len(rows)} models of {args.space} on {base.rows}x{base.cols} "
          f"{base.dataflow.upper()} (memories sized per model)")
    print(f"compile + cycle model: median {statistics.median(totals) * 1e3:.0f} ms, "
          f"slowest {totals[-1] * 1e3:.0f} ms")
    total, (compile_s, cycle_s, words), desc = rows[-1]
    print(f"slowest: {desc.short()}: compile {compile_s * 1e3:.0f} ms, cycle model "
          f"{cycle_s * 1e3:.0f} ms, {words} program words")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
