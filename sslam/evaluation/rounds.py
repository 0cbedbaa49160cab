"""One round of an evaluation protocol: load its rows, build the classifier, train it, select
the model, and predict the test rows.

Model selection policies (`RegimeConfig.selection`):
* `last` (default): the model after the last step; nothing else is evaluated on the test rows.
* `best_on_eval`: the official behaviour (the eval set doubles as the validation set, spec §9);
  scores the test rows at every evaluation point and keeps the best. It flatters the result and
  is there only to reproduce the official numbers.
* `best_on_valid`: scores a held-out `valid` split and reports the test score of the best
  validation point; without valid rows it falls back to `last` and says so in the result.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslam.errors import ConfigError, SslamError
from sslam.evaluation.augment import TrainingAugmentation
from sslam.evaluation.config import BenchmarkConfig, RegimeConfig
from sslam.evaluation.heads import ClassificationHead, EncoderClassifier
from sslam.evaluation.metrics import score
from sslam.evaluation.protocols import Round, RoundResult, Subset, check_no_leak
from sslam.evaluation.training import TrainingData, fit, predict, steps_per_epoch

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
                              encoder.config.norm_eps, regime.feature_norm)
    # Paper linear evaluation: backbone in eval mode (no drop path); official: it follows .train().
    backbone_train_mode = not (linear and regime.linear_mode == "paper")
    return EncoderClassifier(encoder, head, frozen_backbone=linear, backbone_train_mode=backbone_train_mode)


def run_round(encoder: torch.nn.Module, round_: Round, settings: RoundSettings,
              log: Callable[[dict[str, Any]], None] | None = None) -> RoundOutcome:
    benchmark, regime = settings.benchmark, settings.regime
    train = load_subset(round_.train, settings, round_.name)
    test = load_subset(round_.test, settings, round_.name)
    if train.classes != test.classes:
        raise ConfigError(f"{round_.name}: training and test caches have different class lists")
    same_dataset = round_.train.dataset == round_.test.dataset
    if same_dataset:
        check_no_leak(train.clip_ids, test.clip_ids, round_.name)
    policy, note = regime.selection, None
    valid = None
    if policy == "best_on_valid":
        if round_.valid is None:
            policy, note = "last", "no validation rows: fell back to the last model"
        else:
            valid = load_subset(round_.valid, settings, round_.name)
            check_no_leak(train.clip_ids, valid.clip_ids, round_.name + " (valid)")
    torch.manual_seed(settings.seed)
    classifier = build_classifier(encoder, train.num_classes, settings)

    per_epoch = steps_per_epoch(len(train), regime)
    total = regime.total_steps(per_epoch)
    if settings.max_steps is not None:
        total = min(total, settings.max_steps)
    warmup = min(regime.warmup(per_epoch), total)
    best: dict[str, Any] = {}

    def predictions(dataset) -> tuple[np.ndarray, np.ndarray]:
        return predict(classifier, dataset, regime.batch_size, settings.device, benchmark.task,
                       benchmark.num_workers, regime.precision)

    def on_evaluation_point(step: int, epoch: float) -> None:
        targets, scores = predictions(valid if policy == "best_on_valid" else test)
        value = score(benchmark.metric, targets, scores, train.classes)["value"]
        if log is not None:
            log({"round": round_.name, "step": step, "evaluation": value, "on": policy})
        if value is not None and ("value" not in best or value > best["value"]):
            if policy == "best_on_valid":
                targets, scores = predictions(test)
            best.update(value=value, step=step, epoch=epoch, targets=targets, scores=scores)

    data = TrainingData(train, torch.as_tensor(train.column("num_frames"), dtype=torch.long),
                        sampling_weights(train) if regime.weighted_sampling else None)
    logged = (lambda record: log({"round": round_.name, **record})) if log is not None else None
    augmentation = TrainingAugmentation.from_regime(regime, settings.norm_std)
    fitted = fit(classifier, data, regime, benchmark.loss(regime), augmentation, total, warmup, settings.device,
                 settings.seed, benchmark.num_workers, on_evaluation_point=None if policy == "last" else on_evaluation_point,
                 evaluation_interval=regime.eval_interval_steps or per_epoch, log=logged)
    selection: dict[str, Any] = {"policy": policy, "requested": regime.selection}
    if note:
        selection["note"] = note
    if policy == "last" or "value" not in best:
        targets, scores = predictions(test)
        selection.update(step=fitted.steps, epoch=fitted.epochs)
    else:
        targets, scores = best["targets"], best["scores"]
        selection.update(step=best["step"], epoch=best["epoch"], selection_value=best["value"])
    result = RoundResult(round_, targets, scores, bin_values(test, benchmark.bin_column), selection,
                         fitted.steps, fitted.epochs, len(train))
    return RoundOutcome(train.classes, result)
