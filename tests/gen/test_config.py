"""Config schema: good configs load; every mistake is one line naming key, value and what is allowed."""

import pathlib
import subprocess
import sys

import pytest

from gen.config import ConfigError, load_config, parse_config

REPO = pathlib.Path(__file__).resolve().parents[2]
GOOD = {"accelerator": {"rows": 4, "cols": 8, "dataflow": "os"}, "target": {"board": "ulx3s-85f"}}


def test_every_shipped_config_loads():
    configs = sorted((REPO / "configs").glob("*.toml"))
    assert configs
    for path in configs:
        text = path.read_text()
        if "[accelerator]" not in text:
            continue            # model and search configs have their own schema
        config = load_config(path)
        assert config.name == path.stem
        assert len(config.hash) == 16


def test_defaults_and_hash():
    config = parse_config(GOOD)
    a = config.accelerator
    assert (a.rows, a.cols, a.dataflow, a.input_width, a.acc_width) == (4, 8, "os", 8, 32)
    assert config.hash == parse_config(GOOD, name="other").hash
    changed = {**GOOD, "accelerator": {**GOOD["accelerator"], "cols": 4}}
    assert parse_config(changed).hash != config.hash


@pytest.mark.parametrize("document,message", [
    ({"accelerator": {"rows": 0}, "target": {"board": "icebreaker"}}, "rows must be an integer from 1 to 64, not 0"),
    ({"accelerator": {"rows": 65}, "target": {"board": "icebreaker"}}, "rows must be an integer from 1 to 64, not 65"),
    ({"accelerator": {"rows": "8"}, "target": {"board": "icebreaker"}}, "rows = '8' has the wrong type; it must be int"),
    ({"accelerator": {"dataflow": "rs"}, "target": {"board": "icebreaker"}}, "dataflow must be 'ws' or 'os', not 'rs'"),
    ({"accelerator": {"input_width": 6}, "target": {"board": "icebreaker"}}, "input_width must be 4, 8 or 16, not 6"),
    ({"accelerator": {"acc_width": 12}, "target": {"board": "icebreaker"}}, "acc_width must be a multiple of 8 from 16 to 64, not 12"),
    ({"accelerator": {"banks": 3}, "target": {"board": "icebreaker"}}, "banks must be 1, 2, 4 or 8, not 3"),
    ({"accelerator": {"scratchpad_banks": 16}, "target": {"board": "icebreaker"}}, "scratchpad_banks must be 1, 2, 4 or 8, not 16"),
    ({"accelerator": {"scratchpad_banks": "8"}, "target": {"board": "icebreaker"}}, "scratchpad_banks = '8' has the wrong type"),
    ({"accelerator": {"scratchpad_kib": 0.01}, "target": {"board": "icebreaker"}}, "scratchpad_kib=0.01 holds only"),
    ({"accelerator": {"rowz": 4}, "target": {"board": "icebreaker"}}, "[accelerator] has no key 'rowz'; allowed keys: rows, cols"),
    ({"accelerator": {}, "target": {"board": "de10"}}, "board = 'de10' is not known; known boards: icebreaker"),
    ({"accelerator": {}, "target": {}}, "[target] needs board"),
    ({"accelerator": {}, "target": {"board": "icebreaker", "clock_mhz": 0}}, "clock_mhz must be from 1 to 500, not 0"),
    ({"accelerator": {}, "target": {"board": "icebreaker"}, "acclerator": {}}, "unknown table [acclerator]"),
    ({"accelerator": {}, "target": {"board": "icebreaker"}, "build": {"placer": "heat"}}, "[build] placer must be one of heap, static, sa, not 'heat'"),
    ({"accelerator": {}, "target": {"board": "icebreaker"}, "build": {"router": "router3"}}, "[build] router must be one of router1, router2, not 'router3'"),
])
def test_bad_values_are_one_line_errors(document, message):
    with pytest.raises(ConfigError) as info:
        parse_config(document)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_build_exits_2_with_one_line_on_a_bad_config(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[accelerator]\nrows = 8\ncols = 8\ndataflow = "xs"\n[target]\nboard = "icebreaker"\n')
    result = subprocess.run([sys.executable, "-m", "gen.build", "--config", str(bad), "--out",
                             str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "dataflow must be 'ws' or 'os', not 'xs'" in lines[0]
    assert not (tmp_path / "out").exists()


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[accelerator\nrows = 8\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)
