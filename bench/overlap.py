"""What overlapping the vector unit with the matmul engine would buy: a bound, per position.

    python -m bench.overlap [--config configs/default.toml]
        [--model firmware/data/shakespeare_l2d64.npz] [--pos 48]

Today the controller runs one instruction stream in order: a VEC (and every
other word but MATMUL, SETP, BRANCH and EMIT) waits until the matmul engine is
idle, and no word dispatches while the vector unit is busy, though the front end
fetches the next one meanwhile (``docs/rtl.md``, "Controller v1"). This benchmark takes the shipped model's
program (``firmware/compile_model.py``) and times one position two ways:

* **serial**: ``firmware.cycles.straight_line_cycles``, the cycle model that
  equals the RTL;
* **decoupled**: an idealised machine with the same units and latencies, whose
  front end issues a word every ``PROGRAM_FETCH_CYCLES + 1`` cycles into
  unbounded in-order queues, one per unit (matmul engine; vector unit, SETP
  travelling in its queue; serializer for EMIT). A word starts once its unit
  is free and every earlier word it conflicts with has finished: a range
  scoreboard over ``rtl.isa.footprint``'s rows (read after write, write after
  read, write after write; a word writes its destination range and reads the
  rest). The engine keeps its own tile timing (``firmware.cycles._Timeline``),
  and a MATMUL has finished when its last tile's results are written.

The decoupled figure is an upper bound on what queues and a scoreboard can
gain: it assumes the vector unit has memory ports of its own (today it takes
the engine's scratchpad and accumulator ports while busy, ``rtl/controller.py``)
and queues that never fill. It is a model of a machine that does not exist,
printed to size the work, not a result.
"""

import argparse
from dataclasses import replace

from firmware import cycles
from firmware.compile_model import compile_model
from firmware.generate import DEFAULT_MODEL
from firmware.model import QuantizedModel
from gen.config import load_config
from rtl.isa import Opcode, VecOp, footprint, vector_op_cycles, PROGRAM_FETCH_CYCLES

__all__ = ["reads_writes", "decoupled_cycles", "vector_busy", "main"]


def reads_writes(ins, g, pos: int) -> tuple[list, list]:
    """(ranges read, ranges written) of a word, each ``(memory, first, rows)``. A word
    writes its last footprint range (VEC ADD: its first, acc[addr0] += ...) and reads all
    of them: a read-modify-write destination counts as read too."""
    ranges = footprint(ins, g, pos)
    if not ranges or ins.opcode not in (Opcode.MATMUL, Opcode.VEC):
        return ranges, []
    written = ranges[0] if ins.opcode == Opcode.VEC and ins.tag == VecOp.ADD else ranges[-1]
    return ranges, [written]


def _meet(a, b) -> bool:
    return any(m1 == m2 and f1 < f2 + n2 and f2 < f1 + n1
               for m1, f1, n1 in a for m2, f2, n2 in b)


def decoupled_cycles(words, g, pos: int = 0, *, fetch_only: bool = False) -> int:
    """Cycles of ``words`` (one position, straight line) on the idealised decoupled machine
    of the module docstring, from the first word's dispatch (cycle 0) to the last finish.
    ``fetch_only``: a VEC still waits for every earlier word and every later word for it,
    so only the fetch runs ahead (the part a prefetching front end alone would gain)."""
    return _decoupled(words, g, pos, fetch_only)[0]


def _vec_cycles(ins, g, pos: int) -> int:
    """Cycles a VEC holds the vector unit: its start cycle and its latency."""
    return cycles.VEC_DISPATCH_CYCLES + vector_op_cycles(ins, g, pos)


def vector_busy(words, g, pos: int = 0) -> int:
    """Cycles the vector unit is busy (dispatch and latency of every VEC): no overlap with
    the engine can take a position below this."""
    return sum(_vec_cycles(w, g, pos) for w in words if w.opcode == Opcode.VEC)


def _decoupled(words, g, pos, fetch_only=False):
    engine = cycles._Timeline(g)
    vu_free = ser_free = 0
    done = []                       # (reads, writes, finish, is a VEC) of every word so far
    end = 0
    issue = 0
    for ins in words:
        r, w = reads_writes(ins, g, pos)
        op = ins.opcode
        ordered = fetch_only and op == Opcode.VEC
        ready = max([f for r0, w0, f, vec in done
                     if ordered or fetch_only and vec or _meet(w0, r) or _meet(r0, w)] + [issue])
        if op == Opcode.MATMUL:
            engine._matmul(ins, ready)
            finish = max(engine.idle, engine.slot_empty)
        elif op in (Opcode.VEC, Opcode.SETP):
            start = max(ready, vu_free)
            finish = start + (_vec_cycles(ins, g, pos) if op == Opcode.VEC else 1)
            vu_free = finish
        elif op == Opcode.EMIT:
            start = max(ready, ser_free)
            ser_free = start + 3
            finish = start + 3
        elif op == Opcode.HALT:
            finish = max([ready, vu_free, ser_free, engine.idle, engine.slot_empty]) + 1
        else:                       # BRANCH, NOP
            finish = ready + 1
        done.append((r, w, finish, op == Opcode.VEC))
        end = max(end, finish)
        issue += PROGRAM_FETCH_CYCLES + 1
    return max(end, issue), engine.beats


def position_words(image, last: bool = True) -> list:
    return [image.words[i] for i in image.trace(last)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overlap", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default.toml")
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--pos", type=int, default=48, help="POS of the decoded token (default 48)")
    parser.add_argument("--lanes", type=int, nargs="*", default=[],
                        help="also time the config with these vector_lanes (e.g. 1 2 4 8)")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    qmodel = QuantizedModel.load(args.model)
    base = config.accelerator.geometry
    print(f"{qmodel.desc.short()} on {config.name} ({base.rows}x{base.cols} "
          f"{base.dataflow.upper()}), POS {args.pos}\n")
    print("| vector_lanes | position | serial (the RTL's cycles) | fetch ahead only | "
          "decoupled bound | saved | vector unit busy | matmul beats | words x 5 (fetch) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for lanes in [base.vector_lanes] + [n for n in args.lanes if n != base.vector_lanes]:
        g = replace(base, vector_lanes=lanes)
        image = compile_model(qmodel, g)
        for name, last in (("decoded token", True), ("prompt token", False)):
            words = position_words(image, last)
            serial = cycles.straight_line_cycles(words, g, pos=args.pos)
            bound, beats = _decoupled(words, g, args.pos)
            fetch = decoupled_cycles(words, g, args.pos, fetch_only=True)
            print(f"| {lanes} | {name} | {serial} | {fetch} | {bound} | {1 - bound / serial:.1%} | "
                  f"{vector_busy(words, g, args.pos)} | {beats} | "
                  f"{len(words) * (PROGRAM_FETCH_CYCLES + 1)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
