"""A reduced demo study really runs end to end (tables, MLflow runs, the HTML report), records the code of
every job, and a moved copy of the finished checkout re-runs nothing."""
from __future__ import annotations

import base64
import json
import shutil

import pytest
from mlflow.tracking import MlflowClient

from sslam.runtime.tracking import resolve_tracking

from report_helpers import embedded_html_pages, markdown_table_cells, parse_page
from workflow_helpers import planned_jobs, run_snakemake

pytestmark = pytest.mark.slow


def test_tables_and_mlflow_runs(finished_study):
    repo, config_path = finished_study
    tables = repo / "results" / "tables"
    for name in ["table1.md", "table1.tex", "table1.csv", "table3.md", "table3_polyphony.png", "pretrain_loss.png"]:
        assert (tables / name).is_file(), name
    assert "SSLAM" in (tables / "table1.md").read_text()
    tracking = resolve_tracking(repo / "results" / "mlflow" / "tracking.json")
    # The store and its artifacts live under the results folder, never in the working folder.
    assert tracking["uri"] == f"sqlite:///{(repo / 'results' / 'mlflow' / 'mlflow.db').resolve()}"
    assert not (repo / "mlflow.db").exists() and not (repo / "artifacts").exists()
    client = MlflowClient(tracking_uri=tracking["uri"])
    runs = client.search_runs([tracking["experiment_id"]])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == tracking["parent_run_id"]]
    evaluations = [r for r in children if r.data.tags.get("job") == "evaluate"]
    assert len(evaluations) == 4 * 2 * 2  # stage1, MB-UA, SSLAM, random × 2 benchmarks × 2 regimes
    assert any(r.info.run_name == "tables" for r in children)


def test_every_job_records_the_code_it_ran(finished_study):
    repo, _ = finished_study
    records = {path.relative_to(repo / "results").as_posix(): json.loads(path.read_text())
               for path in (repo / "results").glob("**/*.code.json")}
    stage1 = set(records["pretrain/stage1/checkpoint.code.json"]["units"])
    mb_ua = set(records["pretrain/MB-UA/checkpoint.code.json"]["units"])
    sslam = set(records["pretrain/SSLAM/checkpoint.code.json"]["units"])
    evaluation = set(records["eval/SSLAM/synth_mono/linear/seed0/metrics.code.json"]["units"])
    tables = set(records["tables/runs.code.json"]["units"])
    srl = "sslam.objective.source_retention:srl_target"
    mixing = "sslam.objective.mixing:mix_frames"  # what the sync-free objective runs to mix
    assert srl in sslam and srl not in mb_ua and srl not in stage1
    assert mixing in sslam and mixing not in mb_ua and mixing not in stage1
    assert not any(unit.startswith(("sslam.objective", "sslam.train")) for unit in evaluation)
    assert not any(unit.startswith(("sslam.model", "sslam.objective", "sslam.train", "sslam.evaluation"))
                   for unit in tables)


def test_no_absolute_path_in_any_rule_parameter(finished_study):
    repo, _ = finished_study
    metadata = list((repo / ".snakemake" / "metadata").iterdir())
    assert metadata
    for path in metadata:
        record = json.loads(path.read_text())
        params = record.get("params") or []
        params = json.loads(params) if isinstance(params, str) else params
        output = base64.b64decode(path.name + "=" * (-len(path.name) % 4)).decode()
        for value in params:
            assert str(repo) not in str(value) and not str(value).strip("'\"").startswith("/"), (output, value)
        assert str(repo) not in record.get("code", ""), output


def test_a_moved_copy_of_the_finished_checkout_reruns_nothing(finished_study, tmp_path):
    repo, config_path = finished_study
    moved = tmp_path / "moved"
    shutil.copytree(repo, moved, symlinks=True)  # copy2: modification times travel with the files
    jobs, output = planned_jobs(moved, moved / config_path.name)
    assert jobs == set(), output[-3000:]
    jobs, output = planned_jobs(repo, config_path)
    assert jobs == set(), output[-3000:]


def test_html_report_with_captions(finished_study, tmp_path):
    repo, config_path = finished_study
    report = tmp_path / "report.html"
    result = run_snakemake("--configfile", str(config_path), "--report", str(report), cwd=repo)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    html = report.read_text(errors="replace")
    assert "pretrain_loss.png" in html and "study.html" in html and "significance.html" in html
    # Every table, the significance table and the Study page are shown inline: the report embeds them as HTML
    # (a Markdown result is only a download link), with every cell of the Markdown table rendered.
    pages = {page.title: page for page in map(parse_page, embedded_html_pages(html))}
    tables = repo / "results" / "tables"
    expected = sorted(path for path in tables.glob("*.md"))
    assert {path.stem for path in expected} >= {"table1", "table3", "significance", "study"}
    for path in expected:
        markdown = path.read_text()
        title = markdown.splitlines()[0].lstrip("# ")
        assert title in pages, (path.name, sorted(pages))
        assert pages[title].rows == markdown_table_cells(markdown), path.name
        assert path.name != "study.md" or "study:" in "".join(pages[title].pre)
    assert any(len(page.rows) > 2 for page in pages.values())
    for caption in ("sample standard deviation over the evaluation seeds", "paired bootstrap",
                    "study config exactly as"):
        assert caption in html, caption


def test_every_evaluation_records_all_selections_and_the_tables_show_both_protocols(finished_study):
    """Issue 19: one run gives last, best_on_valid and best_on_eval (score, step, predictions); the tables print
    the headline and, in a `_paper_protocol` twin, the test-selected best_on_eval numbers."""
    repo, _ = finished_study
    results = repo / "results"
    files = sorted(results.glob("eval/*/*/*/seed*/metrics.json"))
    assert files
    for path in files:
        metrics = json.loads(path.read_text())
        assert set(metrics["selections"]) == {"last", "best_on_valid", "best_on_eval"}, path
        for name, entry in metrics["selections"].items():
            assert entry["value"] is not None and entry["step"], (path, name)
            assert (path.parent / entry["predictions"]).is_file(), (path, name)
        assert metrics["selections"]["best_on_eval"]["value"] >= metrics["selections"]["last"]["value"] - 1e-9
        policy = metrics["selection"]["policy"]
        assert abs(metrics["value"] - metrics["selections"][policy]["value"]) < 1e-9, path
    twins = sorted((results / "tables").glob("*_paper_protocol.md"))
    assert twins
    for twin in twins:
        assert (twin.parent / twin.name.replace("_paper_protocol", "")).is_file()
        assert "ON THE TEST SET" in twin.read_text()
