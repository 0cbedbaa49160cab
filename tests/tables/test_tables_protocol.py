"""The headline tables print each run's headline selection; the `_paper_protocol` twins print the same runs'
best_on_eval selection (chosen on the test set) beside the paper's numbers with the difference per cell."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from sslam.tables.aggregate import make_tables, read_result, selected
from tables_helpers import multilabel, noisy_scores, write_run

PAPER_SSLAM_MARKET_LINEAR = 68.5   # paper Table 2


def run_with_selections(root, model, seed, valid_value, eval_value):
    """A metrics.json whose headline is best_on_valid and whose selections name best_on_eval's own predictions."""
    rng = np.random.default_rng(seed)
    targets = multilabel(rng, 40, 5)
    path = write_run(root, "spass_market", "linear", model, seed, targets, noisy_scores(rng, targets, 2.0))
    record = json.loads(path.read_text())
    record["value"] = valid_value
    record["selection"] = {"policy": "best_on_valid", "requested": "best_on_valid", "step": 20}
    record["selections"] = {
        "last": {"value": valid_value - 0.01, "step": 30, "predictions": "predictions.last.npz"},
        "best_on_valid": {"value": valid_value, "step": 20, "predictions": "predictions.best_on_valid.npz"},
        "best_on_eval": {"value": eval_value, "step": 10, "predictions": "predictions.best_on_eval.npz"}}
    path.write_text(json.dumps(record))
    return path


def test_headline_uses_the_run_headline_and_the_twin_uses_best_on_eval_beside_the_paper(tmp_path):
    files = [run_with_selections(tmp_path / "eval", "SSLAM", seed, 0.60 + seed / 100, 0.66 + seed / 100)
             for seed in (0, 1, 2)]
    assert selected(read_result(files[0]), "best_on_eval").value == 0.66
    config = {"study": {"name": "t", "variants": ["SSLAM"], "baselines": [], "tables": {
        "paper_numbers": True, "specs": [{"name": "table2", "benchmarks": ["spass_market"], "regimes": ["linear"],
                                          "paper": "table2"}]}}}
    out = tmp_path / "tables"
    make_tables(config, files, out, replicates=0)
    headline = pd.read_csv(out / "table2.csv")
    ours = headline[headline.source == "ours"]
    assert ours["mean"].item() == 61.0                                  # mean of 60, 61, 62: the headline values
    protocol = pd.read_csv(out / "table2_paper_protocol.csv")
    by_source = protocol[protocol.column == "spass_market"].set_index("source")["mean"]
    assert by_source["ours"] == 67.0 and by_source["paper"] == PAPER_SSLAM_MARKET_LINEAR
    assert round(by_source["difference"], 6) == round(67.0 - PAPER_SSLAM_MARKET_LINEAR, 6)
    text = (out / "table2_paper_protocol.md").read_text()
    assert "ON THE TEST SET" in text and "SSLAM − paper" in text and "-1.5" in text
    assert "held-out validation rows" in (out / "table2.md").read_text()


def test_runs_without_selections_leave_the_twin_empty_but_written(tmp_path):
    rng = np.random.default_rng(0)
    targets = multilabel(rng, 20, 4)
    files = [write_run(tmp_path / "eval", "spass_market", "linear", "SSLAM", 0, targets, noisy_scores(rng, targets, 1.0))]
    config = {"study": {"name": "t", "variants": ["SSLAM"], "tables": {"specs": [
        {"name": "t2", "benchmarks": ["spass_market"], "regimes": ["linear"]}]}}}
    make_tables(config, files, tmp_path / "tables", replicates=0)
    assert "no results" in (tmp_path / "tables" / "t2_paper_protocol.md").read_text()
