"""One round of an evaluation protocol: load its rows, build the classifier, train it, score every evaluation
point and keep each selection's test predictions (`sslam.evaluation.selection`).

A round can stop on a stop signal (SIGUSR1/SIGTERM) at any step boundary or between the batches of an
evaluation pass: it hands its state ({"fit", "selection"}) to `RoundResume.save` and raises `Preempted`;
given that state back, it continues exactly where it stopped.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslam.runtime.errors import ConfigError, SslamError
from sslam.evaluation.augment import TrainingAugmentation
from sslam.evaluation.config import BenchmarkConfig, RegimeConfig
from sslam.evaluation.heads import ClassificationHead, EncoderClassifier
from sslam.evaluation.logistic import Standardiser, choose_l2, extract_features, fit_logistic
from sslam.evaluation.protocols import Round, RoundResult, Subset, check_no_leak
from sslam.evaluation.metrics import score
from sslam.evaluation.selection import LAST, Selections, headline
from sslam.evaluation.training import Fitter, Interrupted, TrainingData, predict, steps_per_epoch
from sslam.runtime.jobs import Job
from sslam.runtime.progress import Progress
from sslam.runtime.snapshots import Preempted, StopSignals

logger = logging.getLogger(__name__)

ONE_MODEL_NOTE = "one model fitted in closed form (solver lbfgs), no evaluation points: every selection is it"

BIN_COLUMNS = ("polyphony_bin", "polyphony")   # looked up in this order by bin_column: auto


@dataclass
class RoundSettings:
    """What every round of one job shares."""

    benchmark: BenchmarkConfig
    regime: RegimeConfig
    regime_name: str                            # finetune | linear
    shards: dict[str, list[Path]]               # dataset name -> its cache shards
    norm_mean: float
    norm_std: float
    device: torch.device
    seed: int = 0
    max_steps: int | None = None
    progress_bar: bool | None = False           # interactive bar (None: on a terminal); log lines regardless


@dataclass
class RoundResume:
    """A round's part in its job's exact-resume state (sslam.evaluation.resume)."""

    state: dict[str, Any] | None = None         # {"fit", "selection"} left by an interrupted attempt
    save: Callable[[dict[str, Any]], None] | None = None  # writes the job's state with this round's part
    stop: StopSignals | None = None


@dataclass
class RoundOutcome:
    classes: list[str]
    result: RoundResult


def load_subset(subset: Subset, settings: RoundSettings, round_name: str):
    from sslam.data.datasets import FbankDataset

    if subset.dataset not in settings.shards:
        raise ConfigError(f"no cache shards given for dataset {subset.dataset!r}")
    dataset = FbankDataset(settings.shards[subset.dataset], settings.norm_mean, settings.norm_std, labelled=True,
                           splits=subset.splits, folds=subset.folds)
    if len(dataset) == 0:
        raise SslamError(f"{round_name}: no cached clip in {subset.describe()}")
    return dataset


def bin_values(dataset, column: str | None) -> np.ndarray | None:
    """Per-clip bins (e.g. polyphony) of the test rows, or None when the benchmark has none."""
    if column is None:
        return None
    candidates = BIN_COLUMNS if column == "auto" else (column,)
    for name in candidates:
        try:
            return np.asarray(dataset.column(name))
        except KeyError:
            continue
    if column == "auto":
        return None
    raise ConfigError(f"bin_column {column!r} is not a column of the cached test set")


def sampling_weights(dataset) -> torch.Tensor:
    """Per-clip sampling weights (AS-2M weighted sampling) from the cache's `weight` column."""
    try:
        weights = torch.as_tensor(np.asarray(dataset.column("weight"), dtype=np.float64))
    except (KeyError, ValueError) as error:
        raise ConfigError("weighted_sampling needs a numeric `weight` column in the training manifest/cache") from error
    if (weights < 0).any() or not torch.isfinite(weights).all() or weights.sum() <= 0:
        raise ConfigError("the `weight` column must hold finite, non-negative weights with a positive sum")
    return weights


def build_classifier(encoder: torch.nn.Module, num_classes: int, settings: RoundSettings) -> EncoderClassifier:
    regime, linear = settings.regime, settings.regime_name == "linear"
    encoder.set_drop_path(regime.drop_path)
    head = ClassificationHead(encoder.config.embed_dim, num_classes, regime.pooling, regime.head_norm,
                              encoder.config.norm_eps, regime.feature_norm, freq_patches=encoder.config.freq_patches,
                              attentive_heads=regime.attentive_heads or encoder.config.num_heads)
    # Paper linear evaluation: backbone in eval mode (no drop path); official: it follows .train().
    backbone_train_mode = not (linear and regime.linear_mode == "paper")
    return EncoderClassifier(encoder, head, frozen_backbone=linear, backbone_train_mode=backbone_train_mode)


def run_lbfgs_round(encoder: torch.nn.Module, round_, settings, log_record=None, resume=None):
    """`run_round` for `solver: lbfgs` (same inputs, same RoundOutcome): the converged probe of
    sslam.evaluation.logistic, features extracted once, then L-BFGS."""
    benchmark, regime = settings.benchmark, settings.regime
    stop_signals = resume.stop if resume is not None else None
    stop = (lambda: stop_signals.requested) if stop_signals is not None else None
    train, test, _ = load_round(round_, settings)
    started = time.perf_counter()
    batches = math.ceil(len(train) / regime.batch_size) + math.ceil(len(test) / regime.batch_size)
    progress = Progress(batches, f"{settings.regime_name} {round_.name} features", unit="batch", rate_unit="clips",
                        rate_per_unit=regime.batch_size, bar=settings.progress_bar)
    try:
        extract = dict(pooling=regime.pooling, head_norm=regime.head_norm, batch_size=regime.batch_size,
                       device=settings.device, precision=regime.precision, num_workers=benchmark.num_workers,
                       stop=stop, progress=progress)
        with progress:
            train_x, train_y = extract_features(encoder, train, **extract)
            test_x, test_y = extract_features(encoder, test, **extract)
        standardise = Standardiser.of(train_x, encoder.config.norm_eps)
        train_x, test_x = standardise(train_x), standardise(test_x)
        l2, cv_losses = choose_l2(train_x, train_y, benchmark.task, regime, settings.seed, stop)
        fitted = fit_logistic(train_x, train_y, benchmark.task, l2, regime.max_iter, regime.tolerance, stop)
    except Interrupted as stopped:
        if resume is not None and resume.save is not None:
            resume.save(None)       # nothing of this round is kept: it starts again on resume
        raise Preempted(f"{round_.name}: {stopped}") from None
    if not fitted.converged:
        logger.warning("%s: the L-BFGS probe stopped after %d iterations with max |gradient| %.3g > %.3g (%s)",
                    round_.name, fitted.iterations, fitted.gradient_max, regime.tolerance, fitted.message)
    # No wall time in here: the record is part of the scores that a resumed run must reproduce bit for bit.
    solver = {"name": "lbfgs", **fitted.record(), "cv_loss": {f"{k:g}": v for k, v in cv_losses.items()},
              "tolerance": regime.tolerance}
    logger.info("%s: L-BFGS probe, l2 %g, %d iterations, max |gradient| %.2g, %.1f s", round_.name, fitted.l2,
             fitted.iterations, fitted.gradient_max, time.perf_counter() - started)
    if log_record is not None:   # one line per round, written once the round can no longer be interrupted
        log_record({"round": round_.name, "step": fitted.iterations, "loss": fitted.loss, "l2": fitted.l2,
                    "gradient_max": fitted.gradient_max, "converged": float(fitted.converged),
                    **{f"cv_loss/{k:g}": v for k, v in cv_losses.items()}})
    scores, targets = fitted.scores(test_x).astype(np.float32), test_y.astype(np.float32)
    # One model and no evaluation points: it is every selection (RoundResult.selected), whichever is the headline.
    selection = {"policy": LAST, "requested": regime.selection, "step": fitted.iterations,
                 "epoch": float(fitted.evaluations),
                 "value": score(benchmark.metric, targets, scores, train.classes)["value"], "solver": solver}
    if regime.selection != LAST:
        selection["note"] = ONE_MODEL_NOTE
    result = RoundResult(round_, targets, scores, bin_values(test, benchmark.bin_column),
                         selection, fitted.iterations, float(fitted.evaluations), len(train), list(test.clip_ids))
    return RoundOutcome(train.classes, result)


def run_round(encoder: torch.nn.Module, round_: Round, settings: RoundSettings,
              log: Callable[[dict[str, Any]], None] | None = None, resume: RoundResume | None = None,
              job: Job | None = None) -> RoundOutcome:
    """Train, select and predict one round. `job`: the harness whose code recorder pauses in the steady state
    of the round's training loop (and only there: the selection and test predictions after it are traced)."""
    benchmark, regime, resume = settings.benchmark, settings.regime, resume or RoundResume()
    if settings.regime_name == "linear" and getattr(regime, "solver", "adamw") == "lbfgs":
        return run_lbfgs_round(encoder, round_, settings, log, resume)
    train, test, selections = load_round(round_, settings)
    torch.manual_seed(settings.seed)
    classifier = build_classifier(encoder, train.num_classes, settings)
    per_epoch, total, warmup = round_lengths(len(train), settings)
    fitter = Fitter(classifier, training_data(train, regime), regime, benchmark.loss(regime),
                    TrainingAugmentation.from_regime(regime, settings.norm_std), total, warmup, settings.device,
                    settings.seed, benchmark.num_workers, on_steady=job.steady if job is not None else None,
                    on_steady_end=job.steady_end if job is not None else None)
    if resume.state is not None:
        fitter.load_state_dict(resume.state["fit"])
        selections.load_state_dict(resume.state["selection"])
    logged = (lambda record: log({"round": round_.name, **record})) if log is not None else None

    def predictions(dataset) -> tuple[np.ndarray, np.ndarray]:
        return predict(classifier, dataset, regime.batch_size, settings.device, benchmark.task,
                       benchmark.num_workers, regime.precision, resume.stop, fitter.forward)

    def on_evaluation_point(step: int, epoch: float) -> None:
        record = selections.evaluate(step, epoch, predictions)
        if logged is not None:
            logged(record)  # after the whole point: an interrupted point leaves no line behind

    def save() -> None:
        resume.save({"fit": fitter.state_dict(), "selection": selections.state_dict()})

    progress = Progress(total, f"{settings.regime_name} {round_.name}", initial=fitter.step, rate_unit="clips",
                        rate_per_unit=regime.batch_size, bar=settings.progress_bar)
    try:
        with progress:
            fitted = fitter.run(on_evaluation_point, regime.evaluation_interval(per_epoch), logged, resume.stop,
                                save if resume.save is not None else None, regime.checkpoint_every, progress)
            kept = selections.results(predictions, fitted.steps, fitted.epochs)
    except Interrupted as stopped:
        save()
        raise Preempted(f"{round_.name}: {stopped}") from None
    selection = headline(regime.selection, selections.valid is not None)
    chosen = kept[selection["policy"]]
    selection.update(chosen["record"])
    result = RoundResult(round_, chosen["targets"], chosen["scores"], bin_values(test, benchmark.bin_column),
                         selection, fitted.steps, fitted.epochs, len(train), list(test.clip_ids), kept)
    return RoundOutcome(train.classes, result)


def training_data(train, regime: RegimeConfig) -> TrainingData:
    return TrainingData(train, torch.as_tensor(train.column("num_frames"), dtype=torch.long),
                        sampling_weights(train) if regime.weighted_sampling else None)


def load_round(round_: Round, settings: RoundSettings):
    """(training rows, test rows, selection tracker) of `round_`, checked for leaks between them."""
    train = load_subset(round_.train, settings, round_.name)
    test = load_subset(round_.test, settings, round_.name)
    if train.classes != test.classes:
        raise ConfigError(f"{round_.name}: training and test caches have different class lists")
    if round_.train.dataset == round_.test.dataset:
        check_no_leak(train.clip_ids, test.clip_ids, round_.name)

    valid = None
    if round_.valid is not None:
        valid = load_subset(round_.valid, settings, round_.name)
        check_no_leak(train.clip_ids, valid.clip_ids, round_.name + " (valid)")
    return train, test, Selections(settings.benchmark.metric, train.classes, test, valid)


def round_lengths(num_train: int, settings: RoundSettings) -> tuple[int, int, int]:
    """(steps per epoch, total steps, warm-up steps) of a round on `num_train` clips."""
    per_epoch = steps_per_epoch(num_train, settings.regime)
    total = settings.regime.total_steps(per_epoch)
    if settings.max_steps is not None:
        total = min(total, settings.max_steps)
    return per_epoch, total, min(settings.regime.warmup(per_epoch), total)
