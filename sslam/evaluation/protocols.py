"""Evaluation protocols: which cached rows train, select and test each model, and how the
scores of several rounds combine into one headline number.

* `split`: one round. Train on the train split(s) of the training dataset, select on its `valid`
  split when the selection policy asks for it and such rows exist, report on the eval split.
* `folds` (ESC-50): k rounds of cross-validation over the `fold` column. Round k trains on the
  listed folds other than k and tests on fold k; the headline is the mean over rounds (the usual
  ESC-50 number), per-fold scores are kept, and per-class scores are computed once on the
  pooled out-of-fold predictions (each clip predicted exactly once, by a model that never saw it).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from sslam.runtime.errors import ConfigError, SslamError
from sslam.evaluation.config import BenchmarkConfig
from sslam.evaluation import metrics as metric_functions


class DataLeakError(SslamError):
    """A clip would be both trained on and tested on."""


@dataclass(frozen=True)
class Subset:
    """Rows of one cached dataset, in the FbankDataset filter vocabulary."""

    dataset: str
    splits: tuple[str, ...] | None = None
    folds: tuple[int, ...] | None = None

    def describe(self) -> str:
        parts = [self.dataset]
        if self.splits is not None:
            parts.append("splits=" + ",".join(self.splits))
        if self.folds is not None:
            parts.append("folds=" + ",".join(map(str, self.folds)))
        return " ".join(parts)


@dataclass(frozen=True)
class Round:
    """One trained model: its training, (optional) validation and test rows."""

    name: str
    train: Subset
    test: Subset
    valid: Subset | None = None
    fold: int | None = None


def plan_rounds(benchmark: BenchmarkConfig, folds_in_data: Sequence[int] = (),
                splits_in_training_data: Sequence[str] = ()) -> list[Round]:
    """The rounds of `benchmark`. `folds_in_data` are the fold values of the dataset (folds
    protocol, used when the config lists none); `splits_in_training_data` decide whether a
    validation subset exists."""
    train_name, test_name = benchmark.training_dataset, benchmark.dataset
    if benchmark.protocol == "split":
        valid = None
        if benchmark.valid_split and benchmark.valid_split in set(splits_in_training_data):
            valid = Subset(train_name, splits=(benchmark.valid_split,))
        return [Round("split", Subset(train_name, splits=tuple(benchmark.train_splits)),
                      Subset(test_name, splits=(benchmark.eval_split,)), valid)]
    if train_name != test_name:
        raise ConfigError("the folds protocol trains and tests on the same dataset; drop train_dataset")
    folds = sorted(set(benchmark.folds)) if benchmark.folds else sorted({int(f) for f in folds_in_data if int(f) >= 0})
    if len(folds) < 2:
        raise ConfigError(f"the folds protocol of dataset {test_name!r} needs at least 2 folds, found {folds}")
    missing = sorted(set(folds) - {int(f) for f in folds_in_data}) if len(folds_in_data) else []
    if missing:
        raise ConfigError(f"folds {missing} listed for dataset {test_name!r} have no cached clip")
    # A fold's held-out clips (sslam.data.holdout) validate the rounds that train on that fold and are tested
    # like every other clip of the fold in its own round.
    has_valid = bool(benchmark.valid_split) and benchmark.valid_split in set(splits_in_training_data)
    rounds = []
    for test_fold in folds:
        training_folds = tuple(f for f in folds if f != test_fold)
        valid = Subset(train_name, splits=(benchmark.valid_split,), folds=training_folds) if has_valid else None
        rounds.append(Round(f"fold{test_fold}", Subset(train_name, splits=tuple(benchmark.train_splits),
                                                       folds=training_folds),
                            Subset(test_name, folds=(test_fold,)), valid, test_fold))
    return rounds


def check_no_leak(train_ids: Sequence[str], test_ids: Sequence[str], round_name: str) -> None:
    """Raise DataLeakError if a clip id is in both the training and the test rows of a round."""
    shared = sorted(set(train_ids) & set(test_ids))
    if shared:
        raise DataLeakError(f"{round_name}: {len(shared)} clip(s) both in training and test, e.g. {shared[:3]}")


@dataclass
class RoundResult:
    """Predictions and bookkeeping of one finished round."""

    round: Round
    targets: np.ndarray                 # (N_test, C)
    scores: np.ndarray                  # (N_test, C)
    bins: np.ndarray | None             # (N_test,) per-clip bin (e.g. polyphony), or None
    selection: dict[str, Any]           # policy, selected step/epoch, selection score
    steps: int
    epochs: float
    num_train: int
    clip_ids: list[str] | None = None   # (N_test,) ids of the test clips, in the order of targets/scores
    # Every selection of the round (sslam.evaluation.selection): name -> {targets, scores, record}
    selections: dict[str, dict[str, Any]] = field(default_factory=dict)

    def selected(self, name: str) -> "RoundResult":
        """This round as if `name` had been the headline: that selection's test predictions and record. A round
        that kept no selections trained one model without evaluation points: every selection is that model."""
        if not self.selections:
            return self
        kept = self.selections[name]
        return replace(self, targets=kept["targets"], scores=kept["scores"], selection=kept["record"])


def combine(metric: str, classes: Sequence[str], results: Sequence[RoundResult]) -> dict[str, Any]:
    """Headline metric, per-class scores, per-bin and per-fold scores of all rounds."""
    if not results:
        raise SslamError("no round finished")
    rounds = [metric_functions.score(metric, r.targets, r.scores, classes) for r in results]
    for result, scored in zip(results, rounds):
        if scored["value"] is None:
            raise SslamError(f"{result.round.name}: no class has a positive clip in {result.round.test.describe()}")
    targets = np.concatenate([r.targets for r in results])
    scores = np.concatenate([r.scores for r in results])
    pooled = metric_functions.score(metric, targets, scores, classes)
    summary: dict[str, Any] = {
        "metric": metric,
        "value": float(np.mean([r["value"] for r in rounds])) if len(rounds) > 1 else rounds[0]["value"],
        "per_class": pooled["per_class"],
        "classes_without_positives": pooled["classes_without_positives"],
        "num_test": int(targets.shape[0]),
    }
    if len(results) > 1:
        summary["per_fold"] = [
            {"fold": r.round.fold, "value": s["value"], "classes_without_positives": s["classes_without_positives"],
             "num_train": r.num_train, "num_test": int(r.targets.shape[0]), "selection": r.selection,
             "steps": r.steps}
            for r, s in zip(results, rounds)
        ]
        summary["value_std"] = float(np.std([s["value"] for s in rounds]))
    if all(r.bins is not None for r in results):
        bins = np.concatenate([r.bins for r in results])
        summary["per_bin"] = metric_functions.per_bin(metric, targets, scores, bins, classes)
    return summary


def selection_summary(metric: str, classes: Sequence[str], results: Sequence[RoundResult], name: str
                      ) -> dict[str, Any]:
    """One entry of metrics.json `selections`: the test score of selection `name` over every round (the mean over
    folds), the step it picked (a list, one per fold, for the folds protocol), the validation score that picked it
    (best_on_valid), and the per-bin scores where the benchmark has bins."""
    chosen = [result.selected(name) for result in results]
    summary = combine(metric, classes, chosen)
    records = [result.selection for result in chosen]
    entry: dict[str, Any] = {"value": summary["value"]}
    if len(records) == 1:
        entry.update({key: records[0][key] for key in ("step", "epoch", "valid_value", "valid_clips", "note")
                      if key in records[0]})
    else:
        entry["step"] = [record["step"] for record in records]
        entry["per_fold"] = [{"fold": result.round.fold, **record} for result, record in zip(chosen, records)]
    if "per_bin" in summary:
        entry["per_bin"] = summary["per_bin"]
    return entry


def pooled_predictions(results: Sequence[RoundResult]) -> dict[str, np.ndarray]:
    """The per-clip predictions of every round, pooled (the content of predictions.npz): `clip_id` (N,) str,
    `targets` and `scores` (N, C) float32, `round` (N,) str, and `bin` (N,) int when the benchmark has bins."""
    arrays = {
        "clip_id": np.array([str(c) for r in results for c in _ids(r)], dtype=str),
        "targets": np.concatenate([r.targets for r in results]).astype(np.float32),
        "scores": np.concatenate([r.scores for r in results]).astype(np.float32),
        "round": np.array([r.round.name for r in results for _ in range(r.targets.shape[0])], dtype=str),
    }
    if results and all(r.bins is not None for r in results):
        bins = np.concatenate([np.asarray(r.bins) for r in results])
        try:
            arrays["bin"] = bins.astype(np.int64)
        except ValueError:  # non-numeric bin labels stay strings
            arrays["bin"] = bins.astype(str)
    return arrays


def _ids(result: RoundResult) -> list[str]:
    if result.clip_ids is None or len(result.clip_ids) != result.targets.shape[0]:
        raise SslamError(f"{result.round.name}: the test clip ids do not match its "
                         f"{result.targets.shape[0]} predictions")
    return result.clip_ids
