"""The downstream training and prediction loops (used by `sslam finetune` and `sslam probe`).

Optimisation follows the official recipe (spec §9): AdamW (0.9, 0.95) with layer-wise lr decay, linear
warm-up from min_lr to the peak lr, then cosine down to min_lr (fairseq's cosine schedule, applied per
parameter group as `layer_decay_schedule` says: sslam/evaluation/schedule.py), no gradient clipping unless
asked for. The loop takes objects and never reads YAML.

`Fitter` can stop at any step boundary and continue bit-exactly from its `state_dict()` (weights, optimizer,
data order and position, every random stream, a pending evaluation point): the data loaders draw nothing
from the global random streams (they have their own generators), so only the augmentations and drop path
do, and those streams are captured with the state.

A steady-state step never waits for the device: its loss stays there until the next read, every
`log_every` steps, before every evaluation point and state, and at the end; the per-step log records and
the finiteness check happen then, in step order (docs/performance.md).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from sslam.runtime.errors import ConfigError
from sslam.evaluation.augment import TrainingAugmentation
from sslam.evaluation.config import RegimeConfig
from sslam.evaluation.heads import EncoderClassifier, layer_decay_groups
from sslam.evaluation.schedule import LearningRateSchedule, group_learning_rates
from sslam.runtime.jobs import SteadyState
from sslam.runtime.progress import Progress
from sslam.fingerprints import compiled
from sslam.runtime.snapshots import StopSignals, capture_rng_state, restore_rng_state

__all__ = ["Fitter", "FitResult", "Interrupted", "LearningRateSchedule", "TrainingData", "classification_loss",
           "epoch_loader", "fit", "predict", "steps_per_epoch"]


class Interrupted(Exception):
    """A stop signal arrived; the loop stopped at a safe point and its caller writes the state."""


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


def epoch_order(data: TrainingData, regime: RegimeConfig, generator: torch.Generator) -> torch.Tensor:
    """One epoch's clip indices: a permutation, or (weighted sampling) `weighted_sampling` draws."""
    if regime.weighted_sampling:
        if data.sample_weights is None:
            raise ConfigError("weighted_sampling needs a `weight` column in the cached training set")
        if regime.weighted_sampling > len(data.dataset):
            raise ConfigError(f"weighted_sampling draws {regime.weighted_sampling} clips without replacement "
                              f"from only {len(data.dataset)}")
        # torch.multinomial without replacement, as the official sampler draws each epoch.
        return torch.multinomial(data.sample_weights.double(), regime.weighted_sampling, replacement=False,
                                 generator=generator)
    return torch.randperm(len(data.dataset), generator=generator)


def batch_loader(dataset: Dataset, order: torch.Tensor | None, batch_size: int, num_workers: int,
                 pin_memory: bool = False) -> DataLoader:
    """Batches of `dataset` in `order` (None: dataset order). Its own generator: creating the loader draws
    nothing from the global torch RNG that the augmentations use. `pin_memory` (for a GPU): batches in pinned
    memory, which reach the GPU without waiting for it."""
    return DataLoader(dataset, batch_size=batch_size, sampler=None if order is None else order.tolist(),
                      num_workers=num_workers, drop_last=False, generator=torch.Generator(), pin_memory=pin_memory)


def epoch_loader(data: TrainingData, regime: RegimeConfig, generator: torch.Generator, num_workers: int
                 ) -> DataLoader:
    """One epoch of (fbank, target, index) batches (see `epoch_order`)."""
    return batch_loader(IndexedDataset(data.dataset), epoch_order(data, regime, generator), regime.batch_size,
                        num_workers)


class Fitter:
    """Trains `classifier` for `total_steps` optimiser steps; resumable at every step boundary.

    `on_steady` is called once, as soon as the loop has run every kind of step it has (a step, a log read,
    an evaluation point and a state, those of them this run has): from then on its steps run no function the
    first ones did not (the job harness pauses the code recorder there), until `on_steady_end`, called when the
    loop stops stepping however it stops. `fused_optimizer`: AdamW's fused kernel (default: on CUDA).
    """

    def __init__(self, classifier: EncoderClassifier, data: TrainingData, regime: RegimeConfig, loss_kind: str,
                 augmentation: TrainingAugmentation, total_steps: int, warmup_steps: int, device: torch.device,
                 seed: int, num_workers: int = 0, on_steady: Callable[[], None] | None = None,
                 on_steady_end: Callable[[], None] | None = None, fused_optimizer: bool | None = None) -> None:
        self.classifier, self.data, self.regime, self.loss_kind = classifier, data, regime, loss_kind
        self.augmentation, self.total_steps, self.device = augmentation, total_steps, device
        self.num_workers = num_workers
        self.on_steady, self.on_steady_end = on_steady, on_steady_end
        classifier.to(device)
        groups = layer_decay_groups(classifier, regime.weight_decay, regime.layer_decay)
        fused = device.type == "cuda" if fused_optimizer is None else fused_optimizer
        self.optimizer = torch.optim.AdamW(groups, lr=regime.lr, betas=tuple(regime.betas), eps=1e-8,
                                           **({"fused": True} if fused else {}))
        self.schedule = LearningRateSchedule(regime.lr, regime.min_lr, warmup_steps, total_steps)
        self.scales = [group["lr_scale"] for group in self.optimizer.param_groups]
        self.trainable = [p for group in groups for p in group["params"]]
        self.forward = compiled(classifier) if regime.compile else classifier
        self.generator = torch.Generator().manual_seed(seed)
        self.per_epoch = steps_per_epoch(len(data.dataset), regime)
        self.step, self.batch_in_epoch, self.order = 0, 0, None
        self.losses: list[float] = []
        self._unread: list[tuple[int, torch.Tensor]] = []   # (step, loss on the device) since the last read
        self.pending_evaluation = False             # stopped inside an evaluation point: redo it on resume
        self._rng_at_evaluation: dict[str, Any] | None = None
        self._rng_to_restore: dict[str, Any] | None = None

    def learning_rates(self, step: int) -> list[float]:
        """The lr of update `step` (0-based) of every parameter group, in optimizer order."""
        return group_learning_rates(step, self.schedule, self.scales, self.regime.layer_decay_schedule)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything the next steps depend on, as tensors and plain data (torch.load weights_only). The loop
        reads its losses first (`run` writes states only at step boundaries where it has)."""
        if self._unread:
            raise RuntimeError("Fitter.state_dict() with unread losses: take it between steps of `run`")
        def on_cpu(module: torch.nn.Module) -> dict[str, torch.Tensor]:
            return {name: tensor.detach().cpu() for name, tensor in module.state_dict().items()}

        frozen = self.classifier.frozen_backbone  # a frozen backbone is rebuilt unchanged from the checkpoint
        return {"step": self.step, "batch_in_epoch": self.batch_in_epoch, "order": self.order,
                "generator": self.generator.get_state(), "losses": torch.tensor(self.losses, dtype=torch.float64),
                "optimizer": self.optimizer.state_dict(), "head": on_cpu(self.classifier.head),
                "encoder": None if frozen else on_cpu(self.classifier.encoder),
                "pending_evaluation": self.pending_evaluation,
                "rng": self._rng_at_evaluation if self.pending_evaluation else capture_rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.classifier.head.load_state_dict(state["head"])
        if state["encoder"] is not None:
            self.classifier.encoder.load_state_dict(state["encoder"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.step, self.batch_in_epoch, self.order = state["step"], state["batch_in_epoch"], state["order"]
        self.losses = state["losses"].tolist()
        self.pending_evaluation = state["pending_evaluation"]
        self._rng_at_evaluation = state["rng"] if self.pending_evaluation else None
        self._rng_to_restore = state["rng"]

    # ------------------------------------------------------------------ loop
    def run(self, on_evaluation_point: Callable[[int, float], None] | None = None,
            evaluation_interval: int | None = None, log: Callable[[dict], None] | None = None,
            stop: StopSignals | None = None, checkpoint: Callable[[], None] | None = None,
            checkpoint_every: int | None = None, progress: Progress | None = None) -> FitResult:
        """Train up to `total_steps`; call `on_evaluation_point(step, epoch)` every `evaluation_interval`
        steps and after the last step, `checkpoint()` every `checkpoint_every` steps. On a stop signal,
        raise Interrupted at the next step boundary (or between the batches of an evaluation point)."""
        started = time.perf_counter()
        if self._rng_to_restore is not None:
            restore_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        self.classifier.train()
        if self.pending_evaluation:
            self._evaluate(on_evaluation_point)
        batch_size, log_every = self.regime.batch_size, self.regime.log_every
        steady = self._steady_state(on_evaluation_point is not None, checkpoint is not None and checkpoint_every,
                                    checkpoint_every)
        first = True  # read after this run's first step too: its progress lines show a loss from the start
        try:
            while self.step < self.total_steps:
                if self.order is None or self.batch_in_epoch * batch_size >= len(self.order):
                    self.order, self.batch_in_epoch = epoch_order(self.data, self.regime, self.generator), 0
                remaining = self.order[self.batch_in_epoch * batch_size:]
                for fbank, targets, index in batch_loader(IndexedDataset(self.data.dataset), remaining, batch_size,
                                                          self.num_workers, pin_memory=self.device.type == "cuda"):
                    self._unread.append((self.step + 1, self._update(fbank, targets, index)))
                    self.batch_in_epoch += 1
                    last = self.step >= self.total_steps
                    evaluates = on_evaluation_point is not None and (
                        last or bool(evaluation_interval and self.step % evaluation_interval == 0))
                    stopping = stop is not None and stop.requested
                    checkpoints = (checkpoint is not None and bool(checkpoint_every)
                                   and self.step % checkpoint_every == 0 and not last)
                    if first or last or evaluates or stopping or checkpoints or self.step % log_every == 0:
                        self._read_losses(log)  # before anything is written after a non-finite loss
                        steady.saw("log read")
                        first = False
                    if progress is not None:
                        progress.update(1, **({"loss": self.losses[-1]} if self.losses else {}))
                    if evaluates:
                        self.pending_evaluation = True
                        self._evaluate(on_evaluation_point)
                        steady.saw("evaluation point")
                    if stopping:
                        raise Interrupted(f"stopped after step {self.step} of {self.total_steps}")
                    if checkpoints:
                        checkpoint()
                        steady.saw("state")
                    steady.saw("step")
                    if last:
                        break
        finally:
            steady.end()  # the code after the loop (selection, test predictions) is not its steady state
        return FitResult(self.step, self.step / self.per_epoch, time.perf_counter() - started, self.losses)

    def _steady_state(self, evaluates: bool, checkpoints: bool, checkpoint_every: int | None):
        """Which kinds of step this run has (an evaluation point only with a callback, a state only when one
        falls on a step before the last), for `on_steady`."""
        kinds = {"step", "log read"} | ({"evaluation point"} if evaluates else set())
        if checkpoints and (self.step // checkpoint_every + 1) * checkpoint_every < self.total_steps:
            kinds.add("state")
        return SteadyState(kinds, self.on_steady, self.on_steady_end)

    def _read_losses(self, log: Callable[[dict], None] | None) -> None:
        """Bring the unread losses to the host in one transfer; log each step's record in order, or stop at the
        first non-finite one (the records before it are logged, as when they were read one by one)."""
        if not self._unread:
            return
        values = torch.stack([loss for _, loss in self._unread]).tolist()
        steps = [step for step, _ in self._unread]
        self._unread = []
        for step, loss in zip(steps, values):
            if not math.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss at step {step - 1}")
            self.losses.append(loss)
            if log is not None:
                log({"step": step, "loss": loss, "lr": self.schedule(step - 1)})

    def _update(self, fbank: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """One optimiser step; returns its loss, detached, on the device (nothing here waits for the device)."""
        fbank, targets = self.augmentation(fbank.to(self.device, non_blocking=True),
                                           targets.to(self.device, non_blocking=True), self.data.num_frames[index])
        for group, lr in zip(self.optimizer.param_groups, self.learning_rates(self.step)):
            group["lr"] = lr
        with autocast(self.device, self.regime.precision):
            logits = self.forward(fbank)
        loss = classification_loss(logits.float(), targets, self.loss_kind, self.regime.label_smoothing)
        # The gradients handed over at the leaves, as zero_grad(set_to_none=True) + backward() leave them, without
        # one AccumulateGrad node per parameter (sslam.train.loop.backpropagate; no DDP here).
        for parameter, grad in zip(self.trainable, torch.autograd.grad(loss, self.trainable, allow_unused=True)):
            parameter.grad = grad
        if self.regime.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.regime.grad_clip)
        self.optimizer.step()
        self.step += 1
        return loss.detach()

    def _evaluate(self, on_evaluation_point: Callable[[int, float], None] | None) -> None:
        self._rng_at_evaluation = capture_rng_state()
        if on_evaluation_point is not None:
            on_evaluation_point(self.step, self.step / self.per_epoch)
        self.pending_evaluation, self._rng_at_evaluation = False, None
        self.classifier.train()


def fit(classifier: EncoderClassifier, data: TrainingData, regime: RegimeConfig, loss_kind: str,
        augmentation: TrainingAugmentation, total_steps: int, warmup_steps: int, device: torch.device,
        seed: int, num_workers: int = 0,
        on_evaluation_point: Callable[[int, float], None] | None = None,
        evaluation_interval: int | None = None, log: Callable[[dict], None] | None = None) -> FitResult:
    """Train `classifier` for `total_steps` optimiser steps in one go (see `Fitter` for a resumable run)."""
    fitter = Fitter(classifier, data, regime, loss_kind, augmentation, total_steps, warmup_steps, device, seed,
                    num_workers)
    return fitter.run(on_evaluation_point, evaluation_interval, log)


@torch.no_grad()
def predict(classifier: EncoderClassifier, dataset: Dataset, batch_size: int, device: torch.device,
            task: str, num_workers: int = 0, precision: str = "fp32", stop: StopSignals | None = None,
            forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(targets (N, C), scores (N, C)) over `dataset` in its order; scores are sigmoid probabilities
    (multilabel) or softmax probabilities (multiclass). `forward`: the classifier's compiled forward, if any.
    A stop signal raises Interrupted between two batches."""
    classifier.eval()
    classifier.to(device)
    forward = forward if forward is not None else classifier
    all_targets, all_scores = [], []
    for fbank, targets in batch_loader(dataset, None, batch_size, num_workers):
        if stop is not None and stop.requested:
            raise Interrupted("stopped during an evaluation pass")
        with autocast(device, precision):
            logits = forward(fbank.to(device)).float()
        scores = torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=-1)
        all_targets.append(targets.numpy())
        all_scores.append(scores.cpu().numpy())
    return np.concatenate(all_targets), np.concatenate(all_scores)
