"""The downstream training and prediction loops (used by `sslam finetune` and `sslam probe`).

Optimisation follows the official recipe (spec §9): AdamW (0.9, 0.95) with layer-wise lr decay,
linear warm-up from min_lr to the peak lr, then cosine down to min_lr (fairseq's cosine
schedule), no gradient clipping unless asked for. The loop takes objects and never reads YAML.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from sslam.errors import ConfigError
from sslam.evaluation.augment import TrainingAugmentation
from sslam.evaluation.config import RegimeConfig
from sslam.evaluation.heads import EncoderClassifier, layer_decay_groups


@dataclass(frozen=True)
class LearningRateSchedule:
    """Linear warm-up from min_lr to peak over `warmup_steps`, then cosine from peak to min_lr."""

    peak_lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.min_lr + (self.peak_lr - self.min_lr) * step / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, kind: str, label_smoothing: float = 0.0
                        ) -> torch.Tensor:
    """`bce`: BCE-with-logits summed over classes and clips, divided by the number of positive
    labels in the batch (official; mixup keeps that total unchanged). `ce`: cross-entropy on
    (possibly mixup-soft) class probabilities, mean over clips, with optional label smoothing."""
    if kind == "bce":
        if label_smoothing:
            targets = targets * (1.0 - label_smoothing) + label_smoothing / targets.shape[1]
        summed = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
        return summed / targets.sum().clamp(min=1.0)
    if kind == "ce":
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    raise ConfigError(f"unknown loss {kind!r}; expected bce or ce")


class IndexedDataset(Dataset):
    """Yields (fbank, target, index) so that the loop can look up per-clip columns (num_frames)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        fbank, target = self.dataset[index]
        return fbank, target, index


@dataclass
class TrainingData:
    """A labelled training set plus what the loop needs besides its items."""

    dataset: Dataset
    num_frames: torch.Tensor                    # (N,) true frame counts, for roll within the clip
    sample_weights: torch.Tensor | None = None  # (N,) for weighted sampling


@dataclass
class FitResult:
    steps: int
    epochs: float
    wall_time_s: float
    losses: list[float] = field(default_factory=list)


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA when asked for; a no-op context elsewhere."""
    enabled = device.type == "cuda" and precision == "bf16"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def steps_per_epoch(num_clips: int, regime: RegimeConfig) -> int:
    draws = regime.weighted_sampling if regime.weighted_sampling else num_clips
    return max(1, math.ceil(draws / regime.batch_size))


def epoch_loader(data: TrainingData, regime: RegimeConfig, generator: torch.Generator, num_workers: int
                 ) -> DataLoader:
    """One epoch: a permutation of the clips, or (weighted sampling) `weighted_sampling` draws."""
    if regime.weighted_sampling:
        if data.sample_weights is None:
            raise ConfigError("weighted_sampling needs a `weight` column in the cached training set")
        if regime.weighted_sampling > len(data.dataset):
            raise ConfigError(f"weighted_sampling draws {regime.weighted_sampling} clips without replacement "
                              f"from only {len(data.dataset)}")
        # torch.multinomial without replacement, as the official sampler draws each epoch.
        order = torch.multinomial(data.sample_weights.double(), regime.weighted_sampling, replacement=False,
                                  generator=generator)
    else:
        order = torch.randperm(len(data.dataset), generator=generator)
    return DataLoader(IndexedDataset(data.dataset), batch_size=regime.batch_size, sampler=order.tolist(),
                      num_workers=num_workers, drop_last=False)


def fit(classifier: EncoderClassifier, data: TrainingData, regime: RegimeConfig, loss_kind: str,
        augmentation: TrainingAugmentation, total_steps: int, warmup_steps: int, device: torch.device,
        seed: int, num_workers: int = 0,
        on_evaluation_point: Callable[[int, float], None] | None = None,
        evaluation_interval: int | None = None, log: Callable[[dict], None] | None = None) -> FitResult:
    """Train `classifier` for `total_steps` optimiser steps; call `on_evaluation_point(step, epoch)`
    every `evaluation_interval` steps and after the last step (for model selection)."""
    classifier.to(device)
    groups = layer_decay_groups(classifier, regime.weight_decay, regime.layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=regime.lr, betas=tuple(regime.betas), eps=1e-8)
    schedule = LearningRateSchedule(regime.lr, regime.min_lr, warmup_steps, total_steps)
    trainable = [p for group in groups for p in group["params"]]
    generator = torch.Generator().manual_seed(seed)
    per_epoch = steps_per_epoch(len(data.dataset), regime)
    step, losses, started = 0, [], time.perf_counter()
    classifier.train()
    while step < total_steps:
        for fbank, targets, index in epoch_loader(data, regime, generator, num_workers):
            fbank, targets = augmentation(fbank.to(device), targets.to(device), data.num_frames[index])
            for group in optimizer.param_groups:
                group["lr"] = schedule(step) * group["lr_scale"]
            with autocast(device, regime.precision):
                logits = classifier(fbank)
            loss = classification_loss(logits.float(), targets, loss_kind, regime.label_smoothing)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if regime.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, regime.grad_clip)
            optimizer.step()
            step += 1
            losses.append(loss.item())
            if log is not None:
                log({"step": step, "loss": losses[-1], "lr": schedule(step - 1)})
            last = step >= total_steps
            if on_evaluation_point is not None and (last or (evaluation_interval and step % evaluation_interval == 0)):
                on_evaluation_point(step, step / per_epoch)
                classifier.train()
            if last:
                break
    return FitResult(step, step / per_epoch, time.perf_counter() - started, losses)


@torch.no_grad()
def predict(classifier: EncoderClassifier, dataset: Dataset, batch_size: int, device: torch.device,
            task: str, num_workers: int = 0, precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """(targets (N, C), scores (N, C)) over `dataset` in its order; scores are sigmoid
    probabilities (multilabel) or softmax probabilities (multiclass)."""
    classifier.eval()
    classifier.to(device)
    all_targets, all_scores = [], []
    for fbank, targets in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers):
        with autocast(device, precision):
            logits = classifier(fbank.to(device)).float()
        scores = torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=-1)
        all_targets.append(targets.numpy())
        all_scores.append(scores.cpu().numpy())
    return np.concatenate(all_targets), np.concatenate(all_scores)
