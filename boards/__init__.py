"""Board registry: a board name to its FPGA, clock and host-link pins.

Issue #3 grows each entry into an amaranth-boards platform and a board top;
the config schema only needs the names and the devices.
"""

from dataclasses import dataclass

__all__ = ["Board", "BOARDS"]


@dataclass(frozen=True)
class Board:
    name: str
    family: str       # "ice40" or "ecp5"
    device: str       # nextpnr's device name
    package: str
    clock_mhz: float  # the board oscillator


BOARDS = {b.name: b for b in [
    Board("icebreaker", "ice40", "up5k", "sg48", 12.0),
    Board("ulx3s-85f", "ecp5", "85k", "CABGA381", 25.0),
    Board("orangecrab-25f", "ecp5", "25k", "CSFBGA285", 48.0),
]}
