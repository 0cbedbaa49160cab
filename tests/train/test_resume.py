"""Exact resume: a `sslam pretrain` killed with SIGKILL and resumed ends bit-identical to an uninterrupted run."""
import signal
import subprocess
import time

import pytest
import torch

from sslam.cli import main
from train_helpers import cli_env, read_metrics, run_sslam, sslam_command, tiny_study, REPO

STEPS, EVERY = 120, 30


def _kill_after_first_snapshot(args: list[str], snapshot, timeout: float = 120) -> None:
    process = subprocess.Popen(sslam_command(*args), env=cli_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not snapshot.exists():
            if process.poll() is not None:
                pytest.fail(f"the run ended before its first snapshot:\n{process.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no snapshot within the time limit")
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path, capsys):
    config = tiny_study(tmp_path, stage1={"steps": STEPS, "checkpoint_every": EVERY, "log_every": 10})
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    run_sslam("pretrain", "--config", str(config), "--stage", "1", "--out", str(reference))

    args = ["pretrain", "--config", str(config), "--stage", "1", "--out", str(interrupted)]
    _kill_after_first_snapshot(args, interrupted / "state" / "last.pt")
    killed_at = torch.load(interrupted / "state" / "last.pt", weights_only=False)["step"]
    assert 0 < killed_at < STEPS and not (interrupted / "checkpoint.pt").exists()

    # Without --resume the run refuses to overwrite the state; with it, it continues.
    assert main(args) == 1 and "--resume" in capsys.readouterr().err
    run_sslam(*args, "--resume")

    expected = torch.load(reference / "checkpoint.pt", weights_only=False)
    resumed = torch.load(interrupted / "checkpoint.pt", weights_only=False)
    assert resumed["step"] == expected["step"] == STEPS
    for part in ("student", "decoder", "teacher"):
        assert expected[part].keys() == resumed[part].keys()
        for name, tensor in expected[part].items():
            assert torch.equal(tensor, resumed[part][name]), f"{part}.{name} differs after resume"
    expected_state = torch.load(reference / "state" / "last.pt", weights_only=False)
    resumed_state = torch.load(interrupted / "state" / "last.pt", weights_only=False)
    for index, moments in expected_state["optimizer"]["state"].items():
        assert torch.equal(moments["exp_avg_sq"], resumed_state["optimizer"]["state"][index]["exp_avg_sq"])
    for generator in ("masks_and_mixing", "decoder_noise"):  # every generator the objective owns
        assert torch.equal(expected_state["rng"][0]["objective"][generator],
                           resumed_state["rng"][0]["objective"][generator])

    # The log is continuous: lines after the snapshot were dropped and re-logged, with the same losses.
    def losses(run):
        return [(m["step"], m["loss"]) for m in read_metrics(run)]

    assert losses(interrupted) == losses(reference)
    # A changed schedule cannot continue exactly: refused, naming what changed.
    assert main([*args, "--resume", "--steps", str(STEPS + 10)]) == 1
    assert f"steps {STEPS} -> {STEPS + 10}" in capsys.readouterr().err
    assert [m["step"] for m in read_metrics(interrupted)] == list(range(10, STEPS + 1, 10))
