"""Where an output came from: the git commit of the tree that made it.

Build manifests (gen/build.py) and training manifests (search/model) both
record it; this module has no heavy imports so either can use it.
"""

import pathlib
import subprocess

__all__ = ["git_commit", "REPO"]

REPO = pathlib.Path(__file__).resolve().parent.parent


def git_commit() -> str:
    """HEAD's hash, with ``-dirty`` when tracked files differ from it; ``unknown`` outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
