"""Starting CUDA in a worker; a failure names the NVIDIA driver the locked torch build needs."""

from __future__ import annotations

from pathlib import Path

import torch

# The locked torch build (uv.lock: torch 2.15.0+cu132) runs on CUDA 13.x, which needs an NVIDIA driver of
# the R580 branch or newer (NVIDIA's minor-version compatibility table: CUDA 13.x >= 580).
MIN_DRIVER = 580
_DRIVER_FILE = Path("/proc/driver/nvidia/version")


class CudaStartError(RuntimeError):
    """CUDA did not start on a GPU worker; the message says which driver the torch build needs."""


def installed_driver() -> str:
    """The kernel driver's version line, or why there is none."""
    try:
        return _DRIVER_FILE.read_text().splitlines()[0].strip()
    except (OSError, IndexError):
        return f"no NVIDIA kernel driver loaded ({_DRIVER_FILE} is missing)"


def start_cuda(device: torch.device) -> None:
    """Make `device` this process's CUDA device, or fail with what the driver must be."""
    try:
        torch.cuda.set_device(device)
    except (RuntimeError, AssertionError) as err:
        raise CudaStartError(
            f"CUDA did not start on {device} ({str(err).splitlines()[0]}). torch {torch.__version__} is built "
            f"for CUDA {torch.version.cuda} and needs an NVIDIA driver >= {MIN_DRIVER}; this machine has: "
            f"{installed_driver()}"
        ) from err
