"""Tables from hand-made metrics.json files: layouts, mean ± std over seeds, paper rows, bad input."""
from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sslam.cli import main as sslam_main
from sslam.errors import ConfigError, SslamError
from sslam.tables.aggregate import make_tables, read_result
from sslam.tables.paper_numbers import PAPER_TABLES

VARIANTS = ["MB-UA", "SSLAM"]


def write_metrics(root: Path, benchmark: str, regime: str, variant: str, seed: int, value: float,
                  per_bin: dict | None = None, metric: str = "map") -> Path:
    path = root / variant / benchmark / regime / f"seed{seed}" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": benchmark, "regime": regime, "variant": variant, "seed": seed, "metric": metric,
              "value": value, "per_class": {}, "selection": "last", "steps": 10, "wall_time_s": 1.0,
              "code_hash": "0" * 16}
    if per_bin is not None:
        record["per_bin"] = {label: {"value": v, "clips": 4} for label, v in per_bin.items()}
    path.write_text(json.dumps(record))
    return path


def study_config(tmp_path: Path, paper_numbers: bool = False) -> dict:
    return {"study": {"name": "t", "variants": VARIANTS, "tables": {
        "paper_numbers": paper_numbers,
        "specs": [
            {"name": "table2", "title": "Polyphonic sets", "benchmarks": ["spass_market", "urbansed"],
             "regimes": ["linear", "finetune"], "paper": "table2"},
            {"name": "table3", "kind": "polyphony_bins", "benchmarks": ["polyphony"], "regimes": ["linear"],
             "paper": "table3"},
        ]}}}


@pytest.fixture
def metrics(tmp_path):
    files, values = [], {}
    for variant, base in [("MB-UA", 0.60), ("SSLAM", 0.64), ("stage1", 0.50)]:
        for seed in (0, 1, 2):
            for regime, shift in [("linear", 0.0), ("finetune", 0.2)]:
                value = base + shift + 0.01 * seed
                values[(variant, regime, seed)] = value
                files.append(write_metrics(tmp_path / "eval", "spass_market", regime, variant, seed, value))
            files.append(write_metrics(tmp_path / "eval", "polyphony", "linear", variant, seed, base,
                                       per_bin={"{2,3}": base, "{10,11}": base - 0.1 + 0.02 * seed, "{4,5}": base + 0.05}))
    return files, values


def test_mean_and_std_over_seeds(tmp_path, metrics):
    files, values = metrics
    out = tmp_path / "tables"
    make_tables(study_config(tmp_path), files, out)
    cells = pd.read_csv(out / "table2.csv")
    ours = cells[(cells.source == "ours") & (cells.block == "finetune") & (cells.model == "SSLAM")]
    expected = [100 * values[("SSLAM", "finetune", s)] for s in (0, 1, 2)]
    assert ours["mean"].item() == pytest.approx(statistics.mean(expected))
    assert ours["std"].item() == pytest.approx(statistics.stdev(expected))
    assert ours["n"].item() == 3
    # urbansed has no results: its column is absent from our rows rather than invented
    assert set(cells[cells.source == "ours"].column) == {"spass_market"}
    markdown = (out / "table2.md").read_text()
    assert f"{statistics.mean(expected):.1f} ± {statistics.stdev(expected):.1f}" in markdown
    assert "(paper)" not in markdown  # paper rows only when asked for
    # Stage 1 comes first, then the variants in config order
    rows = [line.split("|")[1:3] for line in markdown.splitlines() if line.startswith("| ")][1:]
    start = next(i for i, (regime, _) in enumerate(rows) if regime.strip() == "Fine-tuning")
    order = [model.strip() for _, model in rows[start:]]
    assert order == ["Stage 1 (EAT-style baseline)", "MB-UA", "SSLAM"]
    tex = (out / "table2.tex").read_text()
    assert r"\pm" in tex and r"\begin{tabular}" in tex


def test_polyphony_bins_sorted_numerically_and_plotted(tmp_path, metrics):
    files, _ = metrics
    out = tmp_path / "tables"
    written = make_tables(study_config(tmp_path), files, out)
    header = next(line for line in (out / "table3.md").read_text().splitlines() if line.startswith("|"))
    assert header.index("{2,3}") < header.index("{4,5}") < header.index("{10,11}")
    assert (out / "table3_polyphony.png") in written and (out / "table3_polyphony.png").stat().st_size > 1000


def test_paper_rows_are_labelled_and_match_published_numbers(tmp_path, metrics):
    files, _ = metrics
    out = tmp_path / "tables"
    make_tables(study_config(tmp_path, paper_numbers=True), files, out)
    cells = pd.read_csv(out / "table2.csv")
    paper = cells[cells.source == "paper"]
    sslam_linear = paper[(paper.model == "SSLAM") & (paper.block == "linear")].set_index("column")["mean"]
    assert sslam_linear.to_dict() == PAPER_TABLES["table2"].cells["linear"]["SSLAM"]
    assert "SSLAM (paper)" in (out / "table2.md").read_text()
    assert "stage1" not in set(paper.model)  # the paper has no Stage-1 row in Table 2


def test_cli_writes_all_formats(tmp_path, metrics):
    files, _ = metrics
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study_config(tmp_path)))
    jsonl = tmp_path / "pretrain" / "stage1" / "metrics.jsonl"
    jsonl.parent.mkdir(parents=True)
    jsonl.write_text("".join(json.dumps({"step": s, "loss": 2.0 / s}) + "\n" for s in range(1, 6)))
    code = sslam_main(["tables", "--config", str(config), "--metrics", *map(str, files), "--out",
                       str(tmp_path / "out"), "--pretrain-metrics", str(jsonl)])
    assert code == 0
    for name in ["table2.md", "table2.csv", "table2.tex", "table3.md", "runs.csv", "summary.csv", "pretrain_loss.png"]:
        assert (tmp_path / "out" / name).is_file(), name


def test_bad_inputs_fail_clearly(tmp_path, metrics):
    files, _ = metrics
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"benchmark": "x", "regime": "linear"}))
    with pytest.raises(SslamError, match="missing field"):
        read_result(broken)
    duplicate = write_metrics(tmp_path / "again", "spass_market", "linear", "SSLAM", 0, 0.1)
    with pytest.raises(SslamError, match="same run"):
        make_tables(study_config(tmp_path), [*files, duplicate], tmp_path / "t")
    config = study_config(tmp_path)
    config["study"]["tables"]["specs"][0]["regimes"] = ["zero-shot"]
    with pytest.raises(ConfigError, match="unknown regime"):
        make_tables(config, files, tmp_path / "t")
    config = study_config(tmp_path)
    config["study"]["tables"]["specs"][0]["colour"] = "red"
    with pytest.raises(ConfigError, match="colour"):
        make_tables(config, files, tmp_path / "t")


def test_table12_paper_rows_keep_their_published_std(tmp_path, metrics):
    files, _ = metrics
    config = study_config(tmp_path, paper_numbers=True)
    config["study"]["tables"]["specs"] = [{"name": "table12", "benchmarks": ["spass_market"], "regimes": ["linear"],
                                           "models": ["MB-UA", "SSLAM"], "paper": "table12", "decimals": 2}]
    make_tables(config, files, tmp_path / "t")
    markdown = (tmp_path / "t" / "table12.md").read_text()
    published = PAPER_TABLES["table12"]
    mean, std = published.cells["linear"]["MB-UA"]["spass_market"], published.std["linear"]["MB-UA"]["spass_market"]
    assert re.search(rf"\|\s*MB-UA \(paper\)\s*\|\s*{mean:.2f} ± {std:.2f}\s*\|", markdown), markdown
