"""The one warm-up + cosine learning-rate schedule (fairseq's `cosine` scheduler), shared by pretraining
(`sslam.train.schedule`) and downstream training (`sslam.evaluation.training`).

A pure function of the number of optimizer updates, so a resumed run reproduces it exactly. Step convention
(fairseq's): the update with 0-based index k runs at `warmup_cosine(k, ...)`. Pretraining warms up from 0
(`warmup_start=0`, so its very first update has lr 0); fine-tuning warms up from its `min_lr`.
No torch here: the workflow and the configs may use it without importing torch.
"""
from __future__ import annotations

import math


def warmup_cosine(step: int, peak: float, warmup_steps: int, total_steps: int, floor: float = 0.0,
                  warmup_start: float = 0.0) -> float:
    """lr of update `step` (0-based): `warmup_start` → `peak` linearly over `warmup_steps`, then a half cosine
    from `peak` down to `floor` at `total_steps`, held there for any update beyond it. Without decay steps
    (warm-up as long as the run) the lr stays at the peak after the warm-up."""
    if step < warmup_steps:
        return warmup_start + (peak - warmup_start) * step / warmup_steps
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 0:
        return peak
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
