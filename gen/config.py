"""Accelerator and target configuration: TOML in, frozen dataclasses out.

A config file has an ``[accelerator]`` table and a ``[target]`` table::

    [accelerator]
    rows = 8              # PE rows, 1..64
    cols = 8              # PE columns, 1..64
    dataflow = "ws"       # "ws" (weight-stationary) or "os" (output-stationary)
    input_width = 8       # operand bits: 4, 8 or 16
    acc_width = 32        # accumulator bits: 2*input_width..64
    scratchpad_kib = 16   # operand memory
    accumulator_kib = 16  # int32 result memory
    banks = 2             # memory banks: 1, 2, 4 or 8
    scratchpad_banks = 8  # the scratchpad's banks if not banks (1, 2, 4 or 8): the rows
                          # the WS weight path reads a cycle (8 load an 8x8 tile a cycle)
    program_kib = 32      # on-chip program memory (0 = none: host-streamed programs only)
    tokens = 128          # token buffer: the longest prompt + generation a RUN holds
    units = ["elementwise", "gelu", "softmax", "layernorm", "embed", "argmax"]
    vector_lanes = 1      # elements the vector units take a cycle (divides cols)
    multiplier = "auto"   # PE multipliers: "auto" (the target family's DSP primitive with
                          # its registers, when the PEs fit its DSPs), "generic", "ecp5", "ice40"

    [target]
    board = "ulx3s-85f"   # a name from boards.BOARDS, or give device instead
    clock_mhz = 50.0

Other issues add tables (``[search]``, ``[build]``) with :func:`register_section`.
Every mistake raises :class:`ConfigError` with one line that names the key,
the value given, and what is allowed.
"""

from dataclasses import dataclass, field, fields, asdict, MISSING
import hashlib
import json
import pathlib
import tomllib
import typing

from rtl.dsp import MULTIPLIERS
from rtl.isa import Geometry

__all__ = ["ConfigError", "AcceleratorConfig", "TargetConfig", "Config",
           "load_config", "parse_config", "read_toml", "register_section"]


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line meant for the user."""


@dataclass(frozen=True)
class AcceleratorConfig:
    rows: int = 8
    cols: int = 8
    dataflow: str = "ws"
    input_width: int = 8
    acc_width: int = 32
    scratchpad_kib: float = 16
    accumulator_kib: float = 16
    banks: int = 2
    program_kib: float = 0
    tokens: int = 0
    units: tuple[str, ...] = ()
    vector_lanes: int = 1
    scratchpad_banks: int | None = None
    multiplier: str = "auto"   # not part of the Geometry: every kind has the same timing

    def __post_init__(self):
        if self.multiplier not in ("auto",) + MULTIPLIERS:
            raise ConfigError(f"[accelerator] multiplier must be one of auto, "
                              f"{', '.join(MULTIPLIERS)}, not {self.multiplier!r}")
        try:
            self.geometry
        except ValueError as e:
            raise ConfigError(f"[accelerator] {e}") from None

    @property
    def geometry(self) -> Geometry:
        return Geometry(**{k: v for k, v in asdict(self).items() if k != "multiplier"})


@dataclass(frozen=True)
class TargetConfig:
    board: str | None = None
    device: str | None = None
    clock_mhz: float = 25.0

    def __post_init__(self):
        from boards import BOARDS
        if self.board is None and self.device is None:
            raise ConfigError("[target] needs board (one of: " + ", ".join(sorted(BOARDS)) +
                              ") or device")
        if self.board is not None and self.board not in BOARDS:
            raise ConfigError(f"[target] board = {self.board!r} is not known; known boards: " +
                              ", ".join(sorted(BOARDS)))
        if not 1 <= self.clock_mhz <= 500:
            raise ConfigError(f"[target] clock_mhz must be from 1 to 500, not {self.clock_mhz!r}")


_SECTIONS: dict[str, type] = {"accelerator": AcceleratorConfig, "target": TargetConfig}


def register_section(name: str, cls: type) -> None:
    """Let another package add a frozen-dataclass table to the config schema."""
    _SECTIONS[name] = cls


@dataclass(frozen=True)
class Config:
    name: str
    accelerator: AcceleratorConfig
    target: TargetConfig
    extra: dict = field(default_factory=dict, compare=False)
    source: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        out = {"accelerator": asdict(self.accelerator), "target": asdict(self.target)}
        out.update({k: asdict(v) for k, v in self.extra.items()})
        return out

    @property
    def hash(self) -> str:
        """A short hash of the config's content (not its name or path)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def section(self, name: str):
        return self.extra.get(name)


def _check_type(section: str, key: str, value, annotation):
    if typing.get_origin(annotation) is tuple:
        item = typing.get_args(annotation)[0]
        if not isinstance(value, list) or not all(isinstance(v, item) for v in value):
            raise ConfigError(f"[{section}] {key} = {value!r} has the wrong type; it must be a "
                              f"list of {item.__name__}")
        return tuple(value)
    allowed = typing.get_args(annotation) or (annotation,)
    allowed = tuple(a for a in allowed if a is not type(None)) if value is not None else allowed
    for kind in allowed:
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value) if not isinstance(value, int) else value
        if kind is type(None) and value is None:
            return value
        if isinstance(kind, type) and isinstance(value, kind) and not (
                isinstance(value, bool) and kind is not bool):
            return value
        if typing.get_origin(kind) in (list, tuple) and isinstance(value, list):
            return tuple(value) if typing.get_origin(kind) is tuple else value
    names = " or ".join(getattr(a, "__name__", str(a)) for a in allowed)
    raise ConfigError(f"[{section}] {key} = {value!r} has the wrong type; it must be {names}")


def _build_section(section: str, cls: type, table) -> object:
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}] must be a table, not {table!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.init}
    kwargs = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"[{section}] has no key {key!r}; allowed keys: " +
                              ", ".join(known))
        kwargs[key] = _check_type(section, key, value, hints[key])
    missing = [n for n, f in known.items()
               if n not in kwargs and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise ConfigError(f"[{section}] is missing {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"[{section}] {e}") from None


def parse_config(document: dict, *, name: str = "config", source: str | None = None) -> Config:
    for key in document:
        if key not in _SECTIONS:
            raise ConfigError(f"unknown table [{key}]; allowed tables: " + ", ".join(_SECTIONS))
    built = {key: _build_section(key, cls, document.get(key, {}))
             for key, cls in _SECTIONS.items()
             if key in document or key in ("accelerator", "target")}
    accelerator = built.pop("accelerator")
    target = built.pop("target")
    _check_memory_fit(accelerator, target)
    return Config(name=name, accelerator=accelerator, target=target, extra=built, source=source)


def _check_memory_fit(accelerator: AcceleratorConfig, target: TargetConfig) -> None:
    """A config whose memories exceed its device's block RAM is refused here, before any tool."""
    from boards import BOARDS, DEVICES
    from .memfit import check_fit
    device_name = BOARDS[target.board].device if target.board else target.device
    device = DEVICES.get(device_name)
    if device is None:
        return  # an unknown device is named by the build flow
    block = "DP16KD" if device.family == "ecp5" else "ICESTORM_RAM"
    problem = check_fit(accelerator.geometry, device.family, device.limits.get(block, 0),
                        device.part)
    if problem:
        raise ConfigError(f"[accelerator] {problem}")


def read_toml(path, error=None) -> dict:
    """A TOML file as a dict; a missing or malformed file raises ``error`` (a ConfigError
    subclass by default) with one line naming it."""
    error = error or ConfigError
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except (FileNotFoundError, IsADirectoryError):
        raise error(f"config file {str(path)!r} does not exist; see configs/ for examples") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise error(f"{path}: not valid TOML: {e}") from None


def load_config(path) -> Config:
    """Read a TOML config; the config's name is the file's stem."""
    path = pathlib.Path(path)
    document = read_toml(path)
    try:
        return parse_config(document, name=path.stem, source=str(path))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def as_config(config_or_path) -> Config:
    """Accept a loaded Config or a path to one."""
    if isinstance(config_or_path, Config):
        return config_or_path
    return load_config(config_or_path)


# [build]: the flow's limits (gen.toolchain imports nothing of gen, so no cycle).
from .toolchain import BuildConfig as _BuildConfig  # noqa: E402
register_section("build", _BuildConfig)
