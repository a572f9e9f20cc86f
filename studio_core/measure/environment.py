"""Where a run happens: the one device resolver, and the setup recorded beside every figure."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from studio_core.errors import SpecError
from studio_core.store.provenance import git_commit

__all__ = ["device_name", "environment", "resolve_device"]


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a CUDA device is visible, else ``"cpu"``; ``"cuda"`` on a machine
    without one is a ``SpecError`` on field ``device``. Every part of the studio asks this function."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SpecError("device", device, "'cpu' or 'auto' on this machine (no CUDA device is visible)")
    return device


def device_name(device: str, threads: int | None = None) -> str:
    """The GPU's name, or the CPU model with its core count (with ``threads``: the torch threads a job ran on,
    for a figure made on part of the machine)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu} ({threads} threads)" if threads else f"CPU {cpu} ({os.cpu_count()} cores)"


def environment(device: str) -> dict:
    """The setup columns of a run: device, library versions, threads, commit, Python."""
    import diffusers
    import torch

    return {"device_name": device_name(device), "torch_version": torch.__version__,
            "diffusers_version": diffusers.__version__, "threads": torch.get_num_threads(),
            "git_commit": git_commit(), "python_version": platform.python_version()}
