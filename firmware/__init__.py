"""Firmware: compile work for the accelerator and run it on a device.

``firmware.compiler`` cuts matmuls into Programs (``firmware.program``) of
``rtl.isa`` instructions; ``firmware.runtime.Device`` runs them on a backend: the
numpy ISA interpreter (``firmware.functional``), the simulated RTL
(``firmware.sim``) or a board over the host link (``firmware.serial``).
"""

from .runtime import Device

__all__ = ["Device"]
