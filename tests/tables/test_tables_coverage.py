"""Tables say what a number does not cover (issue 18.9): the classes mAP left out because they have no positive
test clip, and polyphony bins scored on fewer clips than study.tables.min_bin_clips."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from sslam.evaluation import metrics as evaluation_metrics
from sslam.tables.aggregate import make_tables

from tables_helpers import multilabel, noisy_scores

CLASSES = [f"/m/{i:02d}" for i in range(14)]


def write_job(root: Path, model: str, seed: int, targets: np.ndarray, scores: np.ndarray, bins: np.ndarray) -> Path:
    """metrics.json as `sslam probe` writes it: headline, per_class over all classes, per_bin with clip counts."""
    result = evaluation_metrics.score("map", targets, scores, CLASSES)
    record = {"benchmark": "poly", "regime": "linear", "variant": model, "seed": seed, "metric": "map",
              "value": result["value"], "per_class": result["per_class"],
              "classes_without_positives": result["classes_without_positives"], "num_test": int(len(targets)),
              "per_bin": evaluation_metrics.per_bin("map", targets, scores, bins, CLASSES),
              "selection": "last", "steps": 3, "wall_time_s": 1.0, "code_hash": "0" * 16}
    path = root / model / "poly" / "linear" / f"seed{seed}" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def study(tmp_path: Path) -> dict:
    return {"study": {"name": "t", "variants": ["SSLAM"], "tables": {"significance": {"enabled": False}, "specs": [
        {"name": "overall", "benchmarks": ["poly"], "regimes": ["linear"]},
        {"name": "bins", "kind": "polyphony_bins", "benchmarks": ["poly"], "regimes": ["linear"]}]}}}


def test_map_says_which_classes_it_left_out_and_small_bins_are_marked(tmp_path):
    rng = np.random.default_rng(0)
    targets = multilabel(rng, 40, 14)
    targets[:, [3, 9]] = 0                           # two classes without a positive test clip
    targets[targets.sum(axis=1) == 0, 0] = 1
    bins = np.where(np.arange(40) < 39, "2", "7")      # bin 7 holds one clip
    files = [write_job(tmp_path / "eval", model, 0, targets, noisy_scores(rng, targets, signal), bins)
             for model, signal in [("SSLAM", 2.0), ("stage1", 1.0)]]
    out = tmp_path / "tables"
    make_tables(study(tmp_path), files, out)

    overall = (out / "overall.md").read_text()
    assert "mAP: classes without a positive test clip have no AP and are left out: poly over 12 of 14 classes " \
           "(2 without test positives)." in overall
    per_bin = (out / "bins.md").read_text()
    header = next(line for line in per_bin.splitlines() if line.startswith("| regime"))
    assert "7 (1 clip) §" in header and "2 (39 clips) §" not in header and "2 (39 clips)" in header
    assert "§: fewer than 10 test clips (study.tables.min_bin_clips) in bin 7 (1 clip)" in per_bin
    assert "bin 7 over " in per_bin and "bin 2 over 12 of 14 classes (2 without test positives)" in per_bin
    cells = pd.read_csv(out / "bins.csv")
    assert cells.groupby("column").few_clips.all().to_dict() == {2: False, 7: True}
    assert set(cells[cells.column == 2].left_out) == {2}
    assert r"7 (1 clip)$^{\S}$" in (out / "bins.tex").read_text()


def test_nothing_is_said_when_every_class_is_scored(tmp_path):
    rng = np.random.default_rng(1)
    targets = multilabel(rng, 60, 14, rate=0.5)
    bins = np.repeat(["1", "2"], 30)
    files = [write_job(tmp_path / "eval", "SSLAM", 0, targets, noisy_scores(rng, targets, 2.0), bins)]
    out = tmp_path / "tables"
    make_tables(study(tmp_path), files, out)
    assert "left out" not in (out / "overall.md").read_text()
    assert "§" not in (out / "bins.md").read_text()
