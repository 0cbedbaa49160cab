"""Benchmark metrics: mAP (multi-label), accuracy (single-label), and per-bin mAP (polyphony).

mAP is the mean over classes of the average precision, computed on the whole evaluation set
(official: nanmean of per-class AP). `average_precision` is scikit-learn's `average_precision_score`
definition (tied scores form one threshold), written in numpy so that an evaluation job does not pay
scikit-learn's import; the tests hold it equal to scikit-learn. A class with no positive clip in the
evaluation set has no defined AP; scikit-learn's behaviour for it changed across versions (NaN,
0 or a warning), so such classes are excluded here explicitly, reported as null and counted in
`classes_without_positives`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sslam.runtime.errors import SslamError


def average_precision(positives: np.ndarray, scores: np.ndarray) -> float:
    """AP of one class: the sum over score thresholds (distinct values, descending) of precision × the
    recall gained there. positives (N,) bool with at least one True, scores (N,)."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    ranked_scores, ranked_positives = scores[order], np.asarray(positives)[order]
    thresholds = np.r_[np.flatnonzero(np.diff(ranked_scores)), ranked_positives.size - 1]
    true_positives = np.cumsum(ranked_positives, dtype=np.float64)[thresholds]
    precision = true_positives / (thresholds + 1)
    recall_gained = np.diff(true_positives, prepend=0.0) / true_positives[-1]
    return float(np.sum(recall_gained * precision))


def _check_shapes(targets: np.ndarray, scores: np.ndarray) -> None:
    if targets.shape != scores.shape or targets.ndim != 2:
        raise SslamError(f"targets {targets.shape} and scores {scores.shape} must both be (clips, classes)")
    if targets.shape[0] == 0:
        raise SslamError("cannot score an empty evaluation set")


def mean_average_precision(targets: np.ndarray, scores: np.ndarray,
                           classes: Sequence[str] | None = None) -> dict[str, Any]:
    """targets (N, C) multi-hot (soft values are thresholded at 0.5), scores (N, C) any monotone score.

    Returns {"map", "per_class" (class -> AP or None), "classes_without_positives", "classes_scored"}.
    """
    targets, scores = np.asarray(targets), np.asarray(scores, dtype=np.float64)
    _check_shapes(targets, scores)
    positives = targets >= 0.5
    names = list(classes) if classes is not None else [str(c) for c in range(targets.shape[1])]
    per_class: dict[str, float | None] = {}
    for column, name in enumerate(names):
        if positives[:, column].any():
            per_class[name] = average_precision(positives[:, column], scores[:, column])
        else:
            per_class[name] = None
    scored = [ap for ap in per_class.values() if ap is not None]
    return {
        "map": float(np.mean(scored)) if scored else None,
        "per_class": per_class,
        "classes_without_positives": len(names) - len(scored),
        "classes_scored": len(scored),
    }


def accuracy(targets: np.ndarray, scores: np.ndarray, classes: Sequence[str] | None = None) -> dict[str, Any]:
    """Top-1 accuracy, argmax of scores against argmax of (one-hot) targets, plus per-class
    accuracy (recall of each true class; None for a class absent from the evaluation set)."""
    targets, scores = np.asarray(targets), np.asarray(scores)
    _check_shapes(targets, scores)
    truth, predicted = targets.argmax(axis=1), scores.argmax(axis=1)
    names = list(classes) if classes is not None else [str(c) for c in range(targets.shape[1])]
    per_class: dict[str, float | None] = {}
    for column, name in enumerate(names):
        members = truth == column
        per_class[name] = float((predicted[members] == column).mean()) if members.any() else None
    return {
        "accuracy": float((truth == predicted).mean()),
        "per_class": per_class,
        "classes_without_positives": sum(value is None for value in per_class.values()),
        "classes_scored": sum(value is not None for value in per_class.values()),
    }


def score(metric: str, targets: np.ndarray, scores: np.ndarray,
          classes: Sequence[str] | None = None) -> dict[str, Any]:
    """Dispatch on the benchmark's metric name; the headline number is under "value"."""
    if metric == "map":
        result = mean_average_precision(targets, scores, classes)
        result["value"] = result["map"]
    elif metric == "accuracy":
        result = accuracy(targets, scores, classes)
        result["value"] = result["accuracy"]
    else:
        raise SslamError(f"unknown metric {metric!r}; expected map or accuracy")
    return result


def per_bin(metric: str, targets: np.ndarray, scores: np.ndarray, bins: Sequence[Any],
            classes: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """One score per value of `bins` (e.g. the polyphony of each clip), each over its own clips.

    Per-class values are left out here to keep the output readable; the counts of classes
    without positives in each bin are kept, because they change the mean.
    """
    bins = np.asarray(bins)
    if bins.shape[0] != np.asarray(targets).shape[0]:
        raise SslamError(f"{bins.shape[0]} bin labels for {np.asarray(targets).shape[0]} clips")
    results: dict[str, dict[str, Any]] = {}
    for value in sorted(set(bins.tolist()), key=lambda v: (str(type(v)), v)):
        members = bins == value
        result = score(metric, np.asarray(targets)[members], np.asarray(scores)[members], classes)
        results[str(value)] = {
            "value": result["value"],
            "clips": int(members.sum()),
            "classes_without_positives": result["classes_without_positives"],
        }
    return results
