"""The EMA teacher (spec algorithm.md §5).

The teacher is an exponential moving average of the student ENCODER (patch embedding, CLS token,
pre-LayerNorm and all blocks); the decoder is student-only and never enters it. Its parameters
are kept in fp32 so that updates of size (1 − 0.99999)·Δ are not lost to rounding; run its
forward under autocast for mixed precision. The fixed sin-cos table is a buffer and is copied.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
from torch import nn

from sslam.model.encoder import AudioEncoder


def ema_decay(step: int, start: float, end: float, anneal_steps: int) -> float:
    """Linear anneal from `start` (step 0) to `end` (step `anneal_steps`), then held at `end`.

    The values are the training stage's (`TrainConfig.ema_start/ema_end/ema_anneal_steps`, their one
    owner; official: 0.9998 → 0.99999 over 100k updates, restarted in Stage 2).

    `step` counts optimizer updates; the official trainer sets it at the start of update k ≥ 1,
    so the teacher tracks the student after every update (Stage 2 restarts the count at 0).
    """
    if step < 0:
        raise ValueError(f"EMA step must be >= 0, got {step}")
    if anneal_steps <= 0 or step >= anneal_steps:
        return end
    return start + (end - start) * step / anneal_steps


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod
        else:
            return module


class EMATeacher(nn.Module):
    """`.encoder` is an fp32 deep copy of the student that stays in eval mode without gradients.

    `state_dict()` has the nn.Module layout (keys prefixed with "encoder."); checkpoints store the
    bare encoder layout `teacher.encoder.state_dict()`, and `load_state_dict` accepts either.
    """

    def __init__(self, encoder: AudioEncoder) -> None:
        super().__init__()
        self.encoder = copy.deepcopy(unwrap(encoder)).float()
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> "EMATeacher":
        # The teacher always runs in eval mode (no drop path), whatever its parent's mode.
        return super().train(False)

    @torch.no_grad()
    def update(self, student_encoder: nn.Module, decay: float) -> None:
        """teacher ← decay·teacher + (1 − decay)·student for every parameter; buffers are copied."""
        student = unwrap(student_encoder)
        student_params = dict(student.named_parameters())
        for name, teacher_param in self.encoder.named_parameters():
            if name not in student_params:
                raise KeyError(f"student encoder has no parameter {name!r}: is it an encoder?")
            student_param = student_params[name].detach().to(teacher_param.dtype)
            teacher_param.lerp_(student_param, 1.0 - decay)
        student_buffers = dict(student.named_buffers())
        for name, teacher_buffer in self.encoder.named_buffers():
            teacher_buffer.copy_(student_buffers[name])

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            return self.encoder.forward_features(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Accepts this module's own layout or a bare encoder state_dict (the checkpoint layout)."""
        if not any(key.startswith("encoder.") for key in state_dict):
            state_dict = {f"encoder.{key}": value for key, value in state_dict.items()}
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.encoder.float().requires_grad_(False)
        return result


__all__ = ["EMATeacher", "ema_decay", "unwrap"]
