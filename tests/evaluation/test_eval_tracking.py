"""MLflow side channel of an evaluation job (own file: creating the SQLite store takes seconds)."""
import pytest

from sslam.cli import main

from eval_helpers import POLY, read_metrics


def test_result_is_logged_to_mlflow_with_the_study_tags(write_config, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    config = write_config({"poly": POLY})
    out = tmp_path / "eval"
    assert main(["probe", "--config", str(config), "--benchmark", "poly", "--random-init", "--out", str(out),
                 "--seed", "2", "--variant", "MB-UA", "--max-steps", "1"]) == 0
    metrics = read_metrics(out)
    assert metrics["variant"] == "MB-UA" and metrics["checkpoint_variant"] == "random-init"
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sslam")
    (run,) = client.search_runs([experiment.experiment_id])
    tags = run.data.tags
    assert (tags["job"], tags["variant"], tags["benchmark"], tags["regime"], tags["seed"]) == \
        ("evaluate", "MB-UA", "poly", "linear", "2")
    assert "stage" not in tags                 # pretraining runs only (sslam.runtime.tracking's vocabulary)
    assert tags["code"] == metrics["code_hash"] and tags["job"] == "evaluate"
    assert run.data.metrics["map"] == pytest.approx(metrics["value"])
