"""The source retention loss, SRL (paper §3.2.2, Eq. 4, Tables 5 and 11; spec algorithm.md §6, §11.7).

THE ONE PLACE for the SRL: its target, its aggregation and its two loss terms. Changing the SRL means
editing this file only; PretrainingObjective just calls `source_retention_terms`.

Notation (paper): the student sees the mixture of the base clip S2 (= clip i) and the foreign clip S1
(= clip i − 1, from the batch roll). The target for a mixed-half token is
    the base clip's own teacher feature            in the unmixed regions,
    aggregate(base feature, foreign feature)       in the mixed regions (mean by default).
The base features are the main teacher pass's local targets of the unmixed half. The foreign features
come from a SECOND teacher pass over the un-rolled batch from which the unmixed-region tokens are
dropped after the positional embedding, CLS and pre-LayerNorm: the teacher then attends only to the
part of S1 that is audible in the mixture, and the targets' instance norm runs over those tokens only.
"""
from __future__ import annotations

import torch

from sslam.model.encoder import AudioEncoder
from sslam.objective.config import SrlAggregation
from sslam.objective.losses import LossTerm, global_loss, local_loss
from sslam.objective.mixing import MixRegions, foreign_clips
from sslam.objective.targets import global_target, make_targets, strip_cls


def mixed_token_mask(regions: MixRegions, freq_patches: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(L,) bool over the time-major token grid: True for tokens in mixed time-patch rows."""
    return (~regions.unmixed_patch_rows(device)).repeat_interleave(freq_patches)


@torch.no_grad()
def foreign_dropped_features(teacher: AudioEncoder, fbank: torch.Tensor, token_is_mixed: torch.Tensor,
                             top_k: int) -> torch.Tensor:
    """Second teacher pass: (B, T, F) un-rolled clips -> (B, L_mixed, D) targets of their mixed-region tokens.

    Tokens are dropped after `add_cls_and_norm`, as the official code does, so they keep their own
    positional embedding and the CLS token stays in front.
    """
    sequence = teacher.add_cls_and_norm(teacher.embed(fbank))
    keep_cls = torch.ones(1, dtype=torch.bool, device=token_is_mixed.device)
    sequence = sequence[:, torch.cat([keep_cls, token_is_mixed])]
    _, ffn_outputs = teacher.forward_blocks(sequence, return_ffn=True)
    return make_targets(strip_cls(ffn_outputs), top_k)


def srl_target(base: torch.Tensor, foreign_mixed_tokens: torch.Tensor, token_is_mixed: torch.Tensor,
               aggregation: SrlAggregation = "mean") -> torch.Tensor:
    """(B, L, D) base features + (B, L_mixed, D) foreign features (already aligned: row i = clip i−1)
    -> (B, L, D) SRL targets.

    The foreign map is rebuilt on the full grid from the base features with the mixed tokens
    overwritten, so aggregating it with the base leaves the unmixed regions equal to the base.
    The result is not re-normalised (the official code does not).
    """
    rebuilt = base.clone()
    rebuilt[:, token_is_mixed] = foreign_mixed_tokens.to(base.dtype)
    if aggregation == "mean":
        return (base + rebuilt) / 2
    if aggregation == "max":
        return torch.maximum(base, rebuilt)
    raise ValueError(f"unknown srl_aggregation {aggregation!r}; known: mean, max")


def source_retention_terms(
    teacher: AudioEncoder,
    fbank: torch.Tensor,
    regions: MixRegions,
    base_targets: torch.Tensor,
    mixed_prediction: torch.Tensor,
    mixed_cls: torch.Tensor,
    mask: torch.Tensor,
    clones: int,
    top_k: int,
    aggregation: SrlAggregation,
    with_local: bool = True,
    with_global: bool = False,
) -> dict[str, LossTerm]:
    """The SRL loss terms of the mixed half.

    fbank: (B, T, F) the UN-mixed, un-rolled batch; base_targets: (B, L, D) its main-pass local targets;
    mixed_prediction: (B·C, L, D) decoder outputs of the mixed half (the same ones the local-mixed
    loss uses); mixed_cls: (B·C, D) the student's CLS outputs of the mixed half; mask: (B·C, L).
    """
    if not (with_local or with_global):
        return {}
    token_is_mixed = mixed_token_mask(regions, base_targets.shape[1] // regions.time_patches, base_targets.device)
    if token_is_mixed.any():
        foreign = foreign_clips(foreign_dropped_features(teacher, fbank, token_is_mixed, top_k))
        target = srl_target(base_targets, foreign, token_is_mixed, aggregation)
    else:
        # Nothing was mixed in this update: each clip's target is its own features.
        target = base_targets
    terms = {}
    if with_local:
        terms["srl_local"] = local_loss(mixed_prediction, target.repeat_interleave(clones, dim=0), mask)
    if with_global:
        # Table 5's "global SRL": the student's CLS against the pooled SRL target (off officially).
        terms["srl_global"] = global_loss(mixed_cls, global_target(target).repeat_interleave(clones, dim=0))
    return terms
