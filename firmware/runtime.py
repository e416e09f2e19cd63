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

A Transformer lives on the device (``firmware/compile_model.py``)::

    >>> device.load(qmodel)                    # weights, constants, program: once
    >>> for token in device.generate([5, 9, 2], 20):   # ids as the board sends them
    ...     print(token)
    >>> device.logits([5, 9, 2])               # int32 logits of every position
    >>> device.status(), device.reset()

A backend that starts from reset on every run (the simulators of
``firmware/sim.py``, ``keeps_state = False``) gets the load stream replayed in
front of each run; :attr:`Device.cycles` then counts only what follows it.
"""

from fractions import Fraction
import math
import os
import sys
import typing

import numpy as np

from rtl.isa import Geometry, Instruction, Opcode, ErrorCode, encode
from .compiler import compile_matmul
from .packing import signed_range, unpack_acc_lanes
from .program import Program, reply_bytes as _reply_bytes

__all__ = ["Backend", "Device", "DeviceError", "DeviceStatus", "scale_to_mult_shift"]

_SYNC_TAG = 0x5A
_PREAMBLE_REPLY = 5     # the load stream ends with SYNC (1 byte) and STATUS (4)


class DeviceError(RuntimeError):
    """The accelerator reported an error (STATUS); the message names the failing instruction."""

    def __init__(self, message, status):
        super().__init__(message)
        self.status = status


class DeviceStatus(typing.NamedTuple):
    """What STATUS answers: the sticky error, the failing opcode and its program word
    (0xFFFF for the host stream); all 0 while there is no error."""
    code: ErrorCode
    opcode: int
    word: int

    @property
    def ok(self) -> bool:
        return self.code == ErrorCode.OK

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
        self.image = None           # the ModelImage that load() put on the device
        self._preamble = b""        # replayed before each run on a backend that keeps no state
        self._preamble_cycles = 0

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
        reply = self._exchange(program.to_bytes(), program.reply_bytes)
        self.program = program
        return program.decode(reply)

    @property
    def keeps_state(self) -> bool:
        return getattr(self.backend, "keeps_state", True)

    def _silence(self, prompt: int):
        """Let a simulator wait through a RUN's longest stretch without a reply byte (the
        positions up to the first EMIT): its hang detector (``firmware.sim.MAX_IDLE_CYCLES``)
        is raised for the run, by the cycle model's count."""
        import contextlib
        module = sys.modules.get(type(self.backend).__module__)
        limit = getattr(module, "MAX_IDLE_CYCLES", None)
        if self.keeps_state or limit is None or self.image is None:
            return contextlib.nullcontext()
        from .compile_model import CycleModel
        if getattr(self, "_cycle_model", None) is None or self._cycle_model.image is not self.image:
            self._cycle_model = CycleModel(self.image)
        needed = 2 * self._cycle_model.prefill_cycles(prompt) + 10_000

        @contextlib.contextmanager
        def raised():
            module.MAX_IDLE_CYCLES = max(limit, needed)
            try:
                yield
            finally:
                module.MAX_IDLE_CYCLES = limit
        return raised()

    def _exchange(self, stream: bytes, reply_bytes: int) -> bytes:
        """Send ``stream``, return its ``reply_bytes`` reply bytes; sets :attr:`cycles`."""
        if self._preamble and not self.keeps_state:
            # The preamble ends with a reply (SYNC, STATUS), so the cycles after its last
            # reply byte are this run's.
            reply, cycles = self.backend.run(self._preamble + stream, _PREAMBLE_REPLY + reply_bytes)
            self.cycles = None if cycles is None else cycles - self._preamble_cycles
            return reply[_PREAMBLE_REPLY:]
        reply, self.cycles = self.backend.run(stream, reply_bytes)
        return reply

    def _stream(self, stream: bytes, reply_bytes: int):
        """Yield reply chunks as they arrive (a backend with ``stream``), else all at once."""
        if self.keeps_state and hasattr(self.backend, "stream"):
            self.cycles = None
            yield from self.backend.stream(stream, reply_bytes)
        else:
            yield self._exchange(stream, reply_bytes)

    # -- a Transformer on the device

    def load(self, qmodel):
        """Compile ``qmodel`` (a :class:`firmware.model.QuantizedModel` or a path to one) for
        this device and send the image once; :class:`firmware.compile_model.ModelRefused`
        (one line) if it does not fit. Returns the :class:`ModelImage`."""
        from .compile_model import compile_model
        from .model import QuantizedModel
        if not isinstance(qmodel, QuantizedModel):
            qmodel = QuantizedModel.load(qmodel)
        image = compile_model(qmodel, self.geometry)
        stream = image.load.to_bytes() + encode(Instruction(Opcode.SYNC, tag=_SYNC_TAG)) + \
            encode(Instruction(Opcode.STATUS))
        self.image, self._preamble = None, b""
        reply, cycles = self.backend.run(stream, 5)
        self.image = image
        self._check_status(self._decode_status(reply[1:]), "loading the model")
        if not self.keeps_state:
            # The next run's first bytes go in while the preamble's last reply bytes still
            # leave; the cycle model says how many cycles that overlap takes, so cycles of a
            # run count from its own first byte, as on a device that keeps its state.
            from .cycles import cycle_report
            sync = encode(Instruction(Opcode.SYNC, tag=_SYNC_TAG))
            overlap = cycle_report(stream, self.geometry).total_cycles + \
                cycle_report(sync, self.geometry).total_cycles - \
                cycle_report(stream + sync, self.geometry).total_cycles
            self._preamble, self._preamble_cycles = stream, (cycles or 0) - overlap
        self.cycles = cycles
        return image

    def _image(self):
        if self.image is None:
            raise RuntimeError("no model on the device: call load(qmodel) first")
        return self.image

    def generate(self, prompt_ids, n: int):
        """Run the model on ``prompt_ids`` and yield the ``n`` token ids it generates, each as
        soon as it arrives. Raises :class:`DeviceError` if the device reports an error."""
        image = self._image()
        ids = list(prompt_ids)
        run, payload = image.run_step(ids, n)
        stream = encode(run) + payload
        pending = b""
        got = 0
        with self._silence(len(ids)):
            chunks = list(self._stream(stream, 2 * n)) if not self.keeps_state else None
        for chunk in chunks if chunks is not None else self._stream(stream, 2 * n):
            pending += chunk
            while len(pending) >= 2 and got < n:
                token = int.from_bytes(pending[:2], "little")
                pending = pending[2:]
                if token >= image.vocab_size:   # 0xFFFF padding: the RUN failed
                    self._raise_status("generating", stream, 2 * n)
                got += 1
                yield token

    def logits(self, prompt_ids) -> np.ndarray:
        """int32 logits (P x vocab) of every position of ``prompt_ids``: for each prefix a RUN
        with N = 0 (its last position runs the LM head) and a STORE of the logits rows."""
        image = self._image()
        ids = list(prompt_ids)
        store = image.store_logits()
        row_bytes = _reply_bytes(self.geometry, store)
        stream = bytearray()
        for p in range(1, len(ids) + 1):
            run, payload = image.run_step(ids[:p], 0)
            stream += encode(run) + payload + encode(store)
        status = Instruction(Opcode.STATUS)
        with self._silence(len(ids)):
            reply = self._exchange(bytes(stream) + encode(status), len(ids) * row_bytes + 4)
        self._check_status(self._decode_status(reply[-4:]), "computing logits")
        g = self.geometry
        rows = unpack_acc_lanes(reply[:-4], g.acc_width, g.cols)
        return rows.reshape(len(ids), -1)[:, :image.vocab_size].astype(np.int32)

    @staticmethod
    def _decode_status(reply: bytes) -> DeviceStatus:
        code = ErrorCode(reply[0]) if reply[0] in ErrorCode._value2member_map_ else reply[0]
        return DeviceStatus(code, reply[1], int.from_bytes(reply[2:4], "little"))

    def status(self) -> DeviceStatus:
        """The device's error status (STATUS)."""
        return self._decode_status(self._exchange(encode(Instruction(Opcode.STATUS)), 4))

    def reset(self) -> None:
        """RESET: clear the error and the registers; a loaded model stays."""
        self._exchange(encode(Instruction(Opcode.RESET)) +
                       encode(Instruction(Opcode.SYNC, tag=_SYNC_TAG)), 1)

    def _raise_status(self, doing, stream=b"", reply_bytes=0):
        """Raise the device's error; a backend that keeps no state runs ``stream`` again."""
        if self.keeps_state:
            status = self.status()
        else:
            reply = self._exchange(stream + encode(Instruction(Opcode.STATUS)), reply_bytes + 4)
            status = self._decode_status(reply[-4:])
        self._check_status(status, doing)
        raise DeviceError(f"the device answered wrongly while {doing} but reports no error",
                          status)

    def _check_status(self, status: DeviceStatus, doing: str):
        if status.ok:
            return
        try:
            opcode = Opcode(status.opcode).name
        except ValueError:
            opcode = "a word past the end of program memory" if status.opcode == 0xFF \
                else f"reserved opcode {status.opcode}"
        where = "the host stream" if status.word == 0xFFFF else f"program word {status.word}"
        if status.word != 0xFFFF and self.image is not None \
                and status.word < len(self.image.words):
            opcode = repr(self.image.words[status.word])
        name = status.code.name if isinstance(status.code, ErrorCode) else str(status.code)
        raise DeviceError(f"the device stopped with {name} while {doing}: {opcode} at {where}",
                          status)

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
