"""Where a figure came from: the studio's own commit (no torch import, so the CLI and bundles can use it)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

__all__ = ["git_commit"]

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def git_commit() -> str:
    """The checkout's commit (12 hex digits, ``-dirty`` with uncommitted changes to tracked files), or
    ``"unknown"`` outside a git checkout; asked once per process."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("-dirty" if dirty else "")) if head else "unknown"
