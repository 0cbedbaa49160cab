"""`sslam track init` creates the store, experiment and parent run once; `track artifacts` logs under it."""
from __future__ import annotations

import json

from mlflow.tracking import MlflowClient

from sslam.cli import main as sslam_main


def test_init_once_then_reuse_and_log_artifacts(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    arguments = ["track", "init", "--uri", uri, "--experiment", "exp", "--study", "demo"]
    assert sslam_main([*arguments, "--out", str(tmp_path / "a.json")]) == 0
    assert sslam_main([*arguments, "--out", str(tmp_path / "b.json")]) == 0
    first, second = (json.loads((tmp_path / name).read_text()) for name in ("a.json", "b.json"))
    assert first["uri"] == uri and first["parent_run_id"] == second["parent_run_id"]
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
