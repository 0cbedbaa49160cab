"""The downstream lr schedule: warm-up from `min_lr` to the peak, cosine back to `min_lr` (fairseq's cosine
scheduler, `sslam.runtime.schedules.warmup_cosine`), and how it is applied to the layer-decay parameter groups.

`layer_decay_schedule` (RegimeConfig) picks the rule for a group whose factor is s (block i of d: 0.65^(d−i)):

* `official` (default; the official fine-tuning optimiser): every group has its own scheduler in which only
  the PEAK is multiplied by s. The warm-up start and the floor stay at the unscaled `min_lr`; where the
  scaled peak falls below `min_lr`, fairseq clamps the group's `min_lr` (and so its warm-up start) to the
  peak, and the group trains at a constant lr: AS fine-tuning (peak 5e-5, 12 blocks) runs blocks 0–2 at
  2.8e-7, 4.4e-7 and 6.7e-7 throughout.
* `scaled`: the whole schedule, warm-up start and floor included, is multiplied by s (this project's rule
  before it followed the official code; up to 98 % lower per group).

Groups with s = 1 (head, patch embedding, CLS token) get the same lr under both rules.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sslam.runtime.errors import ConfigError
from sslam.runtime.schedules import warmup_cosine

LAYER_DECAY_RULES = ("official", "scaled")


@dataclass(frozen=True)
class LearningRateSchedule:
    """Linear warm-up from min_lr to peak over `warmup_steps`, then cosine from peak to min_lr."""

    peak_lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int

    def __call__(self, step: int) -> float:
        return warmup_cosine(step, self.peak_lr, self.warmup_steps, self.total_steps, floor=self.min_lr,
                             warmup_start=self.min_lr)

    def scaled_peak(self, step: int, scale: float) -> float:
        """The official per-group rule: peak × scale, start and floor min(min_lr, peak × scale)."""
        peak = self.peak_lr * scale
        floor = min(self.min_lr, peak)
        return warmup_cosine(step, peak, self.warmup_steps, self.total_steps, floor=floor, warmup_start=floor)


def group_learning_rates(step: int, schedule: LearningRateSchedule, scales: Sequence[float],
                         rule: str = "official") -> list[float]:
    """The lr of update `step` (0-based) for each parameter group of layer-decay factor `scales[g]`."""
    if rule == "official":
        return [schedule.scaled_peak(step, scale) for scale in scales]
    if rule == "scaled":
        base = schedule(step)
        return [base * scale for scale in scales]
    raise ConfigError(f"layer_decay_schedule must be one of {', '.join(LAYER_DECAY_RULES)}, got {rule!r}")
