"""Peak memory of the process (placement.peak_memory_mb)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vmad_pipeline.placement import peak_memory_mb


def test_peak_host_memory_covers_an_allocation_and_no_gpu_figure_without_cuda():
    block = np.ones(300 * 2**20 // 8)  # 300 MiB, touched
    peak = peak_memory_mb()
    assert block.sum() > 0 and peak["peak_host_memory_mb"] >= 300
    if not torch.cuda.is_available():
        assert peak["peak_gpu_memory_mb"] is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_peak_host_memory_is_the_kernels_high_water_mark_in_mib():
    status = Path("/proc/self/status").read_text().splitlines()
    hwm_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    assert peak_memory_mb()["peak_host_memory_mb"] == pytest.approx(hwm_kib / 1024, rel=0.02)
