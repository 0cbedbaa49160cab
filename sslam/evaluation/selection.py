"""Model-selection policies (`RegimeConfig.selection`): which model of a round is scored on the test rows.

* `last` (default): the model after the last step; nothing else is evaluated on the test rows.
* `best_on_eval`: the official behaviour (the eval set doubles as the validation set, spec §9); scores the
  test rows at every evaluation point and keeps the best. It flatters the result and is there only to
  reproduce the official numbers.
* `best_on_valid`: scores a held-out `valid` split and reports the test score of the best validation point;
  without valid rows it falls back to `last` and says so in the result.

A policy sees the round only through `predict(dataset) -> (targets, scores)`. Its state (the best point so
far) is plain data, so that an interrupted round resumes with the same choice ahead of it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from sslam.evaluation.metrics import score

Predict = Callable[[Any], tuple[np.ndarray, np.ndarray]]


class LastModel:
    """`last`: the model after the last step."""

    name = "last"
    evaluates = False  # no evaluation points during training

    def __init__(self, metric: str, classes: Sequence[str], test, requested: str | None = None,
                 note: str | None = None) -> None:
        self.metric, self.classes, self.test = metric, list(classes), test
        self.requested, self.note = requested or self.name, note

    def evaluate(self, step: int, epoch: float, predict: Predict) -> dict[str, Any] | None:
        """Score one evaluation point; returns the record to log (None: nothing to log)."""
        return None

    def result(self, predict: Predict, steps: int, epochs: float) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """(test targets, test scores, selection record) of the selected model once training is over."""
        targets, scores = predict(self.test)
        return targets, scores, {**self._record(), "step": steps, "epoch": epochs}

    def _record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"policy": self.name, "requested": self.requested}
        if self.note:
            record["note"] = self.note
        return record

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class BestOnEval(LastModel):
    """`best_on_eval`: the evaluation point with the best test score (official, flattering)."""

    name = "best_on_eval"
    evaluates = True

    def __init__(self, metric: str, classes: Sequence[str], test, requested: str | None = None,
                 note: str | None = None) -> None:
        super().__init__(metric, classes, test, requested, note)
        self.best: dict[str, Any] = {}

    def scored_rows(self):
        return self.test

    def evaluate(self, step: int, epoch: float, predict: Predict) -> dict[str, Any]:
        targets, scores = predict(self.scored_rows())
        value = score(self.metric, targets, scores, self.classes)["value"]
        if value is not None and ("value" not in self.best or value > self.best["value"]):
            if self.scored_rows() is not self.test:
                targets, scores = predict(self.test)
            # Updated only once every prediction of the point is done: an interrupted point leaves no trace.
            self.best = {"value": value, "step": step, "epoch": epoch, "targets": targets, "scores": scores}
        return {"step": step, "evaluation": value, "on": self.name}

    def result(self, predict: Predict, steps: int, epochs: float) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        if "value" not in self.best:  # no evaluation point gave a score
            return super().result(predict, steps, epochs)
        best = self.best
        return best["targets"], best["scores"], {**self._record(), "step": best["step"], "epoch": best["epoch"],
                                                 "selection_value": best["value"]}

    def state_dict(self) -> dict[str, Any]:
        if not self.best:
            return {}
        return {**self.best, "targets": torch.from_numpy(np.ascontiguousarray(self.best["targets"])),
                "scores": torch.from_numpy(np.ascontiguousarray(self.best["scores"]))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = ({**state, "targets": state["targets"].numpy(), "scores": state["scores"].numpy()}
                     if state else {})


class BestOnValid(BestOnEval):
    """`best_on_valid`: the test score of the evaluation point with the best validation score."""

    name = "best_on_valid"

    def __init__(self, metric: str, classes: Sequence[str], test, valid, requested: str | None = None) -> None:
        super().__init__(metric, classes, test, requested)
        self.valid = valid

    def scored_rows(self):
        return self.valid


def selection_policy(requested: str, metric: str, classes: Sequence[str], test,
                     load_valid: Callable[[], Any] | None) -> LastModel:
    """The policy `requested` (RegimeConfig.selection) for a round; `load_valid` gives the round's validation
    rows (None: the round has none, and best_on_valid falls back to `last`, noting why)."""
    if requested == "last":
        return LastModel(metric, classes, test)
    if requested == "best_on_eval":
        return BestOnEval(metric, classes, test)
    if requested == "best_on_valid":
        if load_valid is None:
            return LastModel(metric, classes, test, requested, "no validation rows: fell back to the last model")
        return BestOnValid(metric, classes, test, load_valid(), requested)
    raise ValueError(f"unknown selection policy {requested!r}")
