"""The converged linear probe (`linear: {solver: lbfgs}`): logistic regression on frozen features by L-BFGS.

The mini-batch probe (AdamW, a fixed number of steps) stops wherever its budget ends: a short one underfits,
and two encoders then differ by how far their probes got rather than by what their features carry
(docs/demo.md). This probe is fitted to its optimum instead, so its score is a property of the features:

1. features: every training and test clip goes through the frozen encoder once, in eval mode, without
   augmentation; the tokens are pooled as the regime says (`cls` or `mean`), each clip's vector is
   LayerNorm'd without affine parameters when `head_norm` is on (the head's LayerNorm + Linear is a linear
   function of exactly that), and every dimension is standardised with the training clips' mean and std
   (`feature_norm: batch`);
2. objective: mean loss per training clip (softmax cross-entropy for multiclass; the sum over classes of
   the binary cross-entropy for multilabel, i.e. one logistic regression per class) + (l2/2)·||W||². The
   bias gets a penalty of BIAS_L2 only, so that a class with no positive training clip has a finite
   optimum (its bias then sits near log(BIAS_L2)); elsewhere it changes nothing measurable. The objective
   is strictly convex: its minimiser is unique, whatever the path to it;
3. fit: scipy's L-BFGS-B, full batch, float64, from zero weights, until the largest absolute gradient
   component is at most `tolerance` (the convergence criterion; recorded with the iteration count); a fit
   that stops at `max_iter` first is recorded as unconverged and logged as a warning;
4. penalty: with several `l2` values, each is scored by `l2_folds`-fold cross-validation on the training
   clips (mean held-out loss, the same loss without the penalty; folds stratified by class for multiclass,
   drawn with the job's seed), the lowest wins (ties: the stronger penalty), and the model is refitted on
   every training clip.

Everything is deterministic: the same features and seed give the same numbers. A stop signal (SIGUSR1 /
SIGTERM) during the extraction or the fits ends the round without a state: the job's finished rounds are
kept and the interrupted one starts again on resume (seconds of work).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sslam.runtime.errors import SslamError
from sslam.evaluation.config import LinearProbeConfig
from sslam.evaluation.heads import pool_features
from sslam.evaluation.training import Interrupted, autocast, batch_loader
from sslam.runtime.progress import Progress

BIAS_L2 = 1e-8
# scipy's own relative-decrease stop is set far below what the gradient criterion needs, so that the fit
# stops on the gradient (or on max_iter), not because one step improved the loss by little.
RELATIVE_DECREASE_STOP = 1e-15


@dataclass
class LogisticFit:
    """A fitted probe: logits = standardised features @ weights + bias."""

    weights: np.ndarray             # (D, C) float64
    bias: np.ndarray                # (C,)
    task: str                       # multiclass | multilabel
    l2: float
    loss: float                     # the objective at the solution (penalty included)
    gradient_max: float             # max |gradient| at the solution
    iterations: int
    evaluations: int
    converged: bool
    message: str

    def scores(self, features: np.ndarray) -> np.ndarray:
        """(N, C) softmax (multiclass) or sigmoid (multilabel) probabilities of standardised features."""
        return probabilities(features @ self.weights + self.bias, self.task)

    def record(self) -> dict[str, Any]:
        return {"l2": self.l2, "loss": self.loss, "gradient_max": self.gradient_max, "iterations": self.iterations,
                "evaluations": self.evaluations, "converged": self.converged, "message": self.message}


def probabilities(logits: np.ndarray, task: str) -> np.ndarray:
    if task == "multiclass":
        shifted = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(axis=1, keepdims=True)
    return 0.5 * (1.0 + np.tanh(0.5 * logits))       # the logistic function without overflow


def data_loss(logits: np.ndarray, targets: np.ndarray, task: str) -> tuple[float, np.ndarray]:
    """(mean loss per clip, its gradient with respect to the logits)."""
    count = logits.shape[0]
    if task == "multiclass":
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss = -(targets * (shifted - log_norm)).sum() / count
        return float(loss), (np.exp(shifted - log_norm) - targets) / count
    # softplus(z) - y·z, summed over classes
    loss = (np.logaddexp(0.0, logits) - targets * logits).sum() / count
    return float(loss), (probabilities(logits, task) - targets) / count


def fit_logistic(features: np.ndarray, targets: np.ndarray, task: str, l2: float, max_iter: int = 5000,
                 tolerance: float = 1e-5, stop: Callable[[], bool] | None = None,
                 start: LogisticFit | None = None) -> LogisticFit:
    """Minimise mean loss + (l2/2)·||W||² + (BIAS_L2/2)·||b||² over (W, b) by L-BFGS, from zero or from the
    solution `start` (the objective is strictly convex: the starting point changes the path, not the optimum).
    `features` (N, D) should be standardised; `targets` (N, C) one-hot (multiclass) or multi-hot.
    `stop()` true (a stop signal) raises Interrupted between two iterations."""
    from scipy.optimize import minimize

    if task not in ("multiclass", "multilabel"):
        raise SslamError(f"unknown task {task!r}; expected multiclass or multilabel")
    x = np.ascontiguousarray(features, dtype=np.float64)
    y = np.ascontiguousarray(targets, dtype=np.float64)
    dims, classes = x.shape[1], y.shape[1]

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        weights, bias = theta[:dims * classes].reshape(dims, classes), theta[dims * classes:]
        loss, grad_logits = data_loss(x @ weights + bias, y, task)
        loss += 0.5 * l2 * float((weights * weights).sum()) + 0.5 * BIAS_L2 * float(bias @ bias)
        grad = np.concatenate([(x.T @ grad_logits + l2 * weights).ravel(), grad_logits.sum(axis=0) + BIAS_L2 * bias])
        return loss, grad

    def callback(intermediate) -> None:
        if stop is not None and stop():
            raise Interrupted("stopped during the L-BFGS fit")

    initial = (np.concatenate([start.weights.ravel(), start.bias]) if start is not None
               else np.zeros(dims * classes + classes))
    result = minimize(objective, initial, jac=True, method="L-BFGS-B", callback=callback,
                      options={"maxiter": max_iter, "gtol": tolerance, "ftol": RELATIVE_DECREASE_STOP,
                               "maxcor": 20})
    loss, grad = objective(result.x)
    gradient_max = float(np.abs(grad).max())
    return LogisticFit(result.x[:dims * classes].reshape(dims, classes).copy(), result.x[dims * classes:].copy(),
                       task, float(l2), float(loss), gradient_max, int(result.nit), int(result.nfev),
                       gradient_max <= tolerance, str(result.message))


def cv_folds(targets: np.ndarray, task: str, folds: int, seed: int) -> np.ndarray:
    """(N,) fold index of every training clip: a seeded permutation dealt round-robin, within each class
    for multiclass (so every fold holds every class that has at least `folds` clips)."""
    rng = np.random.default_rng([seed, 0x10615])
    order = rng.permutation(targets.shape[0])
    assignment = np.empty(targets.shape[0], dtype=np.int64)
    if task == "multiclass":
        labels = targets.argmax(axis=1)
        dealt = 0
        for label in np.unique(labels):
            members = order[labels[order] == label]
            assignment[members] = (np.arange(len(members)) + dealt) % folds
            dealt += len(members)      # the next class continues where this one stopped: folds stay balanced
    else:
        assignment[order] = np.arange(len(order)) % folds
    return assignment


def choose_l2(features: np.ndarray, targets: np.ndarray, task: str, config: LinearProbeConfig, seed: int,
              stop: Callable[[], bool] | None = None) -> tuple[float, dict[float, float]]:
    """The penalty of `config.l2` with the lowest mean held-out loss over `config.l2_folds` folds, and every
    candidate's loss. One candidate: itself, without cross-validation."""
    if len(config.l2) == 1:
        return float(config.l2[0]), {}
    folds = min(config.l2_folds, features.shape[0])
    if folds < 2:
        raise SslamError(f"cross-validating the probe's l2 needs at least 2 training clips, got {features.shape[0]}")
    assignment = cv_folds(targets, task, folds, seed)
    losses: dict[float, float] = {}
    previous: list[LogisticFit | None] = [None] * folds
    # Strongest penalty first, each fit starting from the previous penalty's solution on the same fold: the
    # strongly penalised fits converge in a few iterations and lead the weaker ones most of the way.
    for l2 in sorted(set(float(v) for v in config.l2), reverse=True):
        held_out = 0.0
        for fold in range(folds):
            train, test = assignment != fold, assignment == fold
            fitted = fit_logistic(features[train], targets[train], task, l2, config.max_iter, config.tolerance, stop,
                                  start=previous[fold])
            previous[fold] = fitted
            loss, _ = data_loss(features[test] @ fitted.weights + fitted.bias, targets[test], task)
            held_out += loss * test.sum()
        losses[l2] = float(held_out / len(features))
    best = min(losses.values())
    return max(l2 for l2, loss in losses.items() if loss == best), dict(sorted(losses.items()))


@dataclass
class Standardiser:
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def of(cls, features: np.ndarray, eps: float) -> "Standardiser":
        return cls(features.mean(axis=0), np.sqrt(features.var(axis=0) + eps))

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return (features - self.mean) / self.scale


@torch.no_grad()
def extract_features(encoder: torch.nn.Module, dataset, pooling: str, head_norm: bool, batch_size: int,
                     device: torch.device, precision: str, num_workers: int = 0,
                     stop: Callable[[], bool] | None = None, progress: Progress | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D) float64, targets (N, C)) of `dataset` in its order, from the encoder in eval mode."""
    encoder.eval()
    encoder.to(device)
    eps = encoder.config.norm_eps
    features, targets = [], []
    for fbank, target in batch_loader(dataset, None, batch_size, num_workers):
        if stop is not None and stop():
            raise Interrupted("stopped during the feature extraction")
        with autocast(device, precision):
            pooled = pool_features(encoder.forward_features(fbank.to(device)), pooling,
                                   encoder.config.freq_patches).float()
        if head_norm:
            pooled = torch.nn.functional.layer_norm(pooled, pooled.shape[-1:], eps=eps)
        features.append(pooled.cpu().double().numpy())
        targets.append(target.numpy())
        if progress is not None:
            progress.update(1)
    return np.concatenate(features), np.concatenate(targets)


def solver_summary(selections: list[dict[str, Any]]) -> dict[str, Any] | None:
    """metrics.json `solver`: whether every round's fit converged, and each round's iterations and penalty."""
    fits = [selection["solver"] for selection in selections if isinstance(selection.get("solver"), dict)]
    if not fits:
        return None
    return {"name": "lbfgs", "converged": all(fit["converged"] for fit in fits),
            "iterations": [fit["iterations"] for fit in fits], "l2": [fit["l2"] for fit in fits],
            "gradient_max": max(fit["gradient_max"] for fit in fits), "tolerance": fits[0]["tolerance"]}


__all__ = ["BIAS_L2", "LogisticFit", "Standardiser", "choose_l2", "cv_folds", "data_loss", "extract_features",
           "fit_logistic", "probabilities", "solver_summary"]
