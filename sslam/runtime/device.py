"""Which device a job runs on, said in one line when it cannot, and the banner every job log starts with.

`resolve_device("cuda")` either returns a CUDA device or raises `DeviceError` within seconds, naming what
is missing (no GPU visible, or a driver older than the torch build needs), so that a GPU job on a node where
CUDA does not initialise never trains on the CPU for its whole time limit. "auto" picks CUDA when it works.
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

from sslam import __version__
from sslam.runtime.errors import SslamError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


class DeviceError(SslamError):
    """The requested device is not usable here."""


def driver_version() -> str | None:
    """The NVIDIA kernel driver's version, from /proc or nvidia-smi; None when there is none."""
    proc = Path("/proc/driver/nvidia/version")
    try:
        match = re.search(r"Kernel Module\s+([\d.]+)", proc.read_text())
        if match:
            return match.group(1)
    except OSError:
        pass
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = result.stdout.strip().splitlines()
    return lines[0].strip() if result.returncode == 0 and lines else None


def cuda_unavailable_reason() -> str:
    import torch

    build = torch.version.cuda
    driver = driver_version()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    parts = [f"torch {torch.__version__} is " + (f"built for CUDA {build}" if build else "a CPU-only build")]
    parts.append(f"NVIDIA driver {driver}" if driver else "no NVIDIA driver found")
    if visible is not None:
        parts.append(f"CUDA_VISIBLE_DEVICES={visible!r}")
    hint = ""
    if build and driver:
        hint = " (a driver older than the torch build needs? see README 'Installing on a cluster')"
    return "; ".join(parts) + hint


def resolve_device(requested: str | None = "auto", local_rank: int | None = None):
    """torch.device for "auto" | "cpu" | "cuda" | "cuda:N"; DeviceError when CUDA is asked for but unusable."""
    import torch

    requested = requested or "auto"
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "auto":
        if not _cuda_works():
            return torch.device("cpu")
        requested = "cuda"
    if not requested.startswith("cuda"):
        raise DeviceError(f"unknown device {requested!r}; use one of {', '.join(DEVICE_CHOICES)} (or cuda:N)")
    if not _cuda_works():
        raise DeviceError(f"CUDA requested but unavailable: {cuda_unavailable_reason()}")
    index = int(requested.partition(":")[2]) if ":" in requested else (local_rank or 0)
    if index >= torch.cuda.device_count():
        raise DeviceError(f"device cuda:{index} requested but only {torch.cuda.device_count()} GPU(s) are visible")
    return torch.device("cuda", index)


def _cuda_works() -> bool:
    import torch

    try:
        return torch.cuda.is_available() and torch.cuda.device_count() > 0
    except RuntimeError:  # a broken driver can raise instead of answering False
        return False


def banner(fingerprint: str | None = None, world_size: int = 1, device: Any = None) -> list[str]:
    """The lines every job log begins with: where it runs, with what, and which code."""
    import torch


    slurm = {key: os.environ[key] for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
                                              "SLURM_RESTART_COUNT", "SLURM_JOB_NODELIST") if key in os.environ}
    lines = [f"host {platform.node()} | python {platform.python_version()} | sslam {__version__} | "
             f"code {fingerprint or 'untracked'}"]
    lines.append("slurm " + (" ".join(f"{k.removeprefix('SLURM_').lower()}={v}" for k, v in slurm.items())
                             if slurm else "none"))
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    lines.append(f"torch {torch.__version__} | cuda build {torch.version.cuda or 'none'} | cudnn {cudnn or 'none'} | "
                 f"driver {driver_version() or 'none'} | CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}")
    if _cuda_works():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            lines.append(f"gpu {index}: {properties.name}, {properties.total_memory / 2**30:.1f} GiB")
    else:
        lines.append("gpu none")
    lines.append(f"device {device if device is not None else 'n/a'} | world size {world_size} | "
                 f"threads {torch.get_num_threads()}")
    return lines
