"""sslam.runtime.device and `sslam doctor` on this CPU-only machine: CUDA asked for but missing is one clear line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sslam.runtime.device import DeviceError, banner, resolve_device

REPO = Path(__file__).resolve().parents[2]
needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")


@needs_no_gpu
def test_cuda_without_a_gpu_fails_at_once_naming_the_build():
    with pytest.raises(DeviceError, match=f"CUDA requested but unavailable: torch .* "
                                          f"{'built for CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU-only'}"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu" and resolve_device("cpu").type == "cpu"
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu")


def test_the_banner_names_host_slurm_versions_and_code(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    lines = "\n".join(banner("abc123", world_size=4, device="cpu"))
    assert "code abc123" in lines and "job_id=4242" in lines and "restart_count=2" in lines
    assert f"torch {torch.__version__}" in lines and "world size 4" in lines


@needs_no_gpu
def test_doctor_says_what_is_wrong():
    result = subprocess.run([sys.executable, "-m", "sslam.cli", "doctor"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1
    assert "[FAIL] CUDA: unavailable" in result.stdout and "Traceback" not in result.stdout + result.stderr
