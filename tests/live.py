"""Helpers for tests that serve the studio for real: a free port, ``app.py`` loaded as a module, and a
bounded wait on a condition for work in another thread or process."""

from __future__ import annotations

import importlib.util
import socket
import time
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")

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


def wait_until(condition: Callable[[], T], *, what: str, timeout_s: float = 300.0, poll_s: float = 0.1) -> T:
    """Poll ``condition`` until it returns something truthy, and return that; ``AssertionError`` naming
    ``what`` after ``timeout_s``. Generous by default: the test machine may be loaded, and a condition that
    holds returns at once, so a long limit costs nothing when all is well."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)
