"""Peak memory readers: the process's peak resident set on CPU, the CUDA allocator's peak on GPU."""

from __future__ import annotations

import numpy as np
import pytest

from studio_core.measure.memory import CudaPeakMemory, ProcessPeakRSS, peak_memory_meter

MIB = 2**20


def test_cpu_meter_reads_a_peak_that_covers_what_was_allocated():
    meter = peak_memory_meter("cpu")
    assert isinstance(meter, ProcessPeakRSS) and meter.kind == "cpu_peak_rss"
    baseline = meter.reset()
    block = np.ones(64 * MIB, dtype=np.uint8)  # touched, so resident
    assert baseline > 0 and meter.peak() >= baseline + 60 * MIB
    del block


@pytest.mark.gpu
def test_cuda_meter_is_reset_so_a_smaller_second_part_reports_its_own_peak():
    import torch

    meter = peak_memory_meter("cuda")
    assert isinstance(meter, CudaPeakMemory) and meter.kind == "cuda_max_memory_allocated"
    meter.reset()
    large = torch.empty(256 * MIB, dtype=torch.uint8, device="cuda")
    first = meter.peak()
    del large
    baseline = meter.reset()
    small = torch.empty(MIB, dtype=torch.uint8, device="cuda")
    second = meter.peak()
    del small
    assert first >= 256 * MIB and baseline + MIB <= second < first
