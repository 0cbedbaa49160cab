"""A reduced demo study really runs end to end (tables + MLflow runs), and a code change re-runs exactly
the jobs that depend on the edited code: editing the source retention loss re-runs pretraining,
evaluation and tables but not the manifests or the cache; editing the metrics re-runs evaluation and tables."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from workflow_helpers import copy_repository, reduced_demo, run_snakemake, write_config

pytestmark = pytest.mark.slow


def planned_rules(repo: Path, config_path: Path) -> tuple[set[str], str]:
    result = run_snakemake("--configfile", str(config_path), "-n", cwd=repo)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    return set(re.findall(r"^(?:local)?rule (\w+):", output, flags=re.MULTILINE)), output


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    repo = copy_repository(tmp_path_factory.mktemp("repo"))
    config = reduced_demo(repo / "results")
    config_path = write_config(config, repo / "reduced.yaml")
    result = run_snakemake("--configfile", str(config_path), "--cores", "2", cwd=repo, timeout=1500)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return repo, config_path, config


def test_tables_and_mlflow_runs(finished_study):
    repo, _, config = finished_study
    tables = repo / "results" / "tables"
    for name in ["table2.md", "table2.tex", "table2.csv", "table3.md", "table3_polyphony.png", "pretrain_loss.png"]:
        assert (tables / name).is_file(), name
    assert "SSLAM" in (tables / "table2.md").read_text()
    tracking = json.loads((repo / "results" / "mlflow" / "tracking.json").read_text())
    client = MlflowClient(tracking_uri=tracking["uri"])
    runs = client.search_runs([tracking["experiment_id"]])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == tracking["parent_run_id"]]
    evaluations = [r for r in children if r.data.tags.get("stage") == "eval"]
    models = 1 + len(config["study"]["variants"])
    assert len(evaluations) == models * len(config["study"]["benchmarks"]) * 2
    assert any(r.info.run_name == "tables" for r in children)


def edit(path: Path) -> str:
    original = path.read_text()
    path.write_text(original + "\n# edited by test_demo_run\n")
    return original


def test_code_changes_rerun_only_dependent_jobs(finished_study):
    repo, config_path, _ = finished_study
    rules, _ = planned_rules(repo, config_path)
    assert rules == set(), f"a finished study plans nothing, got {rules}"

    loss = repo / "sslam" / "objective" / "source_retention.py"
    original = edit(loss)
    rules, output = planned_rules(repo, config_path)
    loss.write_text(original)
    assert {"pretrain_stage1", "pretrain_stage2", "finetune", "linear_probe", "tables"} <= rules
    assert not rules & {"synth", "cache_shard", "track_init"}, rules
    assert "Params have changed since last execution" in output

    metrics = repo / "sslam" / "evaluation" / "metrics.py"
    original = edit(metrics)
    rules, _ = planned_rules(repo, config_path)
    metrics.write_text(original)
    assert {"finetune", "linear_probe", "tables"} <= rules
    assert not rules & {"synth", "cache_shard", "pretrain_stage1", "pretrain_stage2"}, rules


def test_html_report_with_captions(finished_study):
    repo, config_path, _ = finished_study
    report = repo / "report.html"
    result = run_snakemake("--configfile", str(config_path), "--report", str(report), cwd=repo)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    html = report.read_text(errors="replace")
    assert "table2.md" in html and "pretrain_loss.png" in html
