"""Hand-made evaluation results for the tables tests: metrics.json (+ predictions.npz) as the evaluation
jobs write them (a uniquely named module, so that it never collides with another test folder's helpers)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sslam.evaluation import metrics as evaluation_metrics


def headline(metric: str, targets: np.ndarray, scores: np.ndarray, rounds: np.ndarray, bins=None) -> dict:
    """What the evaluation reports: the mean over rounds of each round's metric; per bin over pooled clips."""
    names = sorted(set(rounds.tolist()))
    values = [evaluation_metrics.score(metric, targets[rounds == r], scores[rounds == r])["value"] for r in names]
    summary = {"value": float(np.mean(values)), "num_test_clips": int(targets.shape[0])}
    if bins is not None:
        summary["per_bin"] = evaluation_metrics.per_bin(metric, targets, scores, bins)
    return summary


def write_run(root: Path, benchmark: str, regime: str, model: str, seed: int, targets: np.ndarray,
              scores: np.ndarray, metric: str = "map", rounds=None, bins=None, clip_ids=None,
              predictions: bool = True, value: float | None = None) -> Path:
    """One evaluation job folder: metrics.json computed from the predictions (+ predictions.npz)."""
    folder = root / model / benchmark / regime / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    clips = targets.shape[0]
    rounds = np.full(clips, "main") if rounds is None else np.asarray(rounds)
    clip_ids = np.asarray([f"clip{i:05d}" for i in range(clips)]) if clip_ids is None else np.asarray(clip_ids)
    record = {"benchmark": benchmark, "regime": regime, "variant": model, "seed": seed, "metric": metric,
              "per_class": {}, "selection": "last", "steps": 10, "wall_time_s": 1.0, "code_hash": "0" * 16,
              **headline(metric, targets, scores, rounds, bins)}
    if value is not None:
        record["value"] = value
    if predictions:
        arrays = dict(clip_id=clip_ids, targets=targets.astype(np.float32), scores=scores.astype(np.float32),
                      round=rounds)
        if bins is not None:
            arrays["bin"] = np.asarray(bins)
        np.savez(folder / "predictions.npz", **arrays)
        record["predictions"] = "predictions.npz"
    (folder / "metrics.json").write_text(json.dumps(record))
    return folder / "metrics.json"


def multilabel(rng: np.random.Generator, clips: int, classes: int, rate: float = 0.3) -> np.ndarray:
    targets = (rng.random((clips, classes)) < rate).astype(np.float32)
    targets[np.arange(clips), rng.integers(0, classes, clips)] = 1.0   # every clip has a label
    return targets


def noisy_scores(rng: np.random.Generator, targets: np.ndarray, signal: float) -> np.ndarray:
    """Scores that rank the positives higher the larger `signal` is."""
    return (signal * targets + rng.standard_normal(targets.shape)).astype(np.float32)


def one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    targets = np.zeros((labels.shape[0], classes), np.float32)
    targets[np.arange(labels.shape[0]), labels] = 1.0
    return targets
