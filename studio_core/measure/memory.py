"""Peak memory of a run, above the baseline taken just before it: one small interface over the GPU
allocator's counter and the process's peak RSS.

``peak_memory_meter(device)`` gives a meter; ``reset()`` before the first warm-up starts a fresh peak and
returns the baseline in use at that moment, ``peak()`` reads the peak since, and the engine stores
``peak - baseline`` as ``peak_mem_bytes``, with the baseline and ``method`` beside it. The figure is then
what the run itself needed, whatever else the process holds (other cached pipelines, the page, the
fidelity index): those are in the baseline, not in the peak.

- GPU: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. The allocator counts
  tensors, so other pipelines' weights cached on the device are the same bytes at the reset and at the
  peak and drop out of the difference exactly; they are left loaded (evicting them would make every
  sweep that alternates two setups reload both) and the method says how many there were.
- CPU: the kernel's peak resident set (VmHWM), reset through ``/proc/self/clear_refs`` ("5"). The reset is
  checked: the write must succeed and VmHWM must drop to about VmRSS. When it cannot (not Linux, a kernel
  or sandbox that refuses it) the meter is *unavailable* with the reason, and the run stores no figure
  rather than the process's lifetime peak under the same name. Before the baseline, freed heap is given
  back to the system (``gc.collect`` and glibc's ``malloc_trim``), so pages an earlier run freed but kept
  resident do not hide this run's allocations.

Its ``kind`` is the ``peak_mem_kind`` column ("unavailable: <why>" when there is no figure), so a figure
always says what it counts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from pathlib import Path
from typing import Protocol

__all__ = ["CudaPeakMemory", "PeakMemoryMeter", "ProcessPeakRSS", "RESET_SLACK_BYTES", "peak_memory_meter",
           "release_free_heap", "rss_reset", "rss_status"]

# VmHWM read right after a reset may exceed VmRSS by what the reading itself touched; more than this means
# the reset did not take (the lifetime peak is still there)
RESET_SLACK_BYTES = 4 * 2**20


class PeakMemoryMeter(Protocol):
    """Reads the peak memory of the measured part of a run."""

    kind: str
    method: str
    unavailable: str | None  # why there is no figure; None when there is one

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


def release_free_heap() -> None:
    """Collect garbage and hand freed heap back to the system (glibc ``malloc_trim``; nothing elsewhere)."""
    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # musl, macOS: no malloc_trim
        trim = None
    if trim is not None:
        trim(0)


class ProcessPeakRSS:
    """The process's peak resident set (VmHWM) since a checked ``clear_refs`` reset; unavailable otherwise."""

    kind = "cpu_peak_rss"
    method = "process peak RSS (VmHWM) above the RSS before the first warm-up, reset checked"

    def __init__(self) -> None:
        self.unavailable: str | None = None

    def reset(self) -> int:
        """Free heap back to the system, ``clear_refs`` 5, check it took; the current VmRSS is the baseline."""
        release_free_heap()
        done = rss_reset()
        status = rss_status()
        rss, hwm = status.get("VmRSS"), status.get("VmHWM")
        if not done:
            self.unavailable = ("the peak-RSS reset was refused (/proc/self/clear_refs not writable here), so "
                                "the only peak is the process's lifetime one")
        elif rss is None or hwm is None:
            self.unavailable = "VmRSS/VmHWM are not readable from /proc/self/status here"
        elif hwm > rss + RESET_SLACK_BYTES:
            self.unavailable = (f"the peak-RSS reset did not take (VmHWM {hwm / 2**20:.0f} MiB stayed above "
                                f"VmRSS {rss / 2**20:.0f} MiB after clear_refs)")
        else:
            self.unavailable = None
        return rss or 0

    def peak(self) -> int:
        """VmHWM: the peak resident set since the reset (meaningless when ``unavailable``)."""
        return rss_status().get("VmHWM", 0)


class CudaPeakMemory:
    """``torch.cuda.max_memory_allocated`` of one device, reset with ``reset_peak_memory_stats``."""

    kind = "cuda_max_memory_allocated"
    method = "torch.cuda.max_memory_allocated above memory_allocated before the first warm-up"
    unavailable = None

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
