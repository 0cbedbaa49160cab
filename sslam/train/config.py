"""Typed configuration of one pretraining stage (YAML `pretrain.stage1` / `pretrain.stage2`).

The dataclass defaults are the official Stage-1 (EAT) recipe; `TrainConfig.stage2()` holds the official
Stage-2 values. `train_config_for_stage` starts from the stage's official values and applies only the keys
that the YAML section sets, so a study file lists just what it changes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sslam.runtime.configuration import check_ranges, from_dict, section
from sslam.runtime.errors import ConfigError

if TYPE_CHECKING:  # torch is imported only where a dtype is needed: the study config validates without it
    import torch


@dataclass
class TrainConfig:
    """Optimisation, EMA and bookkeeping settings of one pretraining stage (official values by default).

    Official vs paper (algorithm.md §8, paper Table 7):
      * `min_lr`: the official cosine decays to 0; the paper's table says 1e-6.
      * `decay_all_parameters`: the official fairseq composite optimiser never applies its weight-decay
        exemptions, so every parameter (LayerNorm weights, biases, CLS token included) is decayed. Set it to
        False for the textbook AdamW grouping where 1-D parameters, biases and the CLS token are exempt.
    """

    steps: int = 400_000                      # optimizer updates
    batch_size: int = 12                      # clips per device (Stage 2 adds as many mixed copies)
    lr: float = 5e-4                          # peak learning rate
    min_lr: float = 0.0                       # cosine floor (paper Table 7: 1e-6)
    warmup_steps: int = 53_333                # linear warm-up from 0 to `lr`
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.05
    decay_all_parameters: bool = True         # True = official behaviour (exemptions inactive)
    clip_grad_norm: float = 4.0               # global L2 norm; 0 disables clipping
    # The teacher's EMA schedule has this one owner (per stage: Stage 2 restarts the anneal).
    ema_start: float = 0.9998                 # teacher decay after the first update
    ema_end: float = 0.99999                  # teacher decay from `ema_anneal_steps` on
    ema_anneal_steps: int = 100_000           # linear anneal length, in optimizer updates
    checkpoint_every: int = 5_000             # write the resumable state every N updates (and at the end)
    log_every: int = 100                      # append a metrics.jsonl line every N updates
    num_workers: int = 4                      # DataLoader worker processes per device
    seed: int = 1                             # fairseq common.seed of the official runs
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    # torch.compile the objective's device side (its backward too); auto: on CUDA only. false opts out.
    compile: bool | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        check_ranges(self, steps=">= 1", batch_size=">= 1", lr="> 0", min_lr=">= 0", warmup_steps=">= 0",
                     betas="[0, 1)", eps="> 0", weight_decay=">= 0", clip_grad_norm=">= 0", ema_start="(0, 1]",
                     ema_end="(0, 1]", ema_anneal_steps=">= 0", checkpoint_every=">= 1", log_every=">= 1",
                     num_workers=">= 0", seed=">= 0")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps must lie in [0, steps={self.steps}], got {self.warmup_steps}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr must lie in [0, lr={self.lr}], got {self.min_lr}")
        self.betas = tuple(self.betas)
        if len(self.betas) != 2:
            raise ValueError(f"betas must hold two numbers, got {self.betas}")

    @classmethod
    def stage1(cls, **overrides: Any) -> "TrainConfig":
        """Official Stage 1 (EAT): 400k updates, warm-up 53,333, peak lr 5e-4."""
        return cls(**overrides)

    @classmethod
    def stage2(cls, **overrides: Any) -> "TrainConfig":
        """Official Stage 2: 200k updates, warm-up 25k, peak lr 5e-5; the EMA anneal restarts."""
        values = dict(steps=200_000, warmup_steps=25_000, lr=5e-5)
        values.update(overrides)
        return cls(**values)

    def compiles(self, device_type: str) -> bool:
        """Whether a run on `device_type` compiles its step (`compile: auto` = on CUDA, where the host's time
        per step is what compiling saves; elsewhere the compile time rarely pays back)."""
        return self.compile is True or (self.compile == "auto" and device_type == "cuda")

    def autocast_dtype(self, device_type: str) -> torch.dtype | None:
        """The dtype to autocast the forward pass to, or None for plain fp32."""
        if self.precision == "fp32" or (self.precision == "auto" and device_type != "cuda"):
            return None
        import torch

        return torch.bfloat16


def train_config_for_stage(config: dict[str, Any], stage: int) -> TrainConfig:
    """`pretrain.stage{stage}` of a study config on top of that stage's official values."""
    if stage not in (1, 2):
        raise ConfigError(f"stage must be 1 or 2, got {stage}")
    where = f"pretrain.stage{stage}"
    data = section(config, where)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    official = TrainConfig.stage1() if stage == 1 else TrainConfig.stage2()
    # Validate the YAML's keys and types first (unknown keys raise, naming the key), then lay the keys
    # it sets over the stage's official values, so Stage 2 keeps its own lr/steps/warm-up defaults.
    merged = {**dataclasses.asdict(official), **data}
    return from_dict(TrainConfig, merged, where=where)
