"""Helpers for tests that serve the studio for real: a free port, and ``app.py`` loaded as a module."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_app_main():
    """``app.py`` as a module (the ``app`` package shadows its name)."""
    spec = importlib.util.spec_from_file_location("studio_app_main", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
