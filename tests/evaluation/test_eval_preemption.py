"""`sslam probe` / `sslam finetune` as SLURM runs them: SIGUSR1 (time limit ahead) or SIGTERM (preemption)
mid-run writes OUT/state/last.pt and exits 75; the same command then resumes, and after two interruptions the
final metrics.json, predictions.npz and metrics.jsonl equal those of an uninterrupted run."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sslam.runtime.snapshots import PREEMPTED_EXIT_CODE

REPO = Path(__file__).resolve().parents[2]
BOOKKEEPING = ("wall_time_s", "resumed")  # the only keys an interrupted run may differ in


def environment(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def sslam(*args: str) -> list[str]:
    return [sys.executable, "-m", "sslam.cli", *args]


def run_to_the_end(command: list[str], **env) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=environment(**env), cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def signal_at(command: list[str], pattern: str, stop: signal.Signals) -> tuple[int, str, float]:
    """Run `command` with a progress line per step, send `stop` at the first stderr line matching `pattern`;
    (exit code, stderr, seconds from the signal to the exit)."""
    process = subprocess.Popen(command, env=environment(SSLAM_PROGRESS_SECONDS="0"), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in process.stderr:
            lines.append(line)
            if re.search(pattern, line):
                break
        else:
            pytest.fail(f"no line matched {pattern!r}:\n{''.join(lines)[-3000:]}")
        signalled = time.monotonic()
        process.send_signal(stop)
        _, rest = process.communicate(timeout=60)
        return process.returncode, "".join(lines) + rest, time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def results(out: Path) -> tuple[dict, dict, list]:
    metrics = json.loads((out / "metrics.json").read_text())
    with np.load(out / metrics["predictions"], allow_pickle=False) as stored:
        predictions = {name: stored[name] for name in stored.files}
    log = (out / "metrics.jsonl").read_text().splitlines()
    return {k: v for k, v in metrics.items() if k not in BOOKKEEPING}, predictions, log


def assert_same_results(reference: Path, resumed: Path) -> None:
    expected, resumed_result = results(reference), results(resumed)
    assert resumed_result[0] == expected[0]          # every score, bit for bit (JSON floats round-trip)
    assert resumed_result[1].keys() == expected[1].keys()
    for name, array in expected[1].items():
        np.testing.assert_array_equal(resumed_result[1][name], array, err_msg=name)
    assert resumed_result[2] == expected[2]          # the log too: one line per step, none twice


@pytest.mark.slow
def test_probe_over_folds_interrupted_twice_ends_identical(write_config, tmp_path):
    config = write_config({"mono": {"dataset": "mono", "task": "multiclass", "metric": "accuracy",
                                    "protocol": "folds", "num_workers": 0,
                                    "linear": {"steps": 40, "batch_size": 8, "feature_norm": "batch"}}})
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    common = ("probe", "--config", str(config), "--benchmark", "mono", "--random-init", "--seed", "3")
    run_to_the_end(sslam(*common, "--out", str(reference)))
    command = sslam(*common, "--out", str(interrupted), "--no-progress")

    code, log, seconds = signal_at(command, r"\[linear fold2\] step 5/", signal.SIGUSR1)
    assert code == PREEMPTED_EXIT_CODE, log[-3000:]
    assert "received SIGUSR1" in log and seconds < 30 and not (interrupted / "metrics.json").exists()
    state = torch.load(interrupted / "state" / "last.pt", weights_only=True)  # plain data only
    assert state["round_index"] == 1 and [r["round"] for r in state["finished"]] == ["fold1"]
    assert 5 <= state["round_state"]["fit"]["step"] < 40
    assert state["job"]["settings"]["benchmark"] == "mono" and state["job"]["settings"]["seed"] == 3

    code, log, _ = signal_at(command, r"\[linear fold3\] step 3/", signal.SIGTERM)
    assert code == PREEMPTED_EXIT_CODE, log[-3000:]
    assert "resuming" in log and "1 round(s) done" in log

    final = run_to_the_end(command)
    assert "2 round(s) done, round 3" in final.stderr
    assert_same_results(reference, interrupted)
    assert json.loads((interrupted / "metrics.json").read_text())["resumed"] == 2
    assert not (interrupted / "state").exists()  # the result is final: the state is gone


@pytest.mark.slow
def test_finetune_with_model_selection_interrupted_twice_ends_identical(write_config, tmp_path):
    finetune = {"steps": 30, "batch_size": 8, "selection": "best_on_eval", "eval_interval_steps": 4,
                "checkpoint_every": 7}
    config = write_config({"poly": {"dataset": "poly", "eval_split": "test", "num_workers": 0,
                                    "finetune": finetune}})
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    common = ("finetune", "--config", str(config), "--benchmark", "poly", "--random-init")
    run_to_the_end(sslam(*common, "--out", str(reference)))
    command = sslam(*common, "--out", str(interrupted))
    for pattern, stop in ((r"\] step 6/", signal.SIGUSR1), (r"\] step 17/", signal.SIGTERM)):
        code, log, seconds = signal_at(command, pattern, stop)
        assert code == PREEMPTED_EXIT_CODE and f"received {stop.name}" in log, log[-3000:]
        assert f"exit {PREEMPTED_EXIT_CODE}" in log and seconds < 30
    selection = torch.load(interrupted / "state" / "last.pt", weights_only=True)["round_state"]["selection"]
    # the points each selection keeps so far are part of the state (best_on_eval: the best test score so far)
    assert selection["best_on_eval"]["step"] in (4, 8, 12, 16) and selection["last"]["step"] == 16
    run_to_the_end(command)
    assert_same_results(reference, interrupted)


@pytest.mark.slow
def test_a_state_of_another_code_version_is_discarded(write_config, tmp_path):
    config = write_config({"poly": dict(dataset="poly", eval_split="test", num_workers=0,
                                        linear={"steps": 40, "batch_size": 8})})
    out = tmp_path / "eval"
    command = sslam("probe", "--config", str(config), "--benchmark", "poly", "--random-init", "--out", str(out))
    code, log, _ = signal_at(command, r"\] step 4/", signal.SIGUSR1)
    assert code == PREEMPTED_EXIT_CODE, log[-3000:]
    fingerprint = torch.load(out / "state" / "last.pt", weights_only=True)["job"]["fingerprint"]
    result = run_to_the_end(command, SSLAM_FINGERPRINT="0123456789abcdef")
    discarded = [line for line in result.stderr.splitlines() if "discarding" in line]
    assert len(discarded) == 1 and f"code fingerprint {fingerprint} -> 0123456789abcdef" in discarded[0]
    assert "resuming" not in result.stderr
    assert json.loads((out / "metrics.json").read_text())["resumed"] == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records if "loss" in record] == list(range(1, 41))  # nothing twice
