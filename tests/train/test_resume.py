"""Exact resume of `sslam pretrain`: after SIGKILL, and after SIGUSR1 / SIGTERM (the stop signals of SLURM), a
resumed run ends bit-identical to an uninterrupted one; `--resume` discards a state of another run."""
import re
import signal
import subprocess
import time

import pytest
import torch

from sslam.cli import main
from sslam.runtime.snapshots import PREEMPTED_EXIT_CODE
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


def signal_after_progress(command: list[str], stop: signal.Signals, after_step: int, env: dict | None = None,
                          timeout: float = 120) -> tuple[int, str, float, int]:
    """Run `command`, send `stop` once a progress line shows a step >= `after_step`; returns (exit code,
    stderr, seconds from the signal to the exit, the step the line showed)."""
    env = dict(env or cli_env(), SSLAM_PROGRESS_SECONDS="0")  # a progress line at every step
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    seen, lines, deadline = None, [], time.monotonic() + timeout
    try:
        for line in process.stderr:
            lines.append(line)
            match = re.search(r"\] step (\d+)/", line)
            if match and int(match.group(1)) >= after_step:
                seen = int(match.group(1))
                break
            if time.monotonic() > deadline:
                break
        assert seen is not None, "no progress line reached step %d:\n%s" % (after_step, "".join(lines)[-3000:])
        signalled = time.monotonic()
        process.send_signal(stop)
        _, rest = process.communicate(timeout=60)
        return process.returncode, "".join(lines) + rest, time.monotonic() - signalled, seen
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def assert_same_run(reference, resumed_dir):
    expected = torch.load(reference / "checkpoint.pt", weights_only=True)
    resumed = torch.load(resumed_dir / "checkpoint.pt", weights_only=True)
    assert resumed["step"] == expected["step"] == STEPS
    for part in ("student", "decoder", "teacher"):
        assert expected[part].keys() == resumed[part].keys()
        for name, tensor in expected[part].items():
            assert torch.equal(tensor, resumed[part][name]), f"{part}.{name} differs after resume"
    expected_state = torch.load(reference / "state" / "last.pt", weights_only=True)
    resumed_state = torch.load(resumed_dir / "state" / "last.pt", weights_only=True)
    for index, moments in expected_state["optimizer"]["state"].items():
        assert torch.equal(moments["exp_avg_sq"], resumed_state["optimizer"]["state"][index]["exp_avg_sq"])
    for generator in ("masks_and_mixing", "decoder_noise"):  # every generator the objective owns
        assert torch.equal(expected_state["rng"][0]["objective"][generator],
                           resumed_state["rng"][0]["objective"][generator])

    # The log is continuous: lines after the snapshot were dropped and re-logged, with the same losses.
    def losses(run):
        return [(m["step"], m["loss"], m["local_unmixed"]) for m in read_metrics(run)]

    assert losses(resumed_dir) == losses(reference)


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path, caplog):
    config = tiny_study(tmp_path, stage1={"steps": STEPS, "checkpoint_every": EVERY, "log_every": 10})
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    run_sslam("pretrain", "--config", str(config), "--stage", "1", "--out", str(reference))

    args = ["pretrain", "--config", str(config), "--stage", "1", "--out", str(interrupted)]
    _kill_after_first_snapshot(args, interrupted / "state" / "last.pt")
    killed_at = torch.load(interrupted / "state" / "last.pt", weights_only=True)["step"]
    assert 0 < killed_at < STEPS and not (interrupted / "checkpoint.pt").exists()

    # Without --resume the run refuses to overwrite the state; with it, it continues.
    assert main(args) == 1
    run_sslam(*args, "--resume")
    assert_same_run(reference, interrupted)

    # A state of other settings is not resumed: discarded with one line, the run starts fresh.
    assert main([*args, "--resume", "--steps", "20"]) == 0
    discarded = [r.getMessage() for r in caplog.records if "discarding" in r.getMessage()]
    assert len(discarded) == 1 and f"pretrain.steps {STEPS} -> 20" in discarded[0]
    assert [m["step"] for m in read_metrics(interrupted)] == [10, 20]
    assert torch.load(interrupted / "checkpoint.pt", weights_only=True)["step"] == 20


@pytest.mark.slow
def test_stop_signals_write_the_state_exit_75_and_resume_bit_identical(tmp_path):
    config = tiny_study(tmp_path, stage1={"steps": STEPS, "checkpoint_every": 1000, "log_every": 10})
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    run_sslam("pretrain", "--config", str(config), "--stage", "1", "--out", str(reference))
    command = sslam_command("pretrain", "--config", str(config), "--stage", "1", "--out", str(interrupted),
                            "--resume", "--no-progress")

    stopped_at = 0
    # SLURM's warning signal before the time limit, then a preemption (SIGTERM) of the resumed attempt.
    for stop, after in ((signal.SIGUSR1, 5), (signal.SIGTERM, 50)):
        code, log, seconds, seen = signal_after_progress(command, stop, after)
        assert code == PREEMPTED_EXIT_CODE, log[-3000:]
        state = torch.load(interrupted / "state" / "last.pt", weights_only=True)
        # The state is the one of the update in progress when the signal came (checkpoint_every is 1000).
        assert seen <= state["step"] < STEPS and state["step"] > stopped_at
        assert f"received {stop.name}" in log and f"stopped after update {state['step']}" in log
        assert seconds < 30 and not (interrupted / "checkpoint.pt").exists()
        stopped_at = state["step"]
    assert "resuming" in log  # the second attempt continued from the first one's state
    result = subprocess.run(command, env=cli_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming {interrupted} at update {stopped_at}" in result.stderr
    assert_same_run(reference, interrupted)


@pytest.mark.slow
def test_resume_discards_the_state_of_another_code_fingerprint(tmp_path):
    config = tiny_study(tmp_path, stage1={"steps": 6, "checkpoint_every": 3, "log_every": 1})
    out = tmp_path / "run"
    args = ("pretrain", "--config", str(config), "--stage", "1", "--out", str(out), "--resume")
    env = dict(cli_env(), SSLAM_FINGERPRINT="aaaa")
    subprocess.run(sslam_command(*args), env=env, cwd=REPO, check=True, capture_output=True, timeout=120)
    env["SSLAM_FINGERPRINT"] = "bbbb"
    result = subprocess.run(sslam_command(*args), env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "code fingerprint aaaa -> bbbb" in result.stderr and "starting fresh" in result.stderr
    assert "resuming" not in result.stderr
    assert [m["step"] for m in read_metrics(out)] == list(range(1, 7))
    assert torch.load(out / "state" / "last.pt", weights_only=True)["job"]["fingerprint"] == "bbbb"


def test_a_finished_run_rerun_without_its_outputs_writes_them_again(tmp_path):
    """What Snakemake does when a finished pretraining job is re-scheduled: it deletes checkpoint.pt and
    metrics.jsonl, and `--resume` finds the final snapshot; both outputs come back, the log whole."""
    config = tiny_study(tmp_path, stage1={"steps": 20, "checkpoint_every": 10, "log_every": 5})
    out = tmp_path / "run"
    args = ["pretrain", "--config", str(config), "--stage", "1", "--out", str(out), "--resume"]
    run_sslam(*args)
    log, weights = (out / "metrics.jsonl").read_text(), torch.load(out / "checkpoint.pt", weights_only=True)
    (out / "metrics.jsonl").unlink()
    (out / "checkpoint.pt").unlink()
    run_sslam(*args)
    assert (out / "metrics.jsonl").read_text() == log
    again = torch.load(out / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(tensor, again["student"][name]) for name, tensor in weights["student"].items())
