"""`sslam track init` creates the store, experiment and parent run once; `track artifacts` logs under it."""
from __future__ import annotations

import json

from mlflow.tracking import MlflowClient

from sslam.cli import main as sslam_main
from sslam.runtime.tracking import resolve_tracking


def test_init_once_then_reuse_and_log_artifacts(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    arguments = ["track", "init", "--uri", uri, "--experiment", "exp", "--study", "demo"]
    assert sslam_main([*arguments, "--out", str(tmp_path / "a.json")]) == 0
    assert sslam_main([*arguments, "--out", str(tmp_path / "b.json")]) == 0
    first, second = (json.loads((tmp_path / name).read_text()) for name in ("a.json", "b.json"))
    # tracking.json names a local store relative to itself, so that a moved results folder keeps working.
    assert first["uri"] == "sqlite:///mlflow/mlflow.db" and resolve_tracking(tmp_path / "a.json")["uri"] == uri
    assert first["parent_run_id"] == second["parent_run_id"]
    (tmp_path / "table.md").write_text("| a |\n")
    done = tmp_path / "done.txt"
    assert sslam_main(["track", "artifacts", "--tracking", str(tmp_path / "a.json"), "--run-name", "tables",
                       "--tag", "stage=tables", "--done", str(done), str(tmp_path / "table.md")]) == 0
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([first["experiment_id"]])
    child = next(run for run in runs if run.info.run_name == "tables")
    assert child.data.tags["mlflow.parentRunId"] == first["parent_run_id"]
    assert [a.path for a in client.list_artifacts(child.info.run_id)] == ["table.md"]
    assert (tmp_path / "mlflow" / "artifacts").is_dir()  # artifacts live beside the store
    assert done.read_text().startswith("logged")


def test_environment_uri_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/elsewhere.db")
    assert sslam_main(["track", "init", "--uri", f"sqlite:///{tmp_path}/default.db", "--experiment", "e",
                       "--study", "s", "--out", str(tmp_path / "t.json")]) == 0
    assert json.loads((tmp_path / "t.json").read_text())["uri"].endswith("elsewhere.db")
    assert not (tmp_path / "default.db").exists()


def test_missing_artifact_is_a_clear_error(tmp_path, capsys):
    code = sslam_main(["track", "artifacts", "--tracking", str(tmp_path / "t.json"), "--run-name", "x",
                       str(tmp_path / "absent.md")])
    assert code == 1 and "absent.md" in capsys.readouterr().err


def test_deferred_jobs_never_touch_the_store_and_publish_sends_everything(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    tracking = tmp_path / "mlflow" / "tracking.json"
    assert sslam_main(["track", "init", "--uri", uri, "--experiment", "exp", "--study", "demo", "--deferred",
                       "--out", str(tracking)]) == 0
    from sslam.runtime.mlflow_tracking import job_tracker

    job = tmp_path / "eval" / "job"
    job.mkdir(parents=True)
    with job_tracker(tracking, "eval-job", tags={"job": "evaluate"}, job_dir=job) as tracker:
        tracker.log_metrics({"map": 0.5})
    assert (job / "tracking-pending.json").is_file() and not tracker.logged
    (tmp_path / "table.md").write_text("| a |\n")
    done = tmp_path / "tables" / "mlflow-logged.txt"
    done.parent.mkdir()
    assert sslam_main(["track", "publish", "--tracking", str(tracking), "--results", str(tmp_path),
                       "--git-commit", "abc", "--done", str(done), str(tmp_path / "table.md")]) == 0
    client = MlflowClient(tracking_uri=uri)
    info = json.loads(tracking.read_text())
    runs = {run.info.run_name: run for run in client.search_runs([info["experiment_id"]])}
    assert runs["eval-job"].data.metrics["map"] == 0.5 and "tables" in runs
    parent = client.get_run(info["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["sslam.git_commit"] == "abc"
    assert not (job / "tracking-pending.json").exists()
