"""The EMA teacher (spec algorithm.md §5).

The teacher is an exponential moving average of the student ENCODER (patch embedding, CLS token,
pre-LayerNorm and all blocks); the decoder is student-only and never enters it. Its parameters
are kept in fp32 so that updates of size (1 − 0.99999)·Δ are not lost to rounding; run its
forward under autocast for mixed precision. The fixed sin-cos table is a buffer and is copied.
"""
from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass
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
        self._pairs: _Pairs | None = None  # the teacher's tensors matched to a student's, built at the first update

    def train(self, mode: bool = True) -> "EMATeacher":
        # The teacher always runs in eval mode (no drop path), whatever its parent's mode.
        return super().train(False)

    @torch.no_grad()
    def update(self, student_encoder: nn.Module, decay: float) -> None:
        """teacher ← decay·teacher + (1 − decay)·student for every parameter; buffers are copied.

        One fused call over all parameters (`torch._foreach_lerp_`: the same lerp per element, in one dispatch)
        and one for the buffers. Which student tensor feeds which teacher tensor is worked out by name once, at
        the first update from a given student; where the student's parameters lie end to end in one buffer (the
        pretraining loop's `FlatParameters`), the teacher's are laid out in the same order and each such run is
        one tensor, so the update is one lerp per run instead of one per parameter.
        """
        pairs = self._paired_with(unwrap(student_encoder))
        sources = pairs.student_runs
        if pairs.convert:  # a student in another precision: average its values in the teacher's fp32
            sources = [source.to(target.dtype) for source, target in zip(sources, pairs.teacher_runs)]
        torch._foreach_lerp_(pairs.teacher_runs, sources, 1.0 - decay)
        if pairs.teacher_buffers:
            torch._foreach_copy_(pairs.teacher_buffers, pairs.student_buffers)

    def _paired_with(self, student: nn.Module) -> "_Pairs":
        """The teacher's parameters and buffers with the student's of the same names (cached per student,
        its device and its dtype: moving or converting a module keeps its tensors, not their type), merged into
        runs that lie end to end in both."""
        first = next(student.parameters(), None)
        kind = None if first is None else (first.device, first.dtype)
        if self._pairs is None or self._pairs.student() is not student or self._pairs.kind != kind:
            student_params, student_buffers = dict(student.named_parameters()), dict(student.named_buffers())
            teacher_params, sources = [], []
            for name, teacher_param in self.encoder.named_parameters():
                if name not in student_params:
                    raise KeyError(f"student encoder has no parameter {name!r}: is it an encoder?")
                teacher_params.append(teacher_param)
                sources.append(student_params[name].detach())
            teacher_buffers = [buffer for _, buffer in self.encoder.named_buffers()]
            buffer_sources = [student_buffers[name] for name, _ in self.encoder.named_buffers()]
            convert = any(s.dtype != t.dtype for s, t in zip(sources, teacher_params))
            teacher_runs, student_runs = matched_runs(teacher_params, sources)
            self._pairs = _Pairs(weakref.ref(student), kind, teacher_runs, student_runs, convert, teacher_buffers,
                                 buffer_sources)
        return self._pairs

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            return self.encoder.forward_features(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Accepts this module's own layout or a bare encoder state_dict (the checkpoint layout)."""
        if not any(key.startswith("encoder.") for key in state_dict):
            state_dict = {f"encoder.{key}": value for key, value in state_dict.items()}
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.encoder.float().requires_grad_(False)
        self._pairs = None  # `assign=True` puts new tensors in place
        return result


@dataclass
class _Pairs:
    """The tensors one EMA update reads and writes, in matching order."""

    student: weakref.ref                 # the student they were matched with
    kind: tuple | None                   # (device, dtype) of its first parameter then
    teacher_runs: list[torch.Tensor]     # 1-D views, each over teacher parameters lying end to end
    student_runs: list[torch.Tensor]     # the student's matching views
    convert: bool                        # whether the student's dtypes differ from the teacher's fp32
    teacher_buffers: list[torch.Tensor]
    student_buffers: list[torch.Tensor]


def matched_runs(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Pairs of same-shaped tensors -> (target views, source views) covering the same elements, one pair per run
    of sources lying end to end in one storage. The targets are first laid out in one buffer of their own in the
    sources' storage order (their `.data` moves there; values, shapes and identities stay), so that every run of
    sources has a run of targets beside it."""
    if not targets:
        return [], []
    order = sorted(range(len(sources)), key=lambda i: (sources[i].untyped_storage().data_ptr(),
                                                       sources[i].storage_offset()))
    kinds = {(t.device, t.dtype) for t in targets}
    if len(kinds) == 1 and all(t.is_contiguous() for t in targets):
        device, dtype = kinds.pop()
        buffer = torch.empty(sum(t.numel() for t in targets), device=device, dtype=dtype)
        offset = 0
        for i in order:
            end = offset + targets[i].numel()
            buffer[offset:end].copy_(targets[i].reshape(-1))
            targets[i].data = buffer[offset:end].view_as(targets[i])
            offset = end
    target_runs, source_runs = [], []
    run: list[int] = []
    for i in order:
        if run and not (_follows(sources[run[-1]], sources[i]) and _follows(targets[run[-1]], targets[i])):
            target_runs.append(_span(targets, run))
            source_runs.append(_span(sources, run))
            run = []
        run.append(i)
    target_runs.append(_span(targets, run))
    source_runs.append(_span(sources, run))
    return target_runs, source_runs


def _follows(previous: torch.Tensor, tensor: torch.Tensor) -> bool:
    """Whether `tensor` starts where `previous` ends in the same storage (both contiguous, same dtype)."""
    return (previous.is_contiguous() and tensor.is_contiguous() and previous.dtype == tensor.dtype
            and previous.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr()
            and tensor.storage_offset() == previous.storage_offset() + previous.numel())


def _span(tensors: list[torch.Tensor], run: list[int]) -> torch.Tensor:
    """One 1-D view over the tensors of `run`, which lie end to end (a lone tensor: itself)."""
    first = tensors[run[0]]
    if len(run) == 1:
        return first
    size = sum(tensors[i].numel() for i in run)
    return first.new_empty(0).set_(first.untyped_storage(), first.storage_offset(), (size,), (1,))


__all__ = ["EMATeacher", "ema_decay", "matched_runs", "unwrap"]
