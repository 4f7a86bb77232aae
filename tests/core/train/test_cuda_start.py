"""A failed CUDA start names the NVIDIA driver the locked torch build needs (core/train/cuda_start.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from core.train.cuda_start import MIN_DRIVER, CudaStartError, start_cuda

REPO = Path(__file__).resolve().parents[3]


def test_the_driver_floor_matches_the_locked_torch_build() -> None:
    """uv.lock's torch is a CUDA 13 build; CUDA 13.x needs driver >= 580 (README says so too)."""
    lock = (REPO / "uv.lock").read_text()
    version = re.search(r'name = "torch"\nversion = "([^"]+)"', lock).group(1)
    assert torch.__version__.split("+")[0] == version
    assert torch.version.cuda.startswith("13.") and MIN_DRIVER == 580
    assert f"driver >= {MIN_DRIVER}" in (REPO / "README.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where CUDA cannot start")
def test_a_cuda_start_without_a_driver_says_which_driver_is_needed() -> None:
    with pytest.raises(CudaStartError) as err:
        start_cuda(torch.device("cuda", 0))
    text = str(err.value)
    assert f"needs an NVIDIA driver >= {MIN_DRIVER}" in text and f"CUDA {torch.version.cuda}" in text
    assert "this machine has:" in text
