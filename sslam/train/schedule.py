"""The pretraining learning-rate schedule: linear warm-up from 0, then cosine down to `min_lr`.

The formula is `sslam.runtime.schedules.warmup_cosine` (shared with fine-tuning); this module fixes pretraining's
warm-up start (0, fairseq's `warmup_init_lr`) and wraps it as a `LambdaLR`. Step convention: the update with
0-based index k runs at `learning_rate(k)`, so the very first update has lr 0.
(The teacher's EMA decay schedule lives with the teacher: `sslam.model.teacher.ema_decay`.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sslam.runtime.schedules import warmup_cosine


def learning_rate(step: int, peak: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """lr of update `step` (0-based): 0 → peak linearly over `warmup_steps`, then cosine down to `min_lr`
    at `total_steps` (and held there for any update beyond it)."""
    return warmup_cosine(step, peak, warmup_steps, total_steps, floor=min_lr, warmup_start=0.0)


@dataclass
class WarmupCosine:
    """`LambdaLR` multiplier (relative to the peak lr) of `learning_rate`; a dataclass so that it pickles
    into the scheduler's state_dict with its settings."""

    warmup_steps: int
    total_steps: int
    min_lr_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        return learning_rate(step, 1.0, self.warmup_steps, self.total_steps, self.min_lr_ratio)


def build_scheduler(optimizer: torch.optim.Optimizer, peak_lr: float, warmup_steps: int, total_steps: int,
                    min_lr: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Scheduler to be stepped once after every optimizer update (its `last_epoch` = updates done).

    The optimizer's groups must carry `lr = peak_lr`; LambdaLR scales that base by the multiplier.
    """
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(warmup_steps, total_steps, min_lr / peak_lr))
