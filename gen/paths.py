"""Register-to-register paths of a synthesized ECP5 netlist, before placement.

Place and route of the default design takes about 17 minutes; Yosys takes two
and a half. This walks Yosys's JSON netlist (``board.json`` of a synth stage)
and gives every timing endpoint an estimated arrival time, so that a change
meant to shorten the critical path can be checked, and the next paths seen,
without placing. The estimate is the longest path through the mapped cells:
each cell adds its intrinsic delay (``CELL_DELAYS``, ECP5 speed grade 6) and
each net one routing hop (``net_ns``). What it does not know is placement: a
path across the die routes slower than one inside a tile, so it ranks paths and
counts logic levels; the clock is nextpnr's.

Calibration (``docs/fpga.md``, "Paths before placement"): the routed default's
critical path (``8e5f377``, 19.73 ns in nextpnr) has 11.52 ns of routing over 12
nets, 0.96 ns a net, the default ``net_ns``.

    python -m gen.paths build/default/board.json --top 20
"""

import argparse
import json
import re
import sys
from dataclasses import dataclass

__all__ = ["CELL_DELAYS", "Path", "endpoint_paths", "summary", "main"]

# Intrinsic delays in ns (ECP5, speed 6): inputs -> output for combinational
# cells; for sequential cells, clock -> output (a start) with their inputs as
# endpoints. DP16KD: 5.83 ns clock-to-out without its output register (the routed
# default's critical path), 0.96 ns with it; both are nextpnr's, measured on a
# DP16KD instance driving flip-flops (docs/fpga.md, "Paths before placement").
# LUT4 and TRELLIS_FF are as nextpnr's reports of the default show them; PFUMX,
# L6MUX21, CCU2C, the carry, MULT18X18D and the distributed RAM are estimates (none
# of them is on a path this estimate has been checked against).
CELL_DELAYS = {
    "LUT4": 0.24,
    "PFUMX": 0.20,
    "L6MUX21": 0.20,
    "CCU2C": 0.40,          # A..D -> S/COUT; CIN -> COUT is CARRY_NS
    "TRELLIS_FF": 0.52,     # clock -> Q
    "DP16KD": 5.83,         # clock -> DO, REGMODE NOREG
    "DP16KD_OUTREG": 0.96,  # clock -> DO through the output register (REGMODE OUTREG)
    "MULT18X18D": 1.30,     # clock -> P, REG_OUTPUT clocked
    "TRELLIS_DPR16X4": 0.60,  # RAD -> DO (a distributed RAM's read is combinational)
}
CARRY_NS = 0.06
# (cell, pin, driver) pairs wired inside a slice: PFUMX joins two LUT4s into a LUT5,
# L6MUX21 two PFUMXs into a LUT6.
_IN_SLICE = {("PFUMX", "ALUT", "LUT4"), ("PFUMX", "BLUT", "LUT4"),
             ("L6MUX21", "D0", "PFUMX"), ("L6MUX21", "D1", "PFUMX")}
SEQUENTIAL = ("TRELLIS_FF", "DP16KD", "MULT18X18D")
COMBINATIONAL = ("LUT4", "PFUMX", "L6MUX21", "CCU2C", "TRELLIS_DPR16X4")


@dataclass(frozen=True)
class Path:
    """The latest arrival at one endpoint: ``ns``, ``levels`` of logic, and the
    cells from the start point to the endpoint."""
    ns: float
    levels: int
    endpoint: str
    cells: tuple

    @property
    def start(self):
        return self.cells[0] if self.cells else "?"


def _base(cell_type):
    """``$paramod$...\\TRELLIS_FF`` -> ``TRELLIS_FF``."""
    return cell_type.rsplit("\\", 1)[-1]


def _top(netlist):
    for name, module in netlist["modules"].items():
        if module.get("attributes", {}).get("top"):
            return module
    raise ValueError("no top module in the netlist (is it Yosys's JSON after synth_ecp5?)")


def endpoint_paths(netlist, *, net_ns=0.96):
    """Every endpoint's latest-arriving path, latest first.

    Endpoints are the data inputs of flip-flops, block RAMs and multipliers
    (clock pins excluded); start points are their outputs and the top's input
    ports. A combinational loop raises ``ValueError``.
    """
    top = _top(netlist)
    driver = {}                 # bit -> (cell name, delay to that bit, kind; None: a start)
    sinks = []                  # (cell name, pin, bits) of endpoints
    comb = {}                   # cell name -> (connections, port directions)
    for name, cell in top["cells"].items():
        kind = _base(cell["type"])
        if kind.startswith("$"):
            continue
        dirs = cell.get("port_directions", {})
        conns = cell.get("connections", {})
        if kind in SEQUENTIAL:
            params = cell.get("parameters", {})
            for pin, bits in conns.items():
                if dirs.get(pin) == "output":
                    delay = CELL_DELAYS[kind]
                    # A block RAM port's own output register (DOA*: REGMODE_A, DOB*: _B).
                    if kind == "DP16KD" and params.get(f"REGMODE_{pin[2:3]}") == "OUTREG":
                        delay = CELL_DELAYS["DP16KD_OUTREG"]
                    for b in bits:
                        if isinstance(b, int):
                            driver[b] = (name, delay, None)
                elif not pin.startswith("CLK"):
                    sinks.append((name, pin, bits))
        elif kind not in COMBINATIONAL:
            # PLL, I/O buffers: their outputs start paths (the PLL's clock is the clock).
            for pin, bits in conns.items():
                if dirs.get(pin) == "output":
                    for b in bits:
                        if isinstance(b, int):
                            driver[b] = (name, 0.0, None)
        else:
            for pin, bits in conns.items():
                if dirs.get(pin) == "output":
                    for b in bits:
                        if isinstance(b, int):
                            driver[b] = (name, CELL_DELAYS[kind], kind)
            comb[name] = (conns, dirs)
    for port, info in top.get("ports", {}).items():
        if info["direction"] == "input":
            for b in info["bits"]:
                if isinstance(b, int):
                    driver[b] = (f"<{port}>", 0.0, None)

    for port, info in top.get("ports", {}).items():
        if info["direction"] == "output":
            sinks.append((f"<{port}>", "", info["bits"]))

    memo = {}
    visiting = set()

    def arrival(bit):
        """(ns, levels, cells) of the latest path ending at the net ``bit``."""
        if not isinstance(bit, int) or bit not in driver:
            return (0.0, 0, ())
        if bit in memo:
            return memo[bit]
        name, delay, kind = driver[bit]
        if kind is None:                    # a start point
            result = (delay, 0, (name,))
        else:
            if bit in visiting:
                raise ValueError(f"combinational loop through {name}")
            visiting.add(bit)
            conns, dirs = comb[name]
            result = None
            for pin, bits in conns.items():
                if dirs.get(pin) != "input":
                    continue
                for b in bits:
                    ns, lv, cells = arrival(b)
                    src = driver[b][2] if b in driver else None
                    if kind == "CCU2C" and pin == "CIN" and src == "CCU2C":
                        # Down the carry chain: one placed column, no routing hop,
                        # CARRY_NS a cell, and no new level of logic.
                        cand = (ns + CARRY_NS, lv, cells + (name,))
                    elif (kind, pin, src) in _IN_SLICE:
                        # A wide-function mux inside the slice: its LUT inputs do not
                        # leave the slice, so no routing hop and no new level.
                        cand = (ns + delay, lv, cells + (name,))
                    else:
                        cand = (ns + net_ns + delay, lv + 1, cells + (name,))
                    if result is None or cand[0] > result[0]:
                        result = cand
            if result is None:
                result = (delay, 1, (name,))
            visiting.discard(bit)
        memo[bit] = result
        return result

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 100000))
    paths = []
    for name, pin, bits in sinks:
        for b in bits:
            ns, levels, cells = arrival(b)
            if cells:
                paths.append(Path(round(ns + net_ns, 3), levels,
                                  f"{name}.{pin}" if pin else name, cells))
    paths.sort(key=lambda p: -p.ns)
    return paths


def summary(paths, *, bins=(20, 15, 13.33, 10, 6.67)):
    """A build record's numbers (``record.json``'s ``pre_place``): the worst path and
    how many endpoint bits arrive later than each period in ``bins`` (ns: 50, 66.7,
    75, 100 and 150 MHz), or ``None`` when there are no paths."""
    if not paths:
        return None
    worst = paths[0]
    return {"worst_ns": worst.ns, "mhz": round(1000 / worst.ns, 2), "levels": worst.levels,
            "start": _group(worst.start), "endpoint": _group(worst.endpoint.rsplit(".", 1)[0]),
            "endpoints": len(paths),
            "later_than_ns": {f"{b:g}": sum(p.ns > b for p in paths) for b in bins}}


def _group(name):
    """A register's name without its bit and mapping suffixes, to group paths."""
    name = re.sub(r"_TRELLIS_FF_Q.*$", "", name)
    name = re.sub(r"\.\d+(\.\d+)*$", "", name)
    return re.sub(r"\[\d+\]$", "", name)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m gen.paths", description=__doc__.split("\n\n")[0])
    ap.add_argument("netlist", help="Yosys JSON netlist (board.json of a synth stage)")
    ap.add_argument("--top", type=int, default=15, help="endpoint groups to list (default 15)")
    ap.add_argument("--net-ns", type=float, default=0.96, help="routing per net, ns (default 0.96)")
    args = ap.parse_args(argv)
    try:
        with open(args.netlist) as f:
            netlist = json.load(f)
        paths = endpoint_paths(netlist, net_ns=args.net_ns)
    except (OSError, ValueError) as e:
        print(f"error: {args.netlist}: {e}", file=sys.stderr)
        return 1
    if not paths:
        print("no register-to-register paths")
        return 0
    seen = {}
    for p in paths:
        key = (_group(p.start), _group(p.endpoint.rsplit(".", 1)[0]))
        seen.setdefault(key, p)
    print(f"{len(paths)} endpoint bits; worst {paths[0].ns:.2f} ns ({1000 / paths[0].ns:.1f} MHz "
          f"before placement, {args.net_ns} ns a net)")
    print(f"{'ns':>6} {'MHz':>6} {'lvl':>3}  start -> endpoint")
    for (start, end), p in list(seen.items())[:args.top]:
        print(f"{p.ns:6.2f} {1000 / p.ns:6.1f} {p.levels:3d}  {start} -> {end}")
    later = summary(paths)["later_than_ns"]
    print("endpoint bits later than: " + ", ".join(
        f"{ns} ns ({1000 / float(ns):.0f} MHz): {n}" for ns, n in later.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
