"""Tracking never costs a result (issue 10.5) and the study's runs are linked and closed (issue 12.4).

A locked SQLite store (an exclusive lock held by another process mid-job) and an unreachable server
(http://127.0.0.1:9: nothing listens) both end with rc 0 and metrics.json; what could not be logged is kept
in the job folder and `sslam track replay` puts it in MLflow once the store answers. The lock of the issue
lasted 100 s; here LOCK_SECONDS with a patience scaled down in proportion keeps the mechanism and the test short.
"""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

import sslam.evaluation.run as evaluation_run  # noqa: E402
from sslam.cli import main  # noqa: E402
from sslam.runtime.mlflow_tracking import TrackingStore, job_tracker  # noqa: E402
from sslam.runtime.tracking import CHECKPOINT_TAG, PENDING_NAME, PRETRAIN_RUN_TAG, resolve_tracking  # noqa: E402

UNREACHABLE = "http://127.0.0.1:9"
LOCK_SECONDS = 6.0
LOCKER = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
connection.execute("ROLLBACK")
"""


def client_of(tracking_json):
    return MlflowClient(tracking_uri=resolve_tracking(tracking_json)["uri"])


def runs_named(tracking_json, name):
    info = json.loads(Path(tracking_json).read_text())
    return [run for run in client_of(tracking_json).search_runs([info["experiment_id"]]) if run.info.run_name == name]


def probe(study, out, tracking, *extra):
    return main(["probe", "--config", str(study), "--benchmark", "poly", "--random-init", "--out", str(out),
                 "--device", "cpu", "--tracking", str(tracking), "--seed", "0", *extra])


def warnings_in(err):
    return [line for line in err.splitlines() if "warning" in line.lower()]


def unreachable_tracking(folder):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tracking.json"
    path.write_text(json.dumps({"uri": UNREACHABLE, "experiment_id": "1", "parent_run_id": "p", "initialised": True}))
    return path


# ------------------------------------------------------------------------------------------ where the store is
def test_tracking_json_names_the_store_relative_to_itself_and_survives_a_move(store, tmp_path):
    info = json.loads(store.read_text())
    assert info["uri"] == "sqlite:///mlflow.db"
    moved = Path(shutil.move(str(store.parent), tmp_path / "elsewhere" / "mlflow")) / "tracking.json"
    assert resolve_tracking(moved)["uri"] == f"sqlite:///{moved.parent.resolve()}/mlflow.db"
    with job_tracker(moved, "after-the-move", tags={"job": "x"}) as tracker:
        tracker.log_metrics({"a": 1.0}, step=1)
    assert tracker.logged and len(runs_named(moved, "after-the-move")) == 1


def test_a_relative_store_uri_lives_beside_tracking_json_whatever_the_working_folder(tmp_path, monkeypatch):
    from sslam.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results" / "mlflow" / "tracking.json"
    assert main(["track", "init", "--uri", "sqlite:///mlflow.db", "--experiment", "e", "--study", "s",
                 "--out", str(out)]) == 0
    assert (out.parent / "mlflow.db").is_file() and not (tmp_path / "mlflow.db").exists()
    assert json.loads(out.read_text())["uri"] == "sqlite:///mlflow.db"
    with job_tracker(out, "a-run", tags={"job": "x"}) as tracker:
        tracker.log_artifact(out)
    assert tracker.logged and not (tmp_path / "artifacts").exists()   # artifacts stay beside the store too
    assert any((out.parent / "artifacts").rglob("tracking.json"))


def test_remote_uris_stay_as_given(tmp_path, monkeypatch):
    monkeypatch.setattr("sslam.runtime.mlflow_tracking.init_study", lambda uri, *a, **k: {"uri": uri, "experiment_id": "1",
                                                                          "parent_run_id": "p", "initialised": True})
    assert main(["track", "init", "--uri", "http://tracking.example:5000", "--experiment", "e", "--study", "s",
                 "--out", str(tmp_path / "t.json")]) == 0
    assert json.loads((tmp_path / "t.json").read_text())["uri"] == "http://tracking.example:5000"


# ------------------------------------------------------------------------------------------ an unreachable server
def test_an_unreachable_server_is_given_up_within_ten_seconds_with_one_warning(tmp_path, capsys):
    tracking = unreachable_tracking(tmp_path / "t")
    started = time.monotonic()
    with job_tracker(tracking, "job", tags={"job": "pretrain"}, params={"lr": 1}, job_dir=tmp_path) as tracker:
        for step in range(50):
            tracker.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
            tracker.flush()
    elapsed = time.monotonic() - started
    assert elapsed <= 10.5, elapsed            # the default patience: 10 s of failed waiting per job
    assert len(warnings_in(capsys.readouterr().err)) == 1
    (pending,) = json.loads((tmp_path / PENDING_NAME).read_text())["runs"]
    assert len(pending["metrics"]) == 50 and pending["status"] == "FINISHED" and not pending["created"]


def test_a_probe_against_an_unreachable_server_keeps_its_result_and_replays_later(study, store, tmp_path, capsys,
                                                                                   monkeypatch):
    monkeypatch.setenv("SSLAM_TRACKING_PATIENCE", "1")
    out = tmp_path / "eval"
    assert probe(study, out, unreachable_tracking(tmp_path / "dead")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(warnings_in(capsys.readouterr().err)) == 1 and (out / PENDING_NAME).is_file()
    # The store answers again (here: the study's own store): replay sends the run.
    assert main(["track", "replay", "--tracking", str(store), str(out)]) == 0
    assert not (out / PENDING_NAME).exists()
    (run,) = runs_named(store, "eval-random-init-poly-linear-seed0")
    assert run.info.status == "FINISHED" and run.data.metrics["map"] == pytest.approx(metrics["value"])
    assert run.data.tags["mlflow.parentRunId"] == json.loads(store.read_text())["parent_run_id"]
    assert run.data.params["dataset"] == "tiny_poly"
    client = client_of(store)
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["metrics.json"]
    assert main(["track", "replay", "--tracking", str(store), str(out)]) == 0     # nothing left: a no-op
    assert len(runs_named(store, "eval-random-init-poly-linear-seed0")) == 1


# ------------------------------------------------------------------------------------------ a locked store
def hold_lock_from_the_first_round(monkeypatch, database, seconds):
    """Mid-job: when the first training round starts, another process takes an exclusive lock on the store."""
    real_run_round = evaluation_run.run_round
    lockers = []

    def run_round_with_lock(*args, **kwargs):
        if not lockers:
            locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(database), str(seconds)],
                                      stdout=subprocess.PIPE, text=True)
            assert locker.stdout.readline().strip() == "locked"
            lockers.append(locker)
        return real_run_round(*args, **kwargs)

    monkeypatch.setattr(evaluation_run, "run_round", run_round_with_lock)
    return lockers


def test_a_store_locked_mid_job_keeps_the_result_and_replays_after(study, store, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SSLAM_TRACKING_PATIENCE", str(LOCK_SECONDS / 3))   # gives up while the lock holds
    lockers = hold_lock_from_the_first_round(monkeypatch, store.parent / "mlflow.db", LOCK_SECONDS)
    out = tmp_path / "eval"
    assert probe(study, out, store) == 0
    assert lockers and lockers[0].poll() is None                # the lock was still held when the job ended
    assert json.loads((out / "metrics.json").read_text())["benchmark"] == "poly"
    assert len(warnings_in(capsys.readouterr().err)) == 1 and (out / PENDING_NAME).is_file()
    lockers[0].wait(timeout=60)
    assert main(["track", "replay", "--tracking", str(store), str(out)]) == 0
    (run,) = runs_named(store, "eval-random-init-poly-linear-seed0")
    assert run.info.status == "FINISHED" and "map" in run.data.metrics


def test_a_short_lock_is_waited_out(study, store, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SSLAM_TRACKING_PATIENCE", str(LOCK_SECONDS * 2))
    lockers = hold_lock_from_the_first_round(monkeypatch, store.parent / "mlflow.db", LOCK_SECONDS / 2)
    out = tmp_path / "eval"
    assert probe(study, out, store) == 0
    lockers[0].wait(timeout=60)
    assert warnings_in(capsys.readouterr().err) == [] and not (out / PENDING_NAME).exists()
    (run,) = runs_named(store, "eval-random-init-poly-linear-seed0")
    assert run.info.status == "FINISHED"


def test_metrics_json_is_written_before_any_tracking_call(study, store, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    seen = []
    real_call = TrackingStore.call

    def watching_call(self, method, *args, **kwargs):
        seen.append((method, (out / "metrics.json").exists()))
        return real_call(self, method, *args, **kwargs)

    monkeypatch.setattr(TrackingStore, "call", watching_call)
    assert probe(study, out, store) == 0
    assert seen and all(written for _, written in seen), seen
    # Batched: one log_batch per kind of entity, never one request per metric.
    methods = [method for method, _ in seen]
    assert "log_metric" not in methods and "log_param" not in methods and methods.count("log_batch") <= 3


def test_a_live_job_goes_offline_mid_run_and_replays(store, tmp_path, capsys, monkeypatch):
    """Pretraining-style live tracking: the run exists, then the store locks; the rest is kept and replayed."""
    monkeypatch.setenv("SSLAM_TRACKING_PATIENCE", "1")
    with job_tracker(store, "live", tags={"job": "pretrain"}, params={"lr": 0.1}, job_dir=tmp_path) as tracker:
        tracker.log_metrics({"loss": 3.0}, step=1)
        assert tracker.flush()
        locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(store.parent / "mlflow.db"), "4"],
                                  stdout=subprocess.PIPE, text=True)
        assert locker.stdout.readline().strip() == "locked"
        tracker.log_metrics({"loss": 2.0}, step=2)
        assert not tracker.flush()
        tracker.log_metrics({"loss": 1.0}, step=3)
    assert len(warnings_in(capsys.readouterr().err)) == 1
    locker.wait(timeout=60)
    assert main(["track", "replay", "--tracking", str(store), str(tmp_path)]) == 0
    (run,) = runs_named(store, "live")
    history = client_of(store).get_metric_history(run.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 3.0), (2, 2.0), (3, 1.0)]
    assert run.info.status == "FINISHED"


# ------------------------------------------------------------------------------------------ the study's runs
def test_the_parent_run_ends_finished_with_config_and_commit(store, study, tmp_path):
    done = tmp_path / "finished.txt"
    assert main(["track", "finish", "--tracking", str(store), "--config", str(study), "--git-commit", "abc123",
                 "--done", str(done)]) == 0
    parent = client_of(store).get_run(json.loads(store.read_text())["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["mlflow.source.git.commit"] == "abc123"
    assert [a.path for a in client_of(store).list_artifacts(parent.info.run_id)] == ["study.yaml"]
    assert done.read_text().startswith("parent run ended")


def test_ending_the_parent_run_waits_for_the_store(store, study, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SSLAM_TRACKING_PATIENCE", "0.5")
    info = json.loads(store.read_text())
    dead = store.parent / "dead.json"
    dead.write_text(json.dumps({**info, "uri": UNREACHABLE}))
    assert main(["track", "finish", "--tracking", str(dead), "--config", str(study), "--git-commit", "abc"]) == 0
    assert len(warnings_in(capsys.readouterr().err)) == 1 and (store.parent / PENDING_NAME).is_file()
    assert main(["track", "replay", "--tracking", str(store), str(store.parent)]) == 0
    assert client_of(store).get_run(info["parent_run_id"]).info.status == "FINISHED"


def test_an_evaluation_run_names_its_pretraining_run(study, store, results, tmp_path):
    stage1 = results / "pretrain" / "stage1"
    if stage1.exists():
        shutil.rmtree(stage1)
    assert main(["pretrain", "--config", str(study), "--stage", "1", "--out", str(stage1), "--device", "cpu",
                 "--tracking", str(store), "--no-progress"]) == 0
    (pretraining,) = runs_named(store, "stage1")
    assert pretraining.data.tags[CHECKPOINT_TAG] == "pretrain/stage1/checkpoint.pt"
    assert "loss" in pretraining.data.metrics or pretraining.data.metrics
    out = tmp_path / "eval"
    assert main(["probe", "--config", str(study), "--benchmark", "poly", "--checkpoint",
                 str(stage1 / "checkpoint.pt"), "--out", str(out), "--device", "cpu", "--tracking", str(store),
                 "--variant", "stage1"]) == 0
    (evaluation,) = runs_named(store, "eval-stage1-poly-linear-seed0")
    assert evaluation.data.tags[PRETRAIN_RUN_TAG] == pretraining.info.run_id


def test_per_bin_and_per_fold_results_are_tracked():
    metrics = {"metric": "map", "value": 0.5, "wall_time_s": 3.0, "num_test": 12,
               "per_bin": {"1": {"value": 0.7, "clips": 5}, "2": {"value": None, "clips": 0}},
               "per_fold": [{"fold": 1, "value": 0.4}, {"fold": 2, "value": 0.6}]}
    assert evaluation_run.tracked_result(metrics) == {
        "map": 0.5, "wall_time_s": 3.0, "num_test": 12, "map/bin_1": 0.7, "map/bin_1/clips": 5,
        "map/bin_2/clips": 0, "map/fold_1": 0.4, "map/fold_2": 0.6}


def test_init_against_a_dead_store_lets_jobs_run_and_replay_initialises_it(study, initialised_store, tmp_path,
                                                                             monkeypatch, capsys):
    monkeypatch.setenv("SSLAM_TRACKING_PATIENCE", "0.5")
    tracking = tmp_path / "mlflow" / "tracking.json"
    assert main(["track", "init", "--uri", UNREACHABLE, "--experiment", "late", "--study", "late-study",
                 "--out", str(tracking)]) == 0
    assert json.loads(tracking.read_text())["initialised"] is False
    out = tmp_path / "eval"
    assert probe(study, out, tracking) == 0 and (out / PENDING_NAME).is_file()
    # The store comes back (a copy of the session's store stands in for it): replay creates experiment and parent.
    shutil.copy(initialised_store / "mlflow.db", tracking.parent / "mlflow.db")
    info = json.loads(tracking.read_text())
    tracking.write_text(json.dumps({**info, "uri": "sqlite:///mlflow.db"}))
    assert main(["track", "replay", "--tracking", str(tracking), str(out)]) == 0
    info = json.loads(tracking.read_text())
    assert info["initialised"] is True and info["parent_run_id"]
    (run,) = runs_named(tracking, "eval-random-init-poly-linear-seed0")
    assert run.data.tags["mlflow.parentRunId"] == info["parent_run_id"]


# ------------------------------------------------------------------------------------------ publishing once
def deferred_runs(store, folder, count):
    """`count` job folders, each keeping one finished run for `sslam track replay` (a deferred study)."""
    info = json.loads(store.read_text())
    store.write_text(json.dumps({**info, "deferred": True}))
    for index in range(count):
        with job_tracker(store, f"job-{index}", tags={"job": "evaluate"}, params={"i": index},
                         job_dir=folder / f"job{index}") as tracker:
            tracker.log_metrics({"map": index / count}, step=index)
    assert len(list(folder.rglob(PENDING_NAME))) == count


def child_runs(store):
    info = json.loads(store.read_text())
    return [run for run in client_of(store).search_runs([info["experiment_id"]]) if run.info.run_name.startswith("job-")]


def test_a_replay_killed_midway_then_run_again_stores_every_run_once(store, tmp_path, monkeypatch):
    import sslam.runtime.mlflow_tracking as publishing

    deferred_runs(store, tmp_path / "jobs", 6)
    real_send, sent = publishing.send_record, []

    def killed_after_the_third(store_, record, info):
        real_send(store_, record, info)
        sent.append(record["run_name"])
        if len(sent) == 3:    # MLflow has the third run, its pending file does not know yet
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(publishing, "send_record", killed_after_the_third)
    with pytest.raises(KeyboardInterrupt):
        publishing.replay(store, [tmp_path / "jobs"])
    assert len(list((tmp_path / "jobs").rglob(PENDING_NAME))) == 4   # the first two left as MLflow confirmed them
    monkeypatch.setattr(publishing, "send_record", real_send)
    assert publishing.replay(store, [tmp_path / "jobs"]) == (4, 0)
    names = sorted(run.info.run_name for run in child_runs(store))
    assert names == [f"job-{index}" for index in range(6)]           # each run once, the third one continued
    [third] = [run for run in child_runs(store) if run.info.run_name == sent[2]]
    assert len(client_of(store).get_metric_history(third.info.run_id, "map")) == 1
    assert not list((tmp_path / "jobs").rglob(PENDING_NAME))


def test_two_replays_at_once_store_every_run_once(store, tmp_path):
    deferred_runs(store, tmp_path / "jobs", 12)
    command = [sys.executable, "-m", "sslam.cli", "track", "replay", "--tracking", str(store), str(tmp_path / "jobs")]
    first, second = (subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(2))
    outputs = [process.communicate(timeout=300) for process in (first, second)]
    assert first.returncode == second.returncode == 0, outputs
    assert len(child_runs(store)) == 12
    sent = sorted(int(out.split("replay: ")[1].split()[0]) for out, _ in outputs)
    assert sent == [0, 12]                                            # one of them found nothing left to send


DRIPPING_SERVER = """
import socket, sys, time
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(8)
print(server.getsockname()[1], flush=True)
while True:
    connection, _ = server.accept()
    connection.recv(65536)
    for byte in b"HTTP/1.1 200 OK\\r\\nContent-Length: 100000\\r\\n\\r\\n" + b"x" * 100000:
        try:
            connection.send(bytes([byte])); time.sleep(1.0)
        except OSError:
            break
"""


def test_a_server_that_drips_its_answers_costs_a_job_its_budget_at_most(tmp_path, capsys, monkeypatch):
    """Every call has a deadline for connect + send + receive together, and a job's calls a budget in all (30 s;
    scaled down here): a server that answers one byte per second is given up, whatever its socket timeouts."""
    monkeypatch.setenv("SSLAM_TRACKING_BUDGET", "4")
    server = subprocess.Popen([sys.executable, "-c", DRIPPING_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        tracking = tmp_path / "tracking.json"
        tracking.write_text(json.dumps({"uri": f"http://127.0.0.1:{port}", "experiment_id": "1",
                                        "parent_run_id": "p", "initialised": True}))
        started = time.monotonic()
        with job_tracker(tracking, "job", tags={"job": "pretrain"}, job_dir=tmp_path) as tracker:
            for step in range(20):
                tracker.log_metrics({"loss": 1.0}, step=step)
                tracker.flush()
        elapsed = time.monotonic() - started
    finally:
        server.kill()
    assert elapsed < 4 + 2, elapsed
    assert len(warnings_in(capsys.readouterr().err)) == 1
    (pending,) = json.loads((tmp_path / PENDING_NAME).read_text())["runs"]
    assert len(pending["metrics"]) == 20 and pending["status"] == "FINISHED"
