"""Peak memory of a run: one small interface over the GPU allocator's counter and the process's peak RSS.

``peak_memory_meter(device)`` gives a meter; ``reset()`` before the measured part starts a fresh peak
and returns the baseline in use at that moment, ``peak()`` reads the peak since. Its ``kind`` is the
``peak_mem_kind`` column, so a figure always says what it counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

__all__ = ["CudaPeakMemory", "PeakMemoryMeter", "ProcessPeakRSS", "peak_memory_meter", "rss_reset", "rss_status"]


class PeakMemoryMeter(Protocol):
    """Reads the peak memory of the measured part of a run."""

    kind: str

    def reset(self) -> int:
        """Start a fresh peak; return the bytes in use now (the baseline)."""
        ...

    def peak(self) -> int:
        """The peak bytes since the last ``reset``."""
        ...


def rss_reset() -> bool:
    """Reset the kernel's peak-RSS counter for this process (Linux ``clear_refs`` 5); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_status() -> dict[str, int]:
    """VmHWM (peak resident set) and VmRSS in bytes from ``/proc/self/status``; ``ru_maxrss`` elsewhere."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    except OSError:
        import resource

        out["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


class ProcessPeakRSS:
    """The process's peak resident set (VmHWM), reset through ``clear_refs`` where Linux allows it."""

    kind = "cpu_peak_rss"

    def reset(self) -> int:
        """``clear_refs`` 5, then the current VmRSS as the baseline."""
        rss_reset()
        return rss_status().get("VmRSS", 0)

    def peak(self) -> int:
        """VmHWM: the peak resident set since the reset (since process start where it could not reset)."""
        return rss_status().get("VmHWM", 0)


class CudaPeakMemory:
    """``torch.cuda.max_memory_allocated`` of one device, reset with ``reset_peak_memory_stats``."""

    kind = "cuda_max_memory_allocated"

    def __init__(self, device: str = "cuda"):
        import torch

        self.device = torch.device(device)

    def reset(self) -> int:
        """``torch.cuda.reset_peak_memory_stats``, then ``memory_allocated`` as the baseline."""
        import torch

        torch.cuda.reset_peak_memory_stats(self.device)
        return torch.cuda.memory_allocated(self.device)

    def peak(self) -> int:
        """``torch.cuda.max_memory_allocated`` since the reset."""
        import torch

        return torch.cuda.max_memory_allocated(self.device)


def peak_memory_meter(device: str) -> PeakMemoryMeter:
    """The meter for a resolved device: the CUDA allocator's peak on GPU, peak RSS on CPU."""
    return CudaPeakMemory(device) if device.startswith("cuda") else ProcessPeakRSS()
