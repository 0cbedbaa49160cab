"""`sslam pretrain` end to end on a tiny cache: Stage 1 then Stage 2 (loss decreases), and 2-rank DDP."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sslam.model.checkpoints.read import read_checkpoint

from train_helpers import REPO, cli_env, read_metrics, run_sslam, tiny_study


def _mean_loss(records):
    return sum(r["loss"] for r in records) / len(records)


@pytest.mark.slow
def test_stage1_then_stage2_losses_decrease_and_stage2_starts_from_stage1(tmp_path):
    config = tiny_study(tmp_path, stage1={"steps": 40, "log_every": 1}, stage2={"steps": 24, "log_every": 1})
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    run_sslam("pretrain", "--config", str(config), "--stage", "1", "--out", str(stage1))
    records = read_metrics(stage1)
    assert [r["step"] for r in records] == list(range(1, 41))
    assert {"local_unmixed", "global_unmixed", "lr", "ema_decay", "grad_norm", "clips_per_s"} <= set(records[0])
    assert _mean_loss(records[-5:]) < _mean_loss(records[:5])

    first = read_checkpoint(stage1 / "checkpoint.pt")
    assert first.meta["stage"] == 1 and first.meta["step"] == 40 and first.teacher is not None

    run_sslam("pretrain", "--config", str(config), "--stage", "2", "--variant", "SSLAM",
              "--init", str(stage1 / "checkpoint.pt"), "--out", str(stage2))
    records = read_metrics(stage2)
    assert {"local_mixed", "global_mixed", "srl_local"} <= set(records[0])
    assert records[0]["lr"] == 0.0  # fresh schedule: warm-up restarts from 0
    assert records[0]["ema_decay"] == pytest.approx(0.9998 + (0.99999 - 0.9998) / 20)  # EMA counter restarts
    assert _mean_loss(records[-5:]) < _mean_loss(records[:5])
    second = read_checkpoint(stage2 / "checkpoint.pt")
    assert second.meta["stage"] == 2 and second.meta["variant"] == "SSLAM" and second.meta["step"] == 24
    # Stage 2 moved the student away from Stage 1's weights, which it started from (not from scratch):
    start = first.student["blocks.1.mlp.fc2.weight"]
    end = second.student["blocks.1.mlp.fc2.weight"]
    assert not torch.equal(start, end)
    assert (end - start).norm() < 0.5 * start.norm()


@pytest.mark.slow
def test_ddp_two_ranks_gloo(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this python")
    config = tiny_study(tmp_path, stage1={"steps": 3, "checkpoint_every": 2, "batch_size": 2})
    out = tmp_path / "ddp"
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node=2", "-m", "sslam.cli", "pretrain", "--config", str(config),
         "--stage", "1", "--out", str(out), "--device", "cpu"],
        env=cli_env(), cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    snapshot = torch.load(out / "state" / "last.pt", weights_only=True)
    assert snapshot["step"] == 3 and snapshot["data"]["world_size"] == 2
    assert len(snapshot["rng"]) == 2  # each rank's random state, for an exact resume
    for generator in ("masks_and_mixing", "decoder_noise"):
        assert not torch.equal(snapshot["rng"][0]["objective"][generator], snapshot["rng"][1]["objective"][generator])
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]  # written once (rank 0), not per rank
    assert read_checkpoint(out / "checkpoint.pt").meta["step"] == 3
