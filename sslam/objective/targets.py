"""Teacher regression targets (spec algorithm.md §5; paper §3.1).

The teacher's per-block FFN outputs (taken before the residual and the block's second LayerNorm)
are instance-normalised layer by layer, averaged over the top k layers, and LayerNormed per token.
Everything here runs in fp32 whatever the autocast dtype of the teacher forward, because the
normalisation statistics of bf16/fp16 activations are too coarse for regression targets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from sslam.model.encoder import AudioEncoder

NORM_EPS = 1e-5  # F.instance_norm / F.layer_norm defaults, as the official make_targets uses


def make_targets(layer_outputs: Sequence[torch.Tensor], top_k: int) -> torch.Tensor:
    """Last `top_k` of the (N, L, D) per-layer outputs (CLS already removed) -> (N, L, D) fp32 targets.

    1. instance norm per layer, per sample and channel across the L tokens (no affine);
    2. average over the k layers;
    3. LayerNorm over the D channels per token (no affine).
    The token count matters: statistics are taken over whatever tokens are passed (the SRL's
    second teacher pass deliberately passes only the mixed-region tokens).
    """
    if not 1 <= top_k <= len(layer_outputs):
        raise ValueError(f"top_k {top_k} must lie in 1..{len(layer_outputs)} (the number of layers)")
    selected = torch.stack(list(layer_outputs[-top_k:])).float()  # (k, N, L, D)
    layers, batch, length, dim = selected.shape
    # One instance norm over the k·N instances at once instead of one per layer: each (instance, channel)
    # is normalised over its own L tokens either way, with the same arithmetic, in a tenth of the calls.
    # instance_norm wants channels second: (k·N, L, D) -> (k·N, D, L) and back.
    normalised = F.instance_norm(selected.view(layers * batch, length, dim).transpose(1, 2), eps=NORM_EPS)
    normalised = normalised.transpose(1, 2).contiguous().view(layers, batch, length, dim)
    averaged = normalised.mean(dim=0)
    return F.layer_norm(averaged, averaged.shape[-1:], eps=NORM_EPS)


def global_target(targets: torch.Tensor) -> torch.Tensor:
    """(N, L, D) normalised targets -> (N, D) token mean: pooled AFTER the normalisation."""
    return targets.mean(dim=1)


def strip_cls(layer_outputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Drop the CLS position (index 0) from each (N, 1+L, D) layer output."""
    return [layer[:, 1:] for layer in layer_outputs]


@dataclass
class TeacherTargets:
    """Targets for one batch of clips (one row per clip, not per clone)."""

    local: torch.Tensor   # (B, L, D) regression targets of the masked tokens
    pooled: torch.Tensor  # (B, D) regression target of the student's CLS output


@torch.no_grad()
def teacher_targets(teacher: AudioEncoder, fbank: torch.Tensor, local_layers: int,
                    global_layers: int) -> TeacherTargets:
    """Teacher pass on the full, unmasked input (1 + L tokens) and both kinds of target.

    The local and the global target may average different numbers of layers (12 and 1 in the
    official Stage 2), so they come from two make_targets calls over the same FFN outputs.
    """
    _, ffn_outputs = teacher.forward_features(fbank, return_ffn=True)
    layers = strip_cls(ffn_outputs)
    local = make_targets(layers, local_layers)
    pooled_source = local if global_layers == local_layers else make_targets(layers, global_layers)
    return TeacherTargets(local=local, pooled=global_target(pooled_source))


@torch.no_grad()
def teacher_targets_of_batches(teacher: AudioEncoder, batches: dict[str, torch.Tensor], local_layers: int,
                               global_layers: dict[str, int]) -> dict[str, TeacherTargets]:
    """`teacher_targets` of several batches of clips (Stage 2's unmixed and mixed halves) from ONE teacher pass
    over their concatenation, as the official code runs its 2B batch: every target is a function of its own
    clip, so the batches can share the pass. `global_layers[name]`: the pooled target's layer count of each."""
    names = list(batches)
    joint = batches[names[0]] if len(names) == 1 else torch.cat([batches[name] for name in names])
    _, ffn_outputs = teacher.forward_features(joint, return_ffn=True)
    layers = strip_cls(ffn_outputs)
    local = make_targets(layers, local_layers)
    pooled = {count: global_target(local if count == local_layers else make_targets(layers, count))
              for count in sorted({global_layers[name] for name in names})}
    targets, start = {}, 0
    for name in names:
        rows = slice(start, start + batches[name].shape[0])
        targets[name] = TeacherTargets(local=local[rows], pooled=pooled[global_layers[name]][rows])
        start = rows.stop
    return targets
