"""Board registry, PLL planning and the board top's elaboration for every board."""

import pytest
from amaranth.back import rtlil

from boards import BOARDS, get_board, UnknownBoard
from boards.top import (BoardTop, BoardError, VerilogCore, ecp5_pll, ice40_pll, link_divisor)
from gen.config import load_config


def test_registry_has_the_three_boards():
    assert {"icebreaker", "ulx3s-85f", "orangecrab-25f"} <= set(BOARDS)
    for board in BOARDS.values():
        assert board.family in ("ice40", "ecp5") and board.device and board.clock_mhz > 0
        platform = board.make_platform()
        assert platform.default_clk_frequency == pytest.approx(board.clock_mhz * 1e6)
        uart = platform.request(*board.uart, dir="-")     # the host-link pins exist
        assert hasattr(uart, "rx") and hasattr(uart, "tx")


def test_unknown_board_lists_known_ones():
    with pytest.raises(UnknownBoard, match="'arty' is not known; known boards: icebreaker"):
        get_board("arty")


@pytest.mark.parametrize("input_mhz, output_mhz", [(12, 48), (12, 24), (12, 30), (12, 16.5)])
def test_ice40_pll_within_limits(input_mhz, output_mhz):
    plan = ice40_pll(input_mhz, output_mhz)
    p = plan.params
    pfd = input_mhz / (p["DIVR"] + 1)
    vco = pfd * (p["DIVF"] + 1)
    assert 10 <= pfd <= 133 and 533 <= vco <= 1066 and 1 <= p["DIVQ"] <= 6
    assert plan.output_mhz == pytest.approx(vco / 2 ** p["DIVQ"])
    assert plan.output_mhz == pytest.approx(output_mhz, rel=0.01)


def test_ice40_pll_known_answer():
    # icepll -i 12 -o 48: DIVR=0 DIVF=63 DIVQ=4 FILTER_RANGE=1
    assert ice40_pll(12, 48).params == dict(DIVR=0, DIVF=63, DIVQ=4, FILTER_RANGE=1)


@pytest.mark.parametrize("input_mhz, output_mhz", [(25, 50), (25, 100), (48, 72), (25, 125)])
def test_ecp5_pll_within_limits(input_mhz, output_mhz):
    plan = ecp5_pll(input_mhz, output_mhz)
    p = plan.params
    out = input_mhz / p["CLKI_DIV"] * p["CLKFB_DIV"]
    assert 400 <= out * p["CLKOP_DIV"] <= 800
    assert plan.output_mhz == pytest.approx(out) == pytest.approx(output_mhz)


def test_pll_range_errors_are_one_line():
    with pytest.raises(BoardError, match="the iCE40 PLL makes 16 to 275 MHz, not 8 MHz"):
        ice40_pll(12, 8)
    with pytest.raises(BoardError, match="the ECP5 PLL makes 3.125 to 400 MHz, not 500 MHz"):
        ecp5_pll(25, 500)


def test_link_divisor():
    assert link_divisor(12, 1_000_000) == 12
    assert link_divisor(48, 115200) == 417
    with pytest.raises(BoardError, match="cannot make 1000000 baud"):
        link_divisor(16.5, 1_000_000)


@pytest.mark.parametrize("config", ["configs/tiny.toml", "configs/default.toml",
                                    "configs/orangecrab-25f.toml",
                                    "configs/ulx3s-85f-100mhz.toml"])
def test_board_top_elaborates_for_each_board_config(config):
    """Every board config's top (PLL, reset, UART pins, LEDs, the Verilog core) elaborates."""
    cfg = load_config(config)
    board = get_board(cfg.target.board)
    top = BoardTop(board, VerilogCore(busy=True), clock_mhz=cfg.target.clock_mhz)
    platform = board.make_platform()
    plan = platform.prepare(top, name="board")
    text = plan.files["board.il"]
    assert "cell \\top " in text or "\\top" in text     # the accelerator black box
    if cfg.target.clock_mhz != board.clock_mhz:
        assert ("SB_PLL40_PAD" if board.family == "ice40" else "EHXPLLL") in text
