"""A results path with a space, a non-ASCII letter and quotes runs the whole workflow, and nothing is written
outside it (issue 18.6): every path in every rule's command is quoted. A path Snakemake cannot take at all
(braces are wildcards to it) is refused at parse time in one line."""
from __future__ import annotations

from pathlib import Path

import pytest

from workflow_helpers import copy_repository, reduced_demo, run_snakemake, write_config

pytestmark = pytest.mark.slow

ODD = "results/ü dir/it's a \"tiny\" run"


def files_under(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


def test_the_tiny_study_runs_under_a_path_with_a_space_unicode_and_quotes(tmp_path):
    repo = copy_repository(tmp_path / "repo")
    config = write_config(reduced_demo(Path(ODD), variants=("SSLAM",), benchmarks=("synth_poly",)), repo / "odd.yaml")
    before = files_under(repo)
    result = run_snakemake("--configfile", str(config), "--cores", "2", cwd=repo, timeout=1800)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    results = repo / ODD
    for name in ["table2.md", "table3.md", "runs.csv", "mlflow-logged.txt"]:
        assert (results / "tables" / name).is_file(), name
    assert (results / "eval" / "SSLAM" / "synth_poly" / "linear" / "seed0" / "metrics.json").is_file()
    # Nothing new outside the results folder but Snakemake's own bookkeeping: no stray `results/ü`.
    outside = {name for name in files_under(repo) - before
               if not name.startswith((ODD + "/", ".snakemake/")) and "__pycache__" not in name}
    assert outside == set(), sorted(outside)[:10]
    assert sorted(path.name for path in (repo / "results").iterdir()) == ["ü dir"]
    assert sorted(path.name for path in (repo / "results" / "ü dir").iterdir()) == ["it's a \"tiny\" run"]


@pytest.mark.parametrize("results", ["results/{run}", "results/a\nb"])
def test_a_path_snakemake_cannot_take_is_refused_at_parse_time(demo_config, tmp_path, results):
    demo_config["study"]["results"] = str(tmp_path / results)
    path = write_config(demo_config, tmp_path / "demo.yaml")
    result = run_snakemake("--configfile", str(path), "-n")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Job stats" not in output
    assert "study.results" in output and "Snakemake cannot take in an output path" in output, output[-3000:]
