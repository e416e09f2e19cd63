"""The runtime: a :class:`Device` runs Programs on a backend and returns numbers.

A backend is anything with ``run(program: bytes, reply_bytes: int) ->
tuple[bytes, int | None]`` (the reply bytes and the cycles, None where it cannot
count them): ``functional`` (the numpy ISA interpreter), the simulated RTL
(``amaranth``, ``icarus``, ``verilator``, see ``firmware/sim.py``) or a board
over the serial host link (``firmware/serial.py``).

    >>> device = Device.simulated("configs/default.toml")
    >>> c = device.matmul(a, b)            # int8 M x K @ int8 K x N -> int32 M x N
    >>> q = device.matmul(a, b, bias=bias, scale=0.01)   # int8, requantized
    >>> device.cycles
"""

from fractions import Fraction
import math
import os
import typing

import numpy as np

from rtl.isa import Geometry
from .compiler import compile_matmul
from .packing import signed_range
from .program import Program

__all__ = ["Backend", "Device", "scale_to_mult_shift"]

MULT_BITS, SHIFT_BITS = 16, 6


class Backend(typing.Protocol):
    def run(self, program: bytes, reply_bytes: int) -> tuple[bytes, int | None]: ...


def scale_to_mult_shift(scale: float) -> tuple[int, int]:
    """The ISA's ``(mult, shift)`` nearest to ``scale``: ``mult / 2**shift``, mult < 2**16,
    shift < 2**6, with the largest shift whose mult fits (the finest step there is)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)) \
            or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number, not {scale!r}")
    exact = Fraction(float(scale))
    for shift in range((1 << SHIFT_BITS) - 1, -1, -1):
        mult = round(exact * (1 << shift))
        if mult < 1 << MULT_BITS:
            if mult == 0:
                break
            return mult, shift
    low = Fraction(1, 2 * (1 << ((1 << SHIFT_BITS) - 1)))
    raise ValueError(f"scale must be from {float(low):.3g} to {(1 << MULT_BITS) - 1}, "
                     f"not {scale!r}")


def _dtype_for(width: int):
    return np.dtype(np.int8) if width <= 8 else np.dtype(np.int16) if width <= 16 else \
        np.dtype(np.int32) if width <= 32 else np.dtype(np.int64)


class Device:
    """An accelerator of ``geometry`` behind ``backend``. ``cycles`` holds the cycles of the
    last call (None when the backend cannot count them)."""

    def __init__(self, geometry: Geometry, backend: Backend):
        if not isinstance(geometry, Geometry):
            raise TypeError(f"geometry must be an rtl.isa.Geometry, not {geometry!r}")
        self.geometry = geometry
        self.backend = backend
        self.cycles: int | None = None
        self.program: Program | None = None

    @classmethod
    def simulated(cls, config, backend: str | None = None) -> "Device":
        """The config's RTL in a simulator: ``backend`` (or env ``TANDEM_SIM``) names one of
        ``verilator``, ``icarus``, ``amaranth``, ``functional``; default the fastest installed."""
        from gen.config import as_config
        from . import sim
        config = as_config(config)
        name = backend or sim.default_backend()
        return cls(config.accelerator.geometry, sim.make_backend(name, config))

    @classmethod
    def functional(cls, geometry_or_config) -> "Device":
        """The numpy ISA interpreter: instant results, no cycles."""
        from .functional import FunctionalBackend
        geometry = geometry_or_config
        if not isinstance(geometry, Geometry):
            from gen.config import as_config
            geometry = as_config(geometry_or_config).accelerator.geometry
        return cls(geometry, FunctionalBackend(geometry))

    @classmethod
    def serial(cls, port: str, config, **options) -> "Device":
        """A board on ``port`` (a device path or an open pyserial port) that runs the config's
        bitstream; ``options`` go to :class:`firmware.serial.SerialBackend` (``baud``, ...)."""
        from gen.config import as_config
        from .serial import SerialBackend
        config = as_config(config)
        return cls(config.accelerator.geometry, SerialBackend(port, **options))

    @property
    def backend_name(self) -> str:
        return getattr(self.backend, "name", type(self.backend).__name__)

    def run(self, program: Program) -> np.ndarray | None:
        """Run a Program; its decoded result. Sets :attr:`cycles`."""
        if program.geometry != self.geometry:
            raise ValueError("the program was compiled for another geometry")
        reply, cycles = self.backend.run(program.to_bytes(), program.reply_bytes)
        self.cycles = cycles
        self.program = program
        return program.decode(reply)

    def _check_matrix(self, name, value):
        g = self.geometry
        dtype = _dtype_for(g.input_width)
        if not isinstance(value, np.ndarray):
            raise ValueError(f"{name} must be a numpy array of {dtype}, not {type(value).__name__}")
        if value.dtype != dtype:
            raise ValueError(f"{name} must have dtype {dtype} for {g.input_width}-bit inputs, "
                             f"not {value.dtype}")
        if value.ndim != 2 or 0 in value.shape:
            raise ValueError(f"{name} must be a non-empty 2-D matrix, not shape {value.shape}")
        low, high = signed_range(g.input_width)
        if g.input_width not in (8, 16) and (value.min() < low or value.max() > high):
            raise ValueError(f"{name} must hold {g.input_width}-bit values {low}..{high}, "
                             f"not {value.min()}..{value.max()}")

    def matmul(self, a: np.ndarray, b: np.ndarray, bias: np.ndarray | None = None,
               scale: float | None = None) -> np.ndarray:
        """``a @ b (+ bias)``: int32 M x N (int64 for acc_width > 32), wrapped to acc_width as
        the accumulator wraps; with ``scale``, requantized per ``rtl/isa.py`` to input_width
        bits (int8; int16 for 16-bit inputs). ``bias`` is int32 (int64 for acc_width > 32)."""
        g = self.geometry
        self._check_matrix("a", a)
        self._check_matrix("b", b)
        if a.shape[1] != b.shape[0]:
            raise ValueError(f"a is {a.shape[0]}x{a.shape[1]} and b is {b.shape[0]}x{b.shape[1]}; "
                             f"b must have {a.shape[1]} rows")
        acc_dtype = _dtype_for(max(g.acc_width, 32))
        if bias is not None:
            if not isinstance(bias, np.ndarray) or bias.dtype != acc_dtype:
                raise ValueError(f"bias must be a numpy array of {acc_dtype}, not "
                                 f"{getattr(bias, 'dtype', type(bias).__name__)}")
            if bias.shape != (b.shape[1],):
                raise ValueError(f"bias must have shape ({b.shape[1]},), not {bias.shape}")
            low, high = signed_range(g.acc_width)
            if bias.min() < low or bias.max() > high:
                raise ValueError(f"bias must hold {g.acc_width}-bit values {low}..{high}")
        mult_shift = scale_to_mult_shift(scale) if scale is not None else None
        program = compile_matmul(g, a, b, bias=bias, mult_shift=mult_shift)
        result = self.run(program)
        return result.astype(_dtype_for(g.input_width) if scale is not None else acc_dtype)

    def close(self):
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
