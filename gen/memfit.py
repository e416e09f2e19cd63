"""Do a config's on-chip memories fit its FPGA? Answered from the config alone, before any tool runs.

Every memory of the accelerator (scratchpad, accumulator, program memory, token
buffer) and of the board's host link is counted in block RAMs the way Yosys maps
it: a memory with one write port and ``r`` read ports becomes ``r`` copies, each
a 1-write/1-read block of the device's widest-fitting shape, per bank. The model
reproduces the block counts that synthesis reported for the board configs
(``docs/fpga.md``: 34 DP16KD for ``default`` at 16/16 KiB, 10 EBR for ``tiny``).

iCE40 SPRAMs (SB_SPRAM256KA) are single-ported: a memory with separate read and
write ports cannot use them, so they are not counted here; the UP5K's memories
are its 30 EBRs.
"""

from dataclasses import dataclass
import math

from rtl.isa import Geometry, INSTRUCTION_BYTES

__all__ = ["MemoryShape", "accelerator_memories", "block_rams", "memory_report", "check_fit"]

# Block RAM shapes (width, depth) usable with one write and one read port.
_BLOCK_SHAPES = {
    "ecp5": ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384)),  # DP16KD
    "ice40": ((16, 256), (8, 512), (4, 1024), (2, 2048)),                          # SB_RAM40_4K
}
_BLOCK_BITS = {"ecp5": 18 * 1024, "ice40": 4 * 1024}
_BLOCK_NAME = {"ecp5": "DP16KD", "ice40": "ICESTORM_RAM"}
# The host link's two byte memories (payload buffer, reply ring), one block each.
HOSTLINK_BLOCKS = 2
# Read ports of each memory (rtl/top.py, rtl/controller.py).
SCRATCHPAD_READ_PORTS = 2
ACCUMULATOR_READ_PORTS = 1


@dataclass(frozen=True)
class MemoryShape:
    name: str
    width: int
    depth: int
    banks: int = 1
    read_ports: int = 1

    @property
    def kib(self) -> float:
        return self.width * self.depth / 8 / 1024


def accelerator_memories(g: Geometry) -> list[MemoryShape]:
    """The accelerator's memories as the RTL builds them."""
    shapes = [
        MemoryShape("scratchpad", g.sp_width, g.sp_depth, g.sp_banks, SCRATCHPAD_READ_PORTS),
        MemoryShape("accumulator", g.acc_row_width, g.acc_depth, g.banks, ACCUMULATOR_READ_PORTS),
    ]
    if g.program_words:
        shapes.append(MemoryShape("program memory", INSTRUCTION_BYTES * 8, g.program_words))
    if g.tokens:
        shapes.append(MemoryShape("token buffer", 16, g.tokens))
    return shapes


def block_rams(shape: MemoryShape, family: str) -> int:
    """Block RAMs that ``shape`` takes on ``family`` ("ecp5" or "ice40")."""
    bank_depth = shape.depth // shape.banks
    per_copy = min(math.ceil(shape.width / w) * math.ceil(bank_depth / d)
                   for w, d in _BLOCK_SHAPES[family])
    return per_copy * shape.banks * shape.read_ports


def memory_report(g: Geometry, family: str, available: int) -> dict:
    """Numbers for a report: block RAMs per memory, their sum with the host link, the device's."""
    per_memory = {s.name: block_rams(s, family) for s in accelerator_memories(g)}
    used = sum(per_memory.values()) + HOSTLINK_BLOCKS
    return {"block_ram": _BLOCK_NAME[family], "per_memory": per_memory,
            "hostlink": HOSTLINK_BLOCKS, "used": used, "available": available,
            "kib_available": available * _BLOCK_BITS[family] / 8 / 1024}


def check_fit(g: Geometry, family: str, available: int, device: str) -> str | None:
    """None when the memories fit, else one line naming the memories, the need and the supply."""
    report = memory_report(g, family, available)
    if report["used"] <= available:
        return None
    parts = ", ".join(f"{name} {blocks}" for name, blocks in report["per_memory"].items())
    return (f"the memories need {report['used']} {report['block_ram']} block RAMs ({parts}, "
            f"host link {HOSTLINK_BLOCKS}) but {device} has {available} "
            f"({report['kib_available']:.0f} KiB); make scratchpad_kib, accumulator_kib or "
            f"program_kib smaller")
