"""Model selection: every selection a paper or a reader may ask for, from one training run.

A round is scored at each of its evaluation points (once per epoch, the official cadence, or every
`eval_interval_steps`, and always after the last step) on its test rows and, when it has them, on its held-out
validation rows. Three models are kept, each with its test predictions:

* `last`: the model after the last step (the honest default when there is no validation split);
* `best_on_valid`: the evaluation point with the best validation score (the honest choice when there is one);
  without validation rows it is the last model, and says so;
* `best_on_eval`: the point with the best TEST score. This is what every official fine-tuning run reports
  (`valid_subset: eval`, `best_checkpoint_metric`; spec §9): it selects on the test set, flatters the
  result, and is kept only to compare with the paper's numbers.

Ties keep the later point, as fairseq's `checkpoint_best.pt` does (`is_better` is `>=` when maximising).
`RegimeConfig.selection` only names which of the three is the job's headline.

The tracker sees the round only through `predict(dataset) -> (targets, scores)`. Its state (the models kept so
far) is plain data and tensors, so that an interrupted round resumes with the same choices ahead of it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from sslam.evaluation.config import SELECTIONS
from sslam.evaluation.metrics import score

Predict = Callable[[Any], tuple[np.ndarray, np.ndarray]]

LAST, BEST_ON_VALID, BEST_ON_EVAL = SELECTIONS
NO_VALID_NOTE = "no validation rows: the last model"


class Selections:
    """Scores the evaluation points of one round and keeps the `last`, `best_on_valid` and `best_on_eval` models."""

    def __init__(self, metric: str, classes: Sequence[str], test, valid=None) -> None:
        self.metric, self.classes, self.test, self.valid = metric, list(classes), test, valid
        self.kept: dict[str, dict[str, Any]] = {}   # selection -> {step, epoch, value, valid_value, targets, scores}

    def evaluate(self, step: int, epoch: float, predict: Predict) -> dict[str, Any]:
        """Score one evaluation point on the test (and validation) rows; returns the record to log."""
        targets, scores = predict(self.test)
        value = self._score(targets, scores)
        valid_value = self._score(*predict(self.valid)) if self.valid is not None else None
        point = {"step": step, "epoch": epoch, "value": value, "valid_value": valid_value,
                 "targets": targets, "scores": scores}
        # Updated only once every prediction of the point is done: an interrupted point leaves no trace.
        self.kept[LAST] = point
        if _at_least(value, self.kept.get(BEST_ON_EVAL, {}).get("value")):
            self.kept[BEST_ON_EVAL] = point
        if self.valid is not None and _at_least(valid_value, self.kept.get(BEST_ON_VALID, {}).get("valid_value")):
            self.kept[BEST_ON_VALID] = point
        record = {"step": step, "evaluation": value}
        if valid_value is not None:
            record["valid"] = valid_value
        return record

    def _score(self, targets: np.ndarray, scores: np.ndarray) -> float | None:
        return score(self.metric, targets, scores, self.classes)["value"]

    def results(self, predict: Predict, steps: int, epochs: float) -> dict[str, dict[str, Any]]:
        """Every selection once training is over: {name: {targets, scores, record}}; the record holds the step,
        epoch, test score and (best_on_valid) the validation score that chose it."""
        if LAST not in self.kept or self.kept[LAST]["step"] != steps:  # the loop always scores its last step
            self.evaluate(steps, epochs, predict)
        chosen = {LAST: self.kept[LAST], BEST_ON_EVAL: self.kept.get(BEST_ON_EVAL, self.kept[LAST]),
                  BEST_ON_VALID: self.kept.get(BEST_ON_VALID, self.kept[LAST])}
        out = {}
        for name, point in chosen.items():
            record = {"step": point["step"], "epoch": point["epoch"], "value": point["value"]}
            if name == BEST_ON_VALID:
                if self.valid is None:
                    record["note"] = NO_VALID_NOTE
                else:
                    record.update(valid_value=point["valid_value"], valid_clips=len(self.valid))
            out[name] = {"targets": point["targets"], "scores": point["scores"], "record": record}
        return out

    def state_dict(self) -> dict[str, Any]:
        return {name: {**point, "targets": torch.from_numpy(np.ascontiguousarray(point["targets"])),
                       "scores": torch.from_numpy(np.ascontiguousarray(point["scores"]))}
                for name, point in self.kept.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kept = {name: {**point, "targets": point["targets"].numpy(), "scores": point["scores"].numpy()}
                     for name, point in (state or {}).items()}


def _at_least(value: float | None, best: float | None) -> bool:
    return value is not None and (best is None or value >= best)


def headline(requested: str, has_valid: bool) -> dict[str, Any]:
    """The `selection` record of metrics.json: which selection is the headline (`policy`) for the one asked for."""
    if requested not in SELECTIONS:
        raise ValueError(f"unknown selection {requested!r}")
    if requested == BEST_ON_VALID and not has_valid:
        return {"policy": LAST, "requested": requested, "note": f"{NO_VALID_NOTE}, fell back to last"}
    return {"policy": requested, "requested": requested}
