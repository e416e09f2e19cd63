"""gen.paths: arrival times on small hand-made netlists, each worked out by hand."""

import json

import pytest

from gen.paths import CELL_DELAYS, CARRY_NS, endpoint_paths, main

NET = 0.96


def netlist(cells, ports=None):
    return {"modules": {"top": {"attributes": {"top": 1}, "ports": ports or {}, "cells": cells}}}


def ff(d, q):
    return {"type": "TRELLIS_FF", "port_directions": {"CLK": "input", "DI": "input", "Q": "output"},
            "connections": {"CLK": [1], "DI": [d], "Q": [q]}}


def lut(a, z, b="0"):
    return {"type": "LUT4", "port_directions": {"A": "input", "B": "input", "Z": "output"},
            "connections": {"A": [a], "B": [b], "Z": [z]}}


def ccu(a, cin, s, cout):
    return {"type": "CCU2C",
            "port_directions": {"A0": "input", "CIN": "input", "S0": "output", "COUT": "output"},
            "connections": {"A0": [a], "CIN": [cin], "S0": [s], "COUT": [cout]}}


def test_two_luts_between_flip_flops():
    cells = {"q": ff(12, 10), "l1": lut(10, 11), "l2": lut(11, 12, b=10), "r": ff(12, 13)}
    paths = endpoint_paths(netlist(cells), net_ns=NET)
    worst = paths[0]
    # clock-to-Q, two LUTs each behind a net, one net into the endpoint
    assert worst.ns == pytest.approx(CELL_DELAYS["TRELLIS_FF"] + 2 * (NET + CELL_DELAYS["LUT4"]) + NET)
    assert worst.levels == 2
    assert worst.cells == ("q", "l1", "l2")
    assert worst.endpoint in ("q.DI", "r.DI")


def test_block_ram_start_and_carry_chain():
    ram = {"type": "DP16KD", "parameters": {"REGMODE_A": "NOREG", "REGMODE_B": "NOREG"},
           "port_directions": {"CLKA": "input", "DOA0": "output"},
           "connections": {"CLKA": [1], "DOA0": [20]}}
    cells = {"ram": ram, "c0": ccu(20, "0", 21, 22), "c1": ccu("0", 22, 23, 24), "r": ff(23, 25)}
    worst = endpoint_paths(netlist(cells), net_ns=NET)[0]
    # RAM clock-to-out, a net and the first cell, then down the chain with no net and no level
    assert worst.ns == pytest.approx(CELL_DELAYS["DP16KD"] + NET + CELL_DELAYS["CCU2C"] + CARRY_NS + NET)
    assert worst.levels == 1
    assert worst.cells == ("ram", "c0", "c1")


def test_output_register_ram_and_output_port_endpoint():
    ram = {"type": "DP16KD", "parameters": {"REGMODE_A": "OUTREG", "REGMODE_B": "NOREG"},
           "port_directions": {"CLKA": "input", "DOA0": "output", "DOB0": "output"},
           "connections": {"CLKA": [1], "DOA0": [30], "DOB0": [32]}}
    ports = {"out": {"direction": "output", "bits": [31]},
             "out_b": {"direction": "output", "bits": [33]}}
    cells = {"ram": ram, "l": lut(30, 31), "lb": lut(32, 33)}
    paths = {p.endpoint: p for p in endpoint_paths(netlist(cells, ports), net_ns=NET)}
    assert paths["<out>"].ns == pytest.approx(CELL_DELAYS["DP16KD_OUTREG"] + NET
                                              + CELL_DELAYS["LUT4"] + NET)
    # port B has no output register: its read keeps the RAM's own clock-to-out
    assert paths["<out_b>"].ns == pytest.approx(CELL_DELAYS["DP16KD"] + NET + CELL_DELAYS["LUT4"] + NET)


def test_combinational_loop_is_an_error(tmp_path, capsys):
    cells = {"a": lut(41, 40), "b": lut(40, 41), "r": ff(41, 42)}
    with pytest.raises(ValueError, match="combinational loop"):
        endpoint_paths(netlist(cells))
    path = tmp_path / "loop.json"
    path.write_text(json.dumps(netlist(cells)))
    assert main([str(path)]) == 1
    assert "combinational loop" in capsys.readouterr().err


def test_cli_lists_the_worst_path(tmp_path, capsys):
    cells = {"q": ff(12, 10), "l1": lut(10, 12), "r": ff(12, 13)}
    path = tmp_path / "n.json"
    path.write_text(json.dumps(netlist(cells)))
    assert main([str(path), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "worst 2.68 ns" in out          # 0.52 + 0.96 + 0.24 + 0.96
    assert "q -> r" in out or "q -> q" in out


def test_summary_counts_endpoints_past_each_period():
    from gen.paths import summary
    cells = {"q": ff(12, 10), "l1": lut(10, 11), "l2": lut(11, 12), "r": ff(12, 13)}
    paths = endpoint_paths(netlist(cells), net_ns=NET)
    s = summary(paths, bins=(3.0, 4.0))
    assert s["worst_ns"] == pytest.approx(3.88)       # 0.52 + 2 * (0.96 + 0.24) + 0.96
    assert s["levels"] == 2 and s["endpoints"] == 2
    # q.DI and r.DI both take l2's output at 3.88 ns
    assert s["later_than_ns"] == {"3": 2, "4": 0}
    assert summary([]) is None
