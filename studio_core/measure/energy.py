"""Energy per image: a hardware energy counter read around the timed repeats, less the idle draw.

``energy_meter(device)`` picks the counter: on an NVIDIA GPU, NVML's total energy counter
(``nvmlDeviceGetTotalEnergyConsumption``, millijoules since the driver loaded; Volta and newer), through
``nvidia-ml-py`` when it is installed (requirements-gpu.txt); on a CPU, Intel/AMD RAPL package counters
(``/sys/class/powercap/intel-rapl:N/energy_uj``, microjoules, wrapping at ``max_energy_range_uj``) where
this process may read them. Anywhere else the meter is unavailable and says why, and the run records no
figure, only that reason.

The figure: ``idle()`` reads the counter over ``IDLE_WINDOW_S`` before the first warm-up, giving the idle
power; ``start()`` and ``stop()`` bracket the timed repeats; J per image = (E_end - E_start - idle W x
the repeats' seconds) / images made in the repeats. The counter covers the whole device (GPU) or
package (CPU), so other work on it during the run is counted too: the note says so.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable, Protocol

__all__ = ["IDLE_WINDOW_S", "POWERCAP", "EnergyCounter", "EnergyMeter", "NvmlCounter", "RaplCounter",
           "energy_counter", "energy_meter"]

IDLE_WINDOW_S = 0.5  # long enough for several counter updates (NVML and RAPL refresh every ~1-20 ms)
POWERCAP = Path("/sys/class/powercap")
_PACKAGE = re.compile(r"intel-rapl:\d+$")  # top-level package zones; their sub-zones are inside them


class EnergyCounter(Protocol):
    """A cumulative energy counter of one device."""

    method: str

    def joules(self) -> float:
        """Energy counted so far, in joules (monotonic across wrap-arounds)."""
        ...


class NvmlCounter:
    """NVML's total energy counter of one GPU (millijoules since the driver loaded)."""

    method = "NVML total energy (nvmlDeviceGetTotalEnergyConsumption) over the timed repeats, less idle power"

    def __init__(self, nvml, handle):
        self.nvml, self.handle = nvml, handle

    def joules(self) -> float:
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1000.0


class RaplCounter:
    """The sum of RAPL package counters, each unwrapped at its ``max_energy_range_uj``."""

    method = "RAPL package energy (/sys/class/powercap) over the timed repeats, less idle power"

    def __init__(self, zones: list[Path]):
        self.zones = zones
        self.ranges = [int((z / "max_energy_range_uj").read_text()) for z in zones]
        self.last = [self._raw(z) for z in zones]
        self.total_uj = 0

    @staticmethod
    def _raw(zone: Path) -> int:
        return int((zone / "energy_uj").read_text())

    def joules(self) -> float:
        for i, zone in enumerate(self.zones):
            now = self._raw(zone)
            delta = now - self.last[i]
            if delta < 0:  # the counter wrapped past max_energy_range_uj
                delta += self.ranges[i]
            self.total_uj += delta
            self.last[i] = now
        return self.total_uj / 1e6


def _nvml_handle(nvml, device: str):
    """NVML's handle of a CUDA device: found by PCI bus (NVML numbers GPUs in PCI order, CUDA may not)."""
    import torch

    index = torch.device(device).index or 0
    props = torch.cuda.get_device_properties(index)
    bus = getattr(props, "pci_bus_id", None)
    if bus is None:
        return nvml.nvmlDeviceGetHandleByIndex(index)
    pci = f"{getattr(props, 'pci_domain_id', 0):08x}:{bus:02x}:{getattr(props, 'pci_device_id', 0):02x}.0"
    return nvml.nvmlDeviceGetHandleByPciBusId(pci)


def _nvml_counter(device: str) -> tuple[EnergyCounter | None, str | None]:
    """NVML's counter for a CUDA device, or the reason there is none."""
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return None, "NVML bindings are not installed (pip install -r requirements-gpu.txt adds nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
        counter = NvmlCounter(pynvml, _nvml_handle(pynvml, device))
        counter.joules()
        return counter, None
    except Exception as exc:  # NVMLError_NotSupported (pre-Volta), no driver, no permission
        return None, f"NVML's energy counter cannot be read on this GPU ({type(exc).__name__}: {exc})"


def _rapl_counter(root: Path = POWERCAP) -> tuple[EnergyCounter | None, str | None]:
    """The RAPL package counters under ``root``, or the reason there are none (this machine's case)."""
    if not root.is_dir():
        return None, f"no RAPL counter readable at {root} (this machine: {root} does not exist)"
    zones = sorted(z for z in root.iterdir() if _PACKAGE.match(z.name))
    if not zones:
        return None, f"no RAPL counter readable at {root} (this machine: no intel-rapl package zone there)"
    try:
        return RaplCounter(zones), None
    except (OSError, ValueError) as exc:  # energy_uj is root-only on most kernels since 2020 (CVE-2020-8694)
        why = "readable by root only" if isinstance(exc, PermissionError) else f"unreadable ({exc})"
        return None, f"no RAPL counter readable at {root} (this machine: {zones[0].name}/energy_uj is {why})"


def energy_counter(device: str) -> tuple[EnergyCounter | None, str | None]:
    """The energy counter of a resolved device (NVML on CUDA, RAPL on CPU), or None and the reason."""
    return _nvml_counter(device) if device.startswith("cuda") else _rapl_counter()


class EnergyMeter:
    """Idle power, then the energy of the timed repeats per image; every figure or its absence explained."""

    def __init__(self, counter: EnergyCounter | None, unavailable: str | None = None, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.counter, self.unavailable = counter, unavailable
        self.clock, self.sleep = clock, sleep
        self.idle_w: float | None = None
        self._start: tuple[float, float] | None = None

    def _read(self) -> tuple[float, float]:
        return self.counter.joules(), self.clock()

    def idle(self, window_s: float = IDLE_WINDOW_S) -> None:
        """The idle power: the counter over ``window_s`` with nothing running (before the first warm-up)."""
        if self.counter is None:
            return
        e0, t0 = self._read()
        self.sleep(window_s)
        e1, t1 = self._read()
        self.idle_w = (e1 - e0) / (t1 - t0) if t1 > t0 else 0.0

    def start(self) -> None:
        """Mark the start of the timed repeats."""
        if self.counter is not None:
            self._start = self._read()

    def stop(self, images: int) -> dict:
        """The run's energy columns for ``images`` made since ``start``: J per image, method and note."""
        if self.counter is None or self._start is None or images <= 0:
            return {"energy_j_per_image": None, "energy_method": None,
                    "energy_note": f"energy unavailable: {self.unavailable or 'the counter was not started'}"}
        e1, t1 = self._read()
        e0, t0 = self._start
        idle_w, seconds = self.idle_w or 0.0, t1 - t0
        net = e1 - e0 - idle_w * seconds
        note = (f"{e1 - e0:.3f} J over {seconds:.3f} s of timed repeats, less idle {idle_w:.2f} W measured over "
                f"{IDLE_WINDOW_S:g} s before the run; the counter covers the whole device, other work on it counts")
        if net <= 0:
            note += "; the run drew no more than idle, so the figure is within the counter's noise"
        return {"energy_j_per_image": net / images, "energy_method": self.counter.method, "energy_note": note}


def energy_meter(device: str) -> EnergyMeter:
    """An ``EnergyMeter`` on the resolved device's counter (unavailable, with the reason, when it has none)."""
    counter, why = energy_counter(device)
    return EnergyMeter(counter, why)
