"""Tiny pretraining fixtures: an HDF5 shard in the contract layout and a study YAML with a tiny model."""
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from sslam.data.shards import front_end_json
from sslam.audio.config import FrontEndConfig

REPO = Path(__file__).resolve().parents[2]
NUM_FRAMES, NUM_BINS = 64, 32  # 4 × 2 patches of 16: a handful of tokens keeps every step cheap


def write_tiny_shard(path: Path, num_clips: int = 16, seed: int = 0) -> Path:
    """Raw log-mel with learnable structure: each clip is one of four smooth templates, shifted in time,
    plus a little noise (so the student can predict masked patches from visible ones)."""
    rng = np.random.default_rng(seed)
    time_axis, freq_axis = np.arange(NUM_FRAMES)[:, None], np.arange(NUM_BINS)[None, :]
    templates = [np.sin(2 * np.pi * (time_axis / period + freq_axis / (3 * period)))
                 for period in (8.0, 13.0, 21.0, 34.0)]
    clips = np.stack([
        -5.0 + 3.0 * np.roll(templates[i % 4], rng.integers(NUM_FRAMES), axis=0)
        + 0.1 * rng.standard_normal((NUM_FRAMES, NUM_BINS))
        for i in range(num_clips)]).astype(np.float16)
    as64 = clips.astype(np.float64)
    string = h5py.string_dtype()
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as shard:
        shard.create_dataset("fbank", data=clips, chunks=(1, NUM_FRAMES, NUM_BINS))
        shard.create_dataset("num_frames", data=np.full(num_clips, NUM_FRAMES, dtype=np.int32))
        shard.create_dataset("clip_id", data=[f"clip{i:03d}" for i in range(num_clips)], dtype=string)
        shard.create_dataset("split", data=["unlabeled"] * num_clips, dtype=string)
        shard.create_dataset("fold", data=np.zeros(num_clips, dtype=np.int16))
        shard.create_dataset("labels", data=np.zeros((num_clips, 0), dtype=np.uint8))
        shard.create_group("extra")
        # The settings a real build records: pretraining refuses shards whose front end or length differ.
        shard.attrs.update({"front_end": front_end_json(FrontEndConfig(num_mel_bins=NUM_BINS)),
                            "target_length": NUM_FRAMES, "classes": json.dumps([]),
                            "shard_index": 0, "num_shards": 1, "stat_sum": as64.sum(),
                            "stat_sumsq": np.square(as64).sum(), "stat_count": as64.size})
        shard.attrs["complete"] = True
    return path


def tiny_study(tmp_path: Path, stage1: dict | None = None, stage2: dict | None = None) -> Path:
    """A study YAML whose cache lives at the default location <results>/cache/tiny/shard-000-of-001.h5."""
    results = tmp_path / "results"
    write_tiny_shard(results / "cache" / "tiny" / "shard-000-of-001.h5")
    common = {"batch_size": 4, "lr": 2e-3, "warmup_steps": 2, "log_every": 1, "num_workers": 0,
              "ema_anneal_steps": 20}
    config = {
        "study": {"name": "tiny", "results": str(results), "pretrain_dataset": "tiny"},
        "front_end": {"num_mel_bins": NUM_BINS},
        "datasets": {"tiny": {"adapter": "fairseq", "shards": 1, "norm_mean": None, "norm_std": None,
                              "target_length": NUM_FRAMES}},
        "model": {"encoder": {"embed_dim": 32, "depth": 2, "num_heads": 2, "num_mel_bins": NUM_BINS,
                              "max_time_patches": 8},
                  "decoder": {"depth": 1, "groups": 4}},
        "objective": {"clones_stage1": 2, "clones_stage2": 2},
        "pretrain": {"stage1": {**common, "steps": 8, "checkpoint_every": 4, **(stage1 or {})},
                     "stage2": {**common, "steps": 4, "checkpoint_every": 2, **(stage2 or {})}},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def cli_env() -> dict:
    """One thread per process (bit-exact comparisons, a shared 2-core machine) and the repo importable."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def sslam_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sslam.cli", *args]


def run_sslam(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(sslam_command(*args), env=cli_env(), capture_output=True, text=True,
                            timeout=timeout, cwd=REPO)
    assert result.returncode == 0, f"sslam {' '.join(args)} failed:\n{result.stderr[-3000:]}"
    return result


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def study(tmp_path):
    return tiny_study(tmp_path)
