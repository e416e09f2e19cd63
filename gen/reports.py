"""Synthesis and place-and-route reports: nextpnr's JSON report and log to ``resources.json``.

``resources.json`` (written after the ``pnr`` stage)::

    {
      "device": "iCE40UP5K-SG48", "family": "ice40", "board": "icebreaker",
      "resources": {"lcs": {"used": 767, "available": 5280, "bel": "ICESTORM_LC"},
                    "luts": ..., "ffs": ..., "dsps": ..., "brams": ..., "sprams": ..., "ios": ...},
      "bels": {nextpnr's utilization, every BEL type},
      "clocks": {"<net>": {"fmax_mhz": 27.0, "constraint_mhz": 12.0, "met": true}},
      "fmax_mhz": 27.0, "constraint_mhz": 12.0, "timing_met": true,
      "critical_path": {"from": "cell.port", "to": "cell.port", "delay_ns": 36.1, "clock": "..."}
    }

``used``/``available`` come from nextpnr; for iCE40, whose logic cells pair a
LUT and a FF, ``luts`` and ``ffs`` count the synthesized SB_LUT4 and SB_DFF*
cells (available: one of each per LC).
"""

import json
import pathlib
import re

__all__ = ["DoesNotFit", "RESOURCE_BELS", "resources_from_pnr", "does_not_fit", "stat_cells",
           "timing_summary", "multipliers_from_dump", "synth_resources", "overflow",
           "overflow_line"]


class DoesNotFit(RuntimeError):
    """The design needs more of a resource than the device has; the message is one line."""


# resource -> (nextpnr BEL type per family, what a person calls it)
RESOURCE_BELS = {
    "ice40": {"lcs": ("ICESTORM_LC", "logic cells"), "dsps": ("ICESTORM_DSP", "DSPs (SB_MAC16)"),
              "brams": ("ICESTORM_RAM", "BRAMs (SB_RAM40_4K)"),
              "sprams": ("ICESTORM_SPRAM", "SPRAMs"), "ios": ("SB_IO", "IOs"),
              "plls": ("ICESTORM_PLL", "PLLs"), "globals": ("SB_GB", "global buffers")},
    "ecp5": {"luts": ("TRELLIS_COMB", "LUT4s"), "ffs": ("TRELLIS_FF", "FFs"),
             "dsps": ("MULT18X18D", "DSP multipliers (MULT18X18D)"),
             "brams": ("DP16KD", "BRAMs (DP16KD)"), "ios": ("TRELLIS_IO", "IOs"),
             "plls": ("EHXPLLL", "PLLs")},
}

_BEL_NAMES = {bel: name for family in RESOURCE_BELS.values() for bel, name in family.values()}

_UTIL_LINE = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", re.MULTILINE)
_NO_BELS = re.compile(r"no BELs remaining to implement cell type '(\w+)'")


def stat_cells(stat_json: pathlib.Path) -> dict:
    """Cell type -> count of the whole design, from Yosys's ``stat -json`` (a few KiB,
    where the netlist of a large design is tens of MB)."""
    stat = json.loads(pathlib.Path(stat_json).read_text())
    return dict(stat["design"]["num_cells_by_type"])


# resource -> (BEL type in Board/Device limits, {netlist cell type: BELs it takes at least}).
# A lower bound of what nextpnr will use: an iCE40 logic cell holds one LUT4, one FF and
# one carry, so it needs at least as many as the largest of the three; an ECP5 CCU2C
# carry takes two LUT4 sites.
_SYNTH_CELLS = {
    "ice40": {"luts": ("ICESTORM_LC", {"SB_LUT4": 1}),
              "ffs": ("ICESTORM_LC", {"SB_DFF*": 1}),
              "carries": ("ICESTORM_LC", {"SB_CARRY": 1}),
              "dsps": ("ICESTORM_DSP", {"SB_MAC16": 1}),
              "brams": ("ICESTORM_RAM", {"SB_RAM40_4K*": 1}),
              "sprams": ("ICESTORM_SPRAM", {"SB_SPRAM256KA": 1})},
    "ecp5": {"luts": ("TRELLIS_COMB", {"LUT4": 1, "CCU2C": 2, "TRELLIS_DPR16X4": 1}),
             "ffs": ("TRELLIS_FF", {"TRELLIS_FF": 1}),
             "dsps": ("MULT18X18D", {"MULT18X18D": 1}),
             "brams": ("DP16KD", {"DP16KD": 1, "PDPW16KD": 1})},
}


def _count(cells: dict, pattern: str) -> int:
    if pattern.endswith("*"):
        return sum(n for t, n in cells.items() if t.startswith(pattern[:-1]))
    return cells.get(pattern, 0)


def synth_resources(cells: dict, family: str, limits: dict) -> dict:
    """What the synthesized netlist needs at least, per resource, against the device:
    ``{"luts": {"used": 2094, "available": 5280, "bel": "ICESTORM_LC"}, ...}``; on iCE40
    also ``lcs``, the largest of LUTs, FFs and carries (each logic cell holds one of each)."""
    out = {}
    for name, (bel, weights) in _SYNTH_CELLS[family].items():
        used = sum(weight * _count(cells, cell) for cell, weight in weights.items())
        out[name] = {"used": used, "available": limits.get(bel, 0), "bel": bel}
    if family == "ice40":
        out["lcs"] = {"used": max(out[n]["used"] for n in ("luts", "ffs", "carries")),
                      "available": limits.get("ICESTORM_LC", 0), "bel": "ICESTORM_LC"}
    return out


# What an overflow is judged on: on iCE40 the logic cells (the bound above), not the LUT4s,
# FFs and carries that go into them.
_JUDGED = {"ice40": ("lcs", "dsps", "brams", "sprams"), "ecp5": ("luts", "ffs", "dsps", "brams")}


def overflow(resources: dict, skip=()) -> dict:
    """``{resource: {"used", "available", "over"}}`` of those over the device's count."""
    judged = _JUDGED["ice40" if "lcs" in resources else "ecp5"]
    return {name: {"used": r["used"], "available": r["available"],
                   "over": r["used"] - r["available"]}
            for name, r in resources.items()
            if name in judged and name not in skip and r["used"] > r["available"]}


_RESOURCE_WORDS = {"lcs": "logic cells", "luts": "LUT4s", "ffs": "FFs", "carries": "carries",
                   "dsps": "DSPs", "brams": "block RAMs", "sprams": "SPRAMs"}


def overflow_line(part: str, over: dict, resources: dict, when: str) -> str:
    """One line naming each resource over the device's count and by how much."""
    parts = []
    for name, v in over.items():
        detail = resources[name]["bel"]
        if name == "lcs":
            detail += "; " + ", ".join(f"{resources[n]['used']} {_RESOURCE_WORDS[n]}"
                                       for n in ("luts", "ffs", "carries"))
        parts.append(f"at least {v['used']} {_RESOURCE_WORDS.get(name, name)} ({detail}) "
                     f"but the device has {v['available']} ({v['over']:+d})")
    return f"design does not fit {part} ({when}): it needs " + "; ".join(parts)


def multipliers_from_dump(text: str) -> list[tuple[str, int, int]]:
    """(cell name, A width, B width) of each ``$mul`` in Yosys ``dump`` output whose operands
    are both signals and at least 2 bits wide: a product with a constant becomes shifts and
    adds, and a 1-bit one an AND, never a DSP, so moving them to LUTs would free none."""
    out = []
    for name, body in re.findall(r"cell \$mul (\S+)\n((?:[ \t]+(?:parameter|connect) .*\n)+)",
                                 text):
        if re.search(r"connect \\[AB] \d+'[01xz]+\s*$", body, re.M):
            continue
        widths = dict(re.findall(r"parameter \\(\w+_WIDTH) (\d+)", body))
        a, b = int(widths["A_WIDTH"]), int(widths["B_WIDTH"])
        if min(a, b) >= 2:  # Yosys' mul2dsp leaves narrower products in logic
            out.append((name, a, b))
    return out


def does_not_fit(log_text: str, device: str) -> str | None:
    """The one line that says which resource overflowed, or None if the log shows no overflow."""
    over = [(bel, int(used), int(avail)) for bel, used, avail in _UTIL_LINE.findall(log_text)
            if int(used) > int(avail)]
    if over:
        parts = [f"{used} {_BEL_NAMES.get(bel, bel)}"
                 f"{'' if bel in _BEL_NAMES.get(bel, bel) else f' ({bel})'} "
                 f"but the device has {avail}"
                 for bel, used, avail in dict.fromkeys(over)]
        return f"design does not fit {device}: it needs " + "; ".join(parts)
    match = _NO_BELS.search(log_text)
    if match:
        bel = match.group(1)
        return (f"design does not fit {device}: no {_BEL_NAMES.get(bel, bel)} left for cell "
                f"type {bel} (see the utilisation in the nextpnr log)")
    return None


def _path_end(point: dict) -> str:
    return f"{point.get('cell', '?')}.{point.get('port', '?')}"


def _critical_path(report: dict, clock: str | None) -> dict | None:
    paths = [p for p in report.get("critical_paths") or []
             if not _pseudo_clock(p.get("from", "") + p.get("to", ""))]
    if not paths:
        return None
    chosen = next((p for p in paths if clock and clock in p.get("from", "")
                   and clock in p.get("to", "")), paths[0])
    steps = chosen.get("path") or []
    if not steps:
        return None
    return {
        "from": _path_end(steps[0]["from"]),
        "to": _path_end(steps[-1]["to"]),
        "delay_ns": round(sum(step.get("delay", 0.0) for step in steps), 3),
        "clock": chosen.get("from"),
        "logic_ns": round(sum(s.get("delay", 0.0) for s in steps if s.get("type") != "routing"), 3),
        "routing_ns": round(sum(s.get("delay", 0.0) for s in steps if s.get("type") == "routing"), 3),
    }


def _pseudo_clock(name: str) -> bool:
    # nextpnr also times cross-domain "<async>" paths and its packer's constant nets
    # ("$PACKER_GND_NET"), which are no clocks of the design.
    return "<async>" in name or "$PACKER" in name


def _real_clock(net: str, value: dict) -> bool:
    return (not _pseudo_clock(net) and bool(value.get("constraint"))
            and value.get("achieved") is not None)


def timing_summary(report: dict) -> dict:
    """``{clock net: {fmax_mhz, constraint_mhz, met}}`` of the constrained clocks."""
    clocks = {}
    for net, value in (report.get("fmax") or {}).items():
        if not _real_clock(net, value):
            continue
        achieved, constraint = value.get("achieved"), value.get("constraint")
        clocks[net] = {"fmax_mhz": round(achieved, 2), "constraint_mhz": round(constraint, 2),
                       "met": achieved >= constraint - 1e-3}
    return clocks


def resources_from_pnr(report_json: pathlib.Path, *, family: str, device: str, board: str | None,
                       cells: dict | None = None) -> dict:
    """Build the ``resources.json`` dictionary from nextpnr's ``--report`` output and (for
    iCE40's LUT4s and FFs) the synthesized ``cells`` (:func:`stat_cells`)."""
    report = json.loads(pathlib.Path(report_json).read_text())
    bels = report.get("utilization", {})
    resources = {}
    for name, (bel, _) in RESOURCE_BELS[family].items():
        if bel in bels:
            resources[name] = {"used": bels[bel]["used"], "available": bels[bel]["available"],
                               "bel": bel}
    if family == "ice40" and "lcs" in resources:
        cells = cells or {}
        lcs = resources["lcs"]["available"]
        resources["luts"] = {"used": cells.get("SB_LUT4", 0), "available": lcs, "bel": "SB_LUT4"}
        resources["ffs"] = {"used": sum(n for t, n in cells.items() if t.startswith("SB_DFF")),
                            "available": lcs, "bel": "SB_DFF*"}
    clocks = timing_summary(report)
    worst = min(clocks.items(), key=lambda kv: kv[1]["fmax_mhz"] / kv[1]["constraint_mhz"],
                default=(None, None))
    return {
        "device": device, "family": family, "board": board,
        "resources": resources,
        "bels": bels,
        "clocks": clocks,
        "fmax_mhz": worst[1]["fmax_mhz"] if worst[1] else None,
        "constraint_mhz": worst[1]["constraint_mhz"] if worst[1] else None,
        "timing_met": all(c["met"] for c in clocks.values()),
        "critical_path": _critical_path(report, worst[0]),
    }
