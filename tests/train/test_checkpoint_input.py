"""Pretraining checkpoints record the input settings they were trained with, and extraction reuses them."""
import numpy as np
import pytest

from sslam.cli import main as cli_main
from sslam.model.checkpoints.read import read_checkpoint

from train_helpers import NUM_FRAMES, tiny_study


def test_pretraining_checkpoint_stores_norm_stats_and_target_length(tmp_path):
    import h5py

    from sslam.embeddings.api import load_encoder

    config = tiny_study(tmp_path)
    out = tmp_path / "stage1"
    assert cli_main(["pretrain", "--config", str(config), "--stage", "1", "--steps", "2", "--out", str(out),
                     "--device", "cpu"]) == 0
    with h5py.File(tmp_path / "results" / "cache" / "tiny" / "shard-000-of-001.h5") as shard:
        count, total, squares = (float(shard.attrs[k]) for k in ("stat_count", "stat_sum", "stat_sumsq"))
    mean = total / count
    stored = read_checkpoint(out / "checkpoint.pt").meta["input"]
    assert stored["target_length"] == NUM_FRAMES
    assert stored["norm_mean"] == pytest.approx(mean)  # norm_mean: null in the study = computed from the cache
    assert stored["norm_std"] == pytest.approx(np.sqrt(squares / count - mean**2), rel=1e-4)
    embedder = load_encoder(out / "checkpoint.pt", device="cpu")
    assert embedder.window == NUM_FRAMES and embedder.settings.norm_mean == stored["norm_mean"]
