"""sslam.runtime.jobs: the one metrics log (mirrored to the run record, put back as a state recorded it) and the
job harness (banner, stop signals, run record, exit code 75 for a job stopped to be resumed)."""
from __future__ import annotations

import json
import logging
import os
import signal

import pytest
import torch

from sslam.runtime.jobs import Job, MetricsLog
from sslam.runtime.snapshots import PREEMPTED_EXIT_CODE, Preempted
from sslam.runtime.tracking import PENDING_NAME


class RecordingTracker:
    def __init__(self):
        self.calls = []

    def log_metrics(self, metrics, step=None):
        self.calls.append((step, metrics))


def test_the_metrics_log_mirrors_to_the_run_record_and_is_put_back_for_a_resume(tmp_path):
    tracker = RecordingTracker()
    log = MetricsLog(tmp_path / "metrics.jsonl", tracker)
    for step in (1, 2, 3):
        log.write({"step": step, "loss": torch.tensor(float(step)), "lr": 0.1}, mirror=step != 2)
    log.write({"step": 4, "round": "fold1", "value": float("nan")})
    with (tmp_path / "metrics.jsonl").open("a") as stream:
        stream.write('{"step": 5, "lo')  # a line cut short by a kill
    assert [json.loads(line)["step"] for line in log.lines()] == [1, 2, 3, 4]
    assert tracker.calls[:2] == [(1, {"loss": 1.0, "lr": 0.1}), (3, {"loss": 3.0, "lr": 0.1})]
    assert tracker.calls[2] == (4, {"value": "nan"})       # NaN as text in the log; the run record drops it
    log.restore(log.lines(), up_to_step=2)
    assert [json.loads(line)["step"] for line in log.lines()] == [1, 2]
    log.restore([])
    assert log.lines() == []


def test_a_job_stopped_at_a_step_boundary_exits_75_and_its_run_ends_killed(tmp_path, caplog):
    tracking = tmp_path / "tracking.json"
    tracking.write_text(json.dumps({"uri": "sqlite:///mlflow.db", "deferred": True}))
    with caplog.at_level(logging.INFO, logger="sslam.runtime.jobs"):
        with Job(tmp_path / "job", "sslam.runtime.jobs", "cpu", run_name="r", job="evaluate", tags={"seed": 1},
                 tracking=tracking) as job:
            os.kill(os.getpid(), signal.SIGUSR1)              # what SLURM sends before the time limit
            assert job.stop.requested and job.stop.received == "SIGUSR1"
            job.metrics.write({"step": 1, "loss": 0.5})
            raise Preempted("stopped after update 1")
    assert job.exit_code == PREEMPTED_EXIT_CODE
    assert "exit 75" in caplog.text and "code " in caplog.text   # the stop line, and the banner's code line
    (run,) = json.loads((tmp_path / "job" / PENDING_NAME).read_text())["runs"]
    assert run["status"] == "KILLED" and run["tags"]["job"] == "evaluate" and run["tags"]["code"] == job.fingerprint
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # the scheduler's signal is the process's again


def test_a_job_that_fails_ends_its_run_failed_and_raises(tmp_path):
    tracking = tmp_path / "tracking.json"
    tracking.write_text(json.dumps({"uri": "sqlite:///mlflow.db", "deferred": True}))
    with pytest.raises(ValueError):
        with Job(tmp_path / "job", "sslam.runtime.jobs", "cpu", run_name="r", job="pretrain", tracking=tracking):
            raise ValueError("science went wrong")
    (run,) = json.loads((tmp_path / "job" / PENDING_NAME).read_text())["runs"]
    assert run["status"] == "FAILED"


def test_other_ranks_keep_no_record(tmp_path):
    with Job(tmp_path / "job", "sslam.runtime.jobs", "cpu", run_name="r", job="pretrain", main=False) as job:
        assert job.tracker is None and job.metrics is None
    assert not (tmp_path / "job").exists()


def test_a_job_that_starts_before_the_store_is_set_up_keeps_its_run_record(tmp_path):
    """The workflow names tracking.json as a parameter, not an input: a job may start before `sslam track init` has
    written it; its record then waits in its folder for `sslam track replay` (docs/tracking.md)."""
    with Job(tmp_path / "job", "sslam.runtime.jobs", "cpu", run_name="r", job="evaluate",
             tracking=tmp_path / "mlflow" / "tracking.json") as job:
        job.metrics.write({"step": 1, "map": 0.5})
    (run,) = json.loads((tmp_path / "job" / PENDING_NAME).read_text())["runs"]
    assert run["status"] == "FINISHED" and run["metrics"][0][:2] == ["map", 0.5]
