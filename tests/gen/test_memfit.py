"""The config-time memory check: block RAM counts as synthesis reports them, one-line refusal."""

import subprocess
import sys

import pytest

from gen.config import ConfigError, load_config, parse_config
from gen.memfit import accelerator_memories, block_rams, memory_report


@pytest.mark.parametrize("path, family, blocks", [
    # Block RAMs that synthesis + place and route reported for the board configs
    # (docs/fpga.md, "Each board config"): the model must reproduce them.
    ("configs/tiny.toml", "ice40", 10),
    ("configs/orangecrab-25f.toml", "ecp5", 14),
    ("configs/ulx3s-85f-100mhz.toml", "ecp5", 34),
])
def test_block_rams_match_synthesis(path, family, blocks):
    g = load_config(path).accelerator.geometry
    assert memory_report(g, family, 0)["used"] == blocks


def test_scratchpad_banks_of_the_default():
    """The default's scratchpad at 8 banks (the wide weight path) takes the 96 DP16KD that
    Yosys synth_ecp5 mapped it to (the scratchpad alone: 8 banks of 1536 x 64 bits, two
    read ports), as many as at 2 banks; the accumulator keeps `banks`."""
    g = load_config("configs/default.toml").accelerator.geometry
    assert (g.sp_banks, g.banks) == (8, 2)
    report = memory_report(g, "ecp5", 208)
    assert report["per_memory"]["scratchpad"] == 96
    assert report["per_memory"]["accumulator"] == 16
    assert report["used"] == 130


def test_read_ports_are_copies():
    g = load_config("configs/ulx3s-85f-100mhz.toml").accelerator.geometry
    sp = next(s for s in accelerator_memories(g) if s.name == "scratchpad")
    assert block_rams(sp, "ecp5") == 2 * block_rams(
        type(sp)(sp.name, sp.width, sp.depth, sp.banks, 1), "ecp5")


def _doc(**accelerator):
    return {"accelerator": accelerator, "target": {"board": "icebreaker", "clock_mhz": 12.0}}


def test_too_big_is_one_line():
    with pytest.raises(ConfigError) as e:
        parse_config(_doc(rows=2, cols=2, scratchpad_kib=64, accumulator_kib=1, banks=1))
    message = str(e.value)
    assert "\n" not in message
    assert "block RAMs" in message and "scratchpad" in message and "iCE40UP5K" in message


def test_program_memory_counts():
    fits = parse_config(_doc(rows=2, cols=2, scratchpad_kib=1, accumulator_kib=1, banks=1))
    assert fits.accelerator.geometry.program_words == 0
    with pytest.raises(ConfigError, match="program memory"):
        parse_config(_doc(rows=2, cols=2, scratchpad_kib=1, accumulator_kib=1, banks=1,
                          program_kib=64, tokens=64))


def test_gen_build_refuses_before_any_tool(tmp_path):
    config = tmp_path / "big.toml"
    config.write_text("[accelerator]\nrows = 8\ncols = 8\nscratchpad_kib = 512\n"
                      "accumulator_kib = 16\n[target]\nboard = \"ulx3s-85f\"\n")
    out = subprocess.run([sys.executable, "-m", "gen.build", "--config", str(config),
                          "--out", str(tmp_path / "build"), "--stage", "verilog"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "block RAMs" in lines[0]
    assert not (tmp_path / "build").exists()
