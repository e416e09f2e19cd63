"""Board and device registry: a board name to its FPGA, amaranth-boards platform, clock and
host-link pins; a device name to its nextpnr options and resources.

``BOARDS`` maps a name to a :class:`Board`, ``DEVICES`` a name (``[target] device``) to a
:class:`Device`. The config schema only needs the names; :mod:`boards.top` builds the
board top (PLL, reset, UART host link, status LEDs) and :mod:`gen.build` the bitstream
from the rest. A device without a board (``[target] device = "hx8k"``) is built with the
accelerator's own ports as the top level, for sweeps over devices no board here carries.
"""

from dataclasses import dataclass
import importlib

__all__ = ["Board", "BOARDS", "Device", "DEVICES", "UnknownBoard", "get_board", "get_device"]


class UnknownBoard(KeyError):
    """A board or device name not in the registry; the message lists the known ones."""

    def __str__(self):
        return self.args[0]


@dataclass(frozen=True)
class Device:
    """One FPGA as nextpnr knows it.

    ``nextpnr_args`` select it (``--up5k --package sg48``); ``limits`` are its
    resources as nextpnr's BEL types count them (logic, FFs, DSPs, block RAMs, SPRAMs),
    which the build checks the synthesized netlist against before place and route.
    """
    name: str
    family: str           # "ice40" or "ecp5"
    part: str             # as nextpnr reports it: "iCE40UP5K-SG48", "LFE5U-85F-CABGA381"
    nextpnr_args: tuple
    limits: dict


_ICE40 = ("ICESTORM_LC", "ICESTORM_DSP", "ICESTORM_RAM", "ICESTORM_SPRAM")
_ECP5 = ("TRELLIS_COMB", "TRELLIS_FF", "MULT18X18D", "DP16KD")

DEVICES = {d.name: d for d in [
    Device("up5k", "ice40", "iCE40UP5K-SG48", ("--up5k", "--package", "sg48"),
           dict(zip(_ICE40, (5280, 8, 30, 4)))),
    Device("hx8k", "ice40", "iCE40HX8K-CT256", ("--hx8k", "--package", "ct256"),
           dict(zip(_ICE40, (7680, 0, 32, 0)))),
    Device("hx1k", "ice40", "iCE40HX1K-TQ144", ("--hx1k", "--package", "tq144"),
           dict(zip(_ICE40, (1280, 0, 16, 0)))),
    Device("25k", "ecp5", "LFE5U-25F-CABGA381", ("--25k", "--package", "CABGA381"),
           dict(zip(_ECP5, (24288, 24288, 28, 56)))),
    Device("45k", "ecp5", "LFE5U-45F-CABGA381", ("--45k", "--package", "CABGA381"),
           dict(zip(_ECP5, (43848, 43848, 72, 108)))),
    Device("85k", "ecp5", "LFE5U-85F-CABGA381", ("--85k", "--package", "CABGA381"),
           dict(zip(_ECP5, (83640, 83640, 156, 208)))),
]}


@dataclass(frozen=True)
class Board:
    """One board.

    ``platform`` is ``"module:Class"`` of its amaranth-boards platform;
    ``uart`` is the resource the host link uses (``extra_resources`` adds it
    where amaranth-boards has none); ``leds`` are the ``(name, number)`` of
    the status LEDs (heartbeat, frame error, accelerator busy; as many as the
    board has). ``loader_board`` is openFPGALoader's name for the board (the
    default programmer; ``--programmer amaranth`` uses the platform's own, as
    amaranth-boards defines it).
    """
    name: str
    family: str       # "ice40" or "ecp5"
    device: str       # a name in DEVICES
    package: str
    clock_mhz: float  # the board oscillator
    platform: str = ""
    uart: tuple = ("uart", 0)
    leds: tuple = (("led", 0), ("led", 1))
    baud: int = 1_000_000
    loader_board: str = ""
    ios: int = 0                    # IO sites the package bonds out (nextpnr's count)
    bitstream_suffix: str = ".bin"
    synth_opts: str = ""
    extra_resources: str = ""       # "module:function" returning resources to add
    note: str = ""

    @property
    def limits(self) -> dict:
        """nextpnr BEL type -> count: the device's resources and the package's IOs."""
        io = "SB_IO" if self.family == "ice40" else "TRELLIS_IO"
        return {**DEVICES[self.device].limits, io: self.ios}

    def make_platform(self):
        """A fresh amaranth-boards platform instance, with the host-link UART added if needed."""
        module, _, cls = self.platform.partition(":")
        platform = getattr(importlib.import_module(module), cls)()
        if self.extra_resources:
            module, _, function = self.extra_resources.partition(":")
            platform.add_resources(getattr(importlib.import_module(module), function)())
        return platform

    def loader_args(self, bitstream) -> list[str]:
        """openFPGALoader's arguments for this board: the iCEBreaker's SPI flash, the
        ULX3S's SRAM over JTAG, the OrangeCrab's DFU bootloader."""
        return ["-b", self.loader_board, str(bitstream)]


def _orangecrab_uart():
    # The OrangeCrab has USB but no UART bridge: the host link uses Feather pins 0 (RX) and
    # 1 (TX) with an external 3.3 V USB-UART adapter.
    from amaranth.build import Attrs
    from amaranth_boards.resources import UARTResource
    return [UARTResource(0, rx="0", tx="1", conn=("io", 0), attrs=Attrs(IO_TYPE="LVCMOS33"))]


BOARDS = {b.name: b for b in [
    Board("icebreaker", "ice40", "up5k", "sg48", 12.0,
          platform="amaranth_boards.icebreaker:ICEBreakerPlatform",
          leds=(("led", 1), ("led", 0)),   # green heartbeat, red error
          baud=1_000_000,
          loader_board="ice40_generic", ios=39,
          bitstream_suffix=".bin", synth_opts="-dsp"),
    Board("ulx3s-85f", "ecp5", "85k", "CABGA381", 25.0,
          platform="amaranth_boards.ulx3s:ULX3S_85F_Platform",
          leds=(("led", 0), ("led", 1), ("led", 2)),
          baud=1_000_000,
          loader_board="ulx3s", ios=365,
          bitstream_suffix=".bit"),
    Board("orangecrab-25f", "ecp5", "25k", "CSFBGA285", 48.0,
          platform="amaranth_boards.orangecrab_r0_2:OrangeCrabR0_2_25FPlatform",
          leds=(("rgb_led", 0),),
          baud=1_000_000,
          loader_board="orangeCrab", ios=197,
          bitstream_suffix=".bit",
          extra_resources="boards:_orangecrab_uart",
          note="host link on Feather pins 0 (RX) and 1 (TX) through a USB-UART adapter"),
]}


def get_board(name: str) -> Board:
    try:
        return BOARDS[name]
    except KeyError:
        raise UnknownBoard(f"board {name!r} is not known; known boards: " +
                           ", ".join(sorted(BOARDS))) from None


def get_device(name: str) -> Device:
    try:
        return DEVICES[name]
    except KeyError:
        raise UnknownBoard(f"device {name!r} is not known; known devices: " +
                           ", ".join(DEVICES)) from None
