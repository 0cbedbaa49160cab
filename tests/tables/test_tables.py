"""Tables from hand-made metrics.json files: layouts, mean ± std over seeds, metric names, clip and seed
counts, bold and significance markers, baseline and paper rows, determinism, bad input."""
from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sslam.cli import main as sslam_main
from sslam.runtime.errors import ConfigError, SslamError
from sslam.tables.aggregate import make_tables, read_result
from sslam.tables.layouts import table_specs
from sslam.tables.models import default_label, model_order, parse_model_id
from sslam.tables.paper_numbers import PAPER_TABLES
from report_helpers import markdown_table_cells, parse_page
from tables_helpers import multilabel, noisy_scores, one_hot, write_run

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
    # every Markdown page has an HTML twin with the same cells (what the report shows inline)
    for name in ["table2", "table3", "significance", "study"]:
        markdown = (tmp_path / "out" / f"{name}.md").read_text()
        page = parse_page((tmp_path / "out" / f"{name}.html").read_text())
        assert page.rows == markdown_table_cells(markdown), name
        assert page.title == markdown.splitlines()[0].lstrip("# ")
    assert "± " in (tmp_path / "out" / "table2.html").read_text()
    assert "variants:" in "".join(parse_page((tmp_path / "out" / "study.html").read_text()).pre)


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


def table_rows(markdown: str) -> dict[tuple[str, str], list[str]]:
    """(block, row label) -> cells of a Markdown table written by the tables command."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")][2:]
    rows, block = {}, ""
    for line in lines:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        block = cells[0] or block
        rows[(block, cells[1])] = cells[2:]
    return rows


def test_metric_unit_clip_and_seed_counts(tmp_path, metrics):
    files, _ = metrics
    files.append(write_metrics(tmp_path / "eval", "esc50", "linear", "SSLAM", 0, 0.9, metric="accuracy"))
    config = study_config(tmp_path)
    config["study"]["tables"]["specs"].append({"name": "mixed", "benchmarks": ["spass_market", "esc50"],
                                               "regimes": ["linear"]})
    out = tmp_path / "t"
    make_tables(config, files, out, replicates=0)
    table2 = (out / "table2.md").read_text()
    assert table2.startswith("# Polyphonic sets — mAP (%)\n")
    assert "over 3 seeds (seeds 0, 1, 2), in percent." in table2
    table3 = (out / "table3.md").read_text()
    assert "{2,3} (4 clips)" in table3.splitlines()[2]   # the header row
    mixed = (out / "mixed.md").read_text()
    assert "spass_market (mAP)" in mixed and "esc50 (accuracy)" in mixed
    assert "Metrics: accuracy (%) for esc50; mAP (%) for spass_market." in mixed
    assert "90.0 (1 seed)" in mixed   # a cell with fewer seeds than the table's others says so


def test_bold_markers_and_delta_table_from_predictions(tmp_path):
    rng = np.random.default_rng(0)
    targets = multilabel(rng, 120, 6, rate=0.2)
    strong = noisy_scores(rng, targets, 3.0)
    signals = {"random": None, "stage1": 1.0, "MB-UA": "strong", "SSLAM": "strong"}
    files = []
    for seed in (0, 1):
        for model, signal in signals.items():
            scores = strong if signal == "strong" else rng.standard_normal(targets.shape) if signal is None \
                else noisy_scores(rng, targets, signal)
            files.append(write_run(tmp_path / "eval", "spass_market", "linear", model, seed, targets, scores))
    config = {"study": {"variants": ["MB-UA", "SSLAM"], "benchmarks": ["spass_market"], "tables": {
        "significance": {"replicates": 300},
        "specs": [{"name": "t2", "benchmarks": ["spass_market"], "regimes": ["linear"]}]}}}
    out = tmp_path / "tables"
    make_tables(config, files, out)
    rows = table_rows((out / "t2.md").read_text())
    block = "Linear evaluation"
    assert list(label for _, label in rows) == ["Random init (no pretraining)", "Stage 1 (EAT-style baseline)",
                                                 "MB-UA", "SSLAM"]
    assert rows[(block, "SSLAM")][0].startswith("**") and rows[(block, "MB-UA")][0].startswith("**")  # tied best
    assert not rows[(block, "Stage 1 (EAT-style baseline)")][0].startswith("**")
    assert rows[(block, "SSLAM")][0].endswith("†**")
    assert rows[(block, "Random init (no pretraining)")][0].endswith("†")
    assert "†" not in rows[(block, "Stage 1 (EAT-style baseline)")][0]
    cells = pd.read_csv(out / "t2.csv")
    sslam = cells[cells.model == "SSLAM"].iloc[0]
    assert sslam.low > 0 and bool(sslam.significant)
    delta = pd.read_csv(out / "significance.csv", dtype={"seeds": str})
    pair = delta[(delta.model == "SSLAM") & (delta.reference == "MB-UA")].iloc[0]
    assert pair.delta == 0 and pair.low == 0 and pair.high == 0 and not pair.significant
    versus_stage1 = delta[(delta.model == "SSLAM") & (delta.reference == "stage1")].iloc[0]
    assert versus_stage1.delta == pytest.approx(sslam["mean"] - cells[cells.model == "stage1"].iloc[0]["mean"])
    assert versus_stage1.seeds == "0 1" and versus_stage1.replicates == 300
    text = (out / "significance.md").read_text()
    assert "| SSLAM − MB-UA " in text and "+0.00 [+0.00, +0.00]" in text
    # A model without predictions: still in the table, not tested, said twice.
    (tmp_path / "eval" / "MB-UA" / "spass_market" / "linear" / "seed1" / "predictions.npz").unlink()
    make_tables(config, files, out)
    assert "MB-UA on spass_market/linear seed 1: no predictions file" in (out / "significance.md").read_text()
    delta = pd.read_csv(out / "significance.csv", dtype={"seeds": str})
    pair = delta[(delta.model == "SSLAM") & (delta.reference == "MB-UA")].iloc[0]
    assert pair.seeds == "0"   # only the seed both models have predictions for


def test_missing_predictions_never_crash_and_say_so(tmp_path, metrics):
    files, _ = metrics   # the fixture's runs have no predictions.npz at all
    out = tmp_path / "t"
    make_tables(study_config(tmp_path), files, out)
    table2 = (out / "table2.md").read_text()
    assert "Not tested against the column's best (no usable predictions, see significance.md): " in table2
    assert table_rows(table2)[("Fine-tuning", "SSLAM")][0] == "**85.0 ± 1.0**"   # the best is still bold
    assert not table_rows(table2)[("Fine-tuning", "MB-UA")][0].startswith("**")   # undecidable: not bold
    assert "no predictions file" in (out / "significance.md").read_text()


def test_tables_are_bit_identical_on_a_rerun(tmp_path):
    rng = np.random.default_rng(1)
    targets = multilabel(rng, 60, 5)
    labels = rng.integers(0, 4, 45)
    folds = np.repeat(["1", "2", "3"], 15)
    files = []
    for model, signal in [("stage1", 1.0), ("SSLAM", 1.5), ("random", 0.2)]:
        for seed in (0, 1):
            files.append(write_run(tmp_path / "eval", "poly", "linear", model, seed, targets,
                                   noisy_scores(rng, targets, signal)))
            predicted = np.where(rng.random(45) < signal / 2, labels, (labels + 1) % 4)
            files.append(write_run(tmp_path / "eval", "mono", "linear", model, seed, one_hot(labels, 4),
                                   one_hot(predicted, 4) + 0.1 * rng.random((45, 4)), "accuracy", rounds=folds))
    config = {"study": {"variants": ["SSLAM"], "benchmarks": ["poly", "mono"], "tables": {
        "significance": {"replicates": 200},
        "specs": [{"name": "t1", "benchmarks": ["mono", "poly"], "regimes": ["linear"]}]}}}
    first, second = tmp_path / "a", tmp_path / "b"
    make_tables(config, files, first)
    make_tables(config, list(reversed(files)), second)
    names = sorted(p.name for p in first.iterdir() if p.suffix in {".md", ".csv", ".tex"})
    assert "significance.md" in names and "t1.md" in names
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_baseline_rows_in_every_table(tmp_path, metrics):
    files, _ = metrics
    for seed in (0, 1, 2):
        files.append(write_metrics(tmp_path / "eval", "spass_market", "linear", "random", seed, 0.3))
    config = study_config(tmp_path)
    config["study"]["tables"]["specs"] = [
        {"name": "listed", "benchmarks": ["spass_market"], "regimes": ["linear"], "models": ["SSLAM", "MB-UA"]},
        {"name": "without", "benchmarks": ["spass_market"], "regimes": ["linear"], "baselines": False}]
    make_tables(config, files, tmp_path / "t", replicates=0)
    listed = [label for _, label in table_rows((tmp_path / "t" / "listed.md").read_text())]
    assert listed == ["Random init (no pretraining)", "SSLAM", "MB-UA"]
    without = [label for _, label in table_rows((tmp_path / "t" / "without.md").read_text())]
    assert "Random init (no pretraining)" not in without and without[0] == "Stage 1 (EAT-style baseline)"


def test_paper_layouts_join_when_their_models_are_in_the_study():
    study = {"variants": ["MB-UA", "MB-PMA", "MB-UA-PMA", "SSLAM", "MixIT"],
             "benchmarks": ["esc50", "ks2", "as20k", "spass_park"], "stage1_variants": ["mixed"],
             "tables": {"specs": [{"name": "table12", "layout": "table12", "decimals": 3}]}}
    every = {spec.name: spec for spec in table_specs({"study": study})}
    specs = {name: spec for name, spec in every.items() if spec.selection == "headline"}
    assert set(specs) == {"table12", "table4", "table9", "mixit"}
    assert set(every) - set(specs) == {f"{name}_paper_protocol" for name in specs}   # each with its twin
    assert specs["table12"].decimals == 3 and specs["table12"].models == ["MB-UA", "SSLAM"]   # spec beats preset
    assert specs["table12"].benchmarks == ["spass_park"]   # the layout's columns that the study has
    assert specs["table9"].benchmarks == ["esc50", "ks2", "as20k"] and specs["table9"].paper == "table9"
    table4 = specs["table4"]
    assert table4.models[:3] == ["stage1", "stage1@mixed", "MB-UA"]
    assert table4.labels["stage1"] == "Stage 1 with unmixed audio"
    assert table4.labels["SSLAM@mixed"] == "Stage 2: SSLAM, from Stage 1 with mixed"
    with pytest.raises(ConfigError, match="none of layout table12's benchmarks"):
        table_specs({"study": dict(study, benchmarks=["esc50"])})
    demo = table_specs({"study": dict(study, benchmarks=["synth_poly"], tables={"paper_protocol": False, "specs": [
        {"name": "table12", "layout": "table12", "benchmarks": ["synth_poly"]}]})})
    assert [spec.benchmarks for spec in demo] == [["synth_poly"]]   # a layout on a study's own benchmarks
    off = table_specs({"study": dict(study, tables={"paper_layouts": False})})
    assert off == []
    fewer = table_specs({"study": dict(study, variants=["MB-UA"], stage1_variants=[], benchmarks=["esc50"], tables={})})
    assert fewer == []


def test_table4_and_mixit_paper_rows(tmp_path):
    files = []
    for model, value in [("stage1", 0.40), ("stage1@mixed", 0.39), ("MB-UA", 0.41), ("MixIT", 0.395),
                         ("SSLAM", 0.42), ("MB-UA@mixed", 0.405)]:
        files.append(write_metrics(tmp_path / "eval", "as20k", "finetune", model, 0, value))
    study = {"variants": ["MB-UA", "SSLAM", "MixIT"], "benchmarks": ["as20k"], "stage1_variants": ["mixed"],
             "tables": {"paper_numbers": True, "specs": [
                 {"name": "table4", "layout": "table4",
                  "labels": {"stage1@mixed": "Stage 1 with mixed audio"},
                  "paper_rows": {"stage1": "Stage 1 with unmixed audio", "stage1@mixed": "Stage 1 with mixed audio",
                                 "MB-UA": "Stage 2 with unmixed audio"}},
                 {"name": "table2", "benchmarks": ["as20k"], "regimes": ["finetune"],
                  "paper": ["table2", "appendix_c"]}]}}
    out = tmp_path / "t"
    make_tables({"study": study}, files, out, replicates=0)
    table4 = table_rows((out / "table4.md").read_text())
    labels = [label for _, label in table4]
    assert labels[:4] == ["Stage 1 with unmixed audio", "Stage 1 with unmixed audio (paper)",
                          "Stage 1 with mixed audio", "Stage 1 with mixed audio (paper)"]
    assert table4[("Fine-tuning", "Stage 1 with mixed audio (paper)")] == ["39.0"]
    assert table4[("Fine-tuning", "Stage 1 with mixed audio")] == ["39.0"]
    assert ("Fine-tuning", "Stage 2: MB-UA, from Stage 1 with mixed") in table4
    table2 = table_rows((out / "table2.md").read_text())
    assert table2[("Fine-tuning", "MixIT (paper)")] == ["39.9"]
    assert table2[("Fine-tuning", "SSLAM (paper)")] == ["40.9"]    # Table 2's own row comes first
    text = (out / "table2.md").read_text()
    assert "Appendix C" in text and "Table 2" in text


def test_model_ids():
    assert parse_model_id("SSLAM@mixed").name == "SSLAM" and parse_model_id("SSLAM@mixed").stage1_variant == "mixed"
    assert parse_model_id("stage1@mixed").is_stage1 and not parse_model_id("random").is_stage1
    with pytest.raises(ValueError):
        parse_model_id("a@b@c")
    assert default_label("stage1@mixed") == "Stage 1 (mixed)"
    assert default_label("MB-UA@mixed") == "MB-UA (from Stage 1 mixed)"
    order = model_order(["SSLAM@m", "SSLAM", "stage1@m", "random", "stage1", "zzz"], ["SSLAM"], ["m"], ["random"])
    assert order == ["random", "stage1", "stage1@m", "SSLAM", "SSLAM@m", "zzz"]


def test_bad_model_id_and_mixed_metrics_fail_clearly(tmp_path):
    bad = write_metrics(tmp_path, "b", "linear", "a@b@c", 0, 0.5)
    with pytest.raises(SslamError, match="not a model id"):
        read_result(bad)
    one = write_metrics(tmp_path / "x", "b", "linear", "SSLAM", 0, 0.5)
    other = write_metrics(tmp_path / "y", "b", "linear", "stage1", 0, 0.5, metric="accuracy")
    config = {"study": {"variants": ["SSLAM"], "tables": {"specs": [{"name": "t", "benchmarks": ["b"]}]}}}
    with pytest.raises(SslamError, match="different metrics"):
        make_tables(config, [one, other], tmp_path / "t")


def test_cli_replicates_flag_turns_the_tests_off(tmp_path, metrics):
    files, _ = metrics
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study_config(tmp_path)))
    code = sslam_main(["tables", "--config", str(config), "--metrics", *map(str, files), "--out",
                       str(tmp_path / "out"), "--replicates", "0"])
    assert code == 0
    assert "Significance tests are off" in (tmp_path / "out" / "significance.md").read_text()
    assert "significance tests off" in (tmp_path / "out" / "table2.md").read_text()
    assert sslam_main(["tables", "--config", str(config), "--metrics", *map(str, files), "--out",
                       str(tmp_path / "out"), "--replicates", "3"]) == 1   # out of range: one error line
