"""Board registry: a board name to its FPGA, amaranth-boards platform, clock and host-link pins.

``BOARDS`` maps a name to a :class:`Board`. The config schema only needs the
names and devices; :mod:`boards.top` builds the board top (PLL, reset, UART
host link, status LEDs) and :mod:`gen.build` the bitstream from the rest.
"""

from dataclasses import dataclass, field
import importlib

__all__ = ["Board", "BOARDS", "UnknownBoard", "get_board"]


class UnknownBoard(KeyError):
    """A board name not in :data:`BOARDS`; the message lists the known ones."""

    def __str__(self):
        return self.args[0]


@dataclass(frozen=True)
class Board:
    """One board.

    ``platform`` is ``"module:Class"`` of its amaranth-boards platform;
    ``uart`` is the resource the host link uses (``extra_resources`` adds it
    where amaranth-boards has none); ``leds`` are the ``(name, number)`` of
    the status LEDs (heartbeat, frame error, accelerator busy; as many as the board has). ``programmer`` is the tool that
    ``--stage program`` runs through the platform, with the environment
    variable that overrides its path and the file it loads.
    """
    name: str
    family: str       # "ice40" or "ecp5"
    device: str       # nextpnr's device name
    package: str
    clock_mhz: float  # the board oscillator
    platform: str = ""
    uart: tuple = ("uart", 0)
    leds: tuple = (("led", 0), ("led", 1))
    baud: int = 1_000_000
    programmer: str = ""
    programmer_env: str = ""
    programmer_args: tuple = ()     # {bitstream} is replaced by the file's path
    bitstream_suffix: str = ".bin"
    synth_opts: str = ""
    extra_resources: str = ""       # "module:function" returning resources to add
    limits: dict = field(default_factory=dict, compare=False)  # nextpnr BEL type -> count
    note: str = ""

    def make_platform(self):
        """A fresh amaranth-boards platform instance, with the host-link UART added if needed."""
        module, _, cls = self.platform.partition(":")
        platform = getattr(importlib.import_module(module), cls)()
        if self.extra_resources:
            module, _, function = self.extra_resources.partition(":")
            platform.add_resources(getattr(importlib.import_module(module), function)())
        return platform

    def programmer_command(self, bitstream) -> list[str]:
        import os
        tool = os.environ.get(self.programmer_env, self.programmer)
        return [tool, *(arg.replace("{bitstream}", str(bitstream)) for arg in self.programmer_args)]


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
          programmer="iceprog", programmer_env="ICEPROG", programmer_args=("{bitstream}",),
          bitstream_suffix=".bin", synth_opts="-dsp",
          limits={"ICESTORM_LC": 5280, "ICESTORM_DSP": 8, "ICESTORM_RAM": 30,
                  "ICESTORM_SPRAM": 4, "SB_IO": 39}),
    Board("ulx3s-85f", "ecp5", "85k", "CABGA381", 25.0,
          platform="amaranth_boards.ulx3s:ULX3S_85F_Platform",
          leds=(("led", 0), ("led", 1), ("led", 2)),
          baud=1_000_000,
          programmer="openFPGALoader", programmer_env="OPENFPGALOADER",
          programmer_args=("-b", "ulx3s", "-m", "{bitstream}"),
          bitstream_suffix=".bit",
          limits={"TRELLIS_COMB": 83640, "TRELLIS_FF": 83640, "MULT18X18D": 156,
                  "DP16KD": 208, "TRELLIS_IO": 365}),
    Board("orangecrab-25f", "ecp5", "25k", "CSFBGA285", 48.0,
          platform="amaranth_boards.orangecrab_r0_2:OrangeCrabR0_2_25FPlatform",
          leds=(("rgb_led", 0),),
          baud=1_000_000,
          programmer="dfu-util", programmer_env="DFU_UTIL",
          programmer_args=("-a", "0", "-D", "{bitstream}"),
          bitstream_suffix=".bit",
          extra_resources="boards:_orangecrab_uart",
          limits={"TRELLIS_COMB": 24288, "TRELLIS_FF": 24288, "MULT18X18D": 28,
                  "DP16KD": 56, "TRELLIS_IO": 197},
          note="host link on Feather pins 0 (RX) and 1 (TX) through a USB-UART adapter"),
]}


def get_board(name: str) -> Board:
    try:
        return BOARDS[name]
    except KeyError:
        raise UnknownBoard(f"board {name!r} is not known; known boards: " +
                           ", ".join(sorted(BOARDS))) from None
