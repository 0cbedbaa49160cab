"""The source retention loss, SRL (paper §3.2.2, Eq. 4, Tables 5 and 11; spec algorithm.md §6, §11.7).

THE ONE PLACE for the SRL: its target, its aggregation, its two loss terms and their weight under each
`loss_weighting` (official: OFFICIAL_SRL_*_FACTOR; paper: PAPER_SRL_WEIGHT). Changing the SRL means editing
this file only; PretrainingObjective just calls `source_retention_terms`.

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

from dataclasses import dataclass

import torch

from sslam.model.encoder import AudioEncoder
from sslam.objective.config import ObjectiveConfig, SrlAggregation
from sslam.objective.losses import LossTerm, global_loss, local_loss
from sslam.objective.mixing import MixedHalf, MixRegions, foreign_clips
from sslam.objective.targets import global_target, make_targets, strip_cls

# The official code multiplies the SRL ("mix_patch_loss") by 2 (spec §6); the unused global SRL, had it
# been on, would have been an ordinary CLS loss tensor.
OFFICIAL_SRL_LOCAL_FACTOR = 2.0
OFFICIAL_SRL_GLOBAL_FACTOR = 1.0
# The paper (Eq. 4-5) adds the SRL as a plain mean with weight 1 and states no factor, so under
# `loss_weighting: paper` the official ×2 above has no effect; set a weight here to study one.
PAPER_SRL_WEIGHT = 1.0


@dataclass(frozen=True)
class SrlSettings:
    """How the SRL is computed: the teacher layers of its target, the aggregation and which terms."""

    top_k: int                        # teacher layers averaged by the foreign pass (= the local target's)
    aggregation: SrlAggregation       # Table 11
    with_local: bool = True           # srl_local: the masked tokens (official)
    with_global: bool = False         # srl_global: the CLS output vs the pooled SRL target (Table 5)

    @classmethod
    def from_config(cls, config: ObjectiveConfig, top_k: int) -> "SrlSettings":
        return cls(top_k, config.srl_aggregation, config.srl_local, config.srl_global)


def mixed_token_mask(regions: MixRegions, freq_patches: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(L,) bool over the time-major token grid: True for tokens in mixed time-patch rows."""
    return regions.mixed_token_mask(freq_patches, device)


def token_positions(mixed_tokens: torch.Tensor) -> torch.Tensor:
    """The (L_mixed,) ascending positions of the mixed tokens, from either form the functions here accept:
    an (L,) bool mask (converting it reads it back from its device) or the positions themselves."""
    return mixed_tokens.nonzero().flatten() if mixed_tokens.dtype == torch.bool else mixed_tokens


@torch.no_grad()
def foreign_dropped_features(teacher: AudioEncoder, fbank: torch.Tensor, mixed_tokens: torch.Tensor,
                             top_k: int) -> torch.Tensor:
    """Second teacher pass: (B, T, F) un-rolled clips -> (B, L_mixed, D) targets of their mixed-region tokens.

    `mixed_tokens`: the (L,) bool mask of the mixed-region tokens or their (L_mixed,) ascending positions.
    Tokens are dropped after `add_cls_and_norm`, as the official code does, so they keep their own
    positional embedding and the CLS token stays in front.
    """
    sequence = teacher.add_cls_and_norm(teacher.embed(fbank))
    positions = token_positions(mixed_tokens)
    sequence = sequence.index_select(1, torch.cat([positions.new_zeros(1), positions + 1]))  # CLS first
    _, ffn_outputs = teacher.forward_blocks(sequence, return_ffn=True)
    return make_targets(strip_cls(ffn_outputs), top_k)


def srl_target(base: torch.Tensor, foreign_mixed_tokens: torch.Tensor, mixed_tokens: torch.Tensor,
               aggregation: SrlAggregation = "mean") -> torch.Tensor:
    """(B, L, D) base features + (B, L_mixed, D) foreign features (already aligned: row i = clip i−1)
    -> (B, L, D) SRL targets; `mixed_tokens` as for `foreign_dropped_features`.

    The foreign map is rebuilt on the full grid from the base features with the mixed tokens
    overwritten, so aggregating it with the base leaves the unmixed regions equal to the base.
    The result is not re-normalised (the official code does not).
    """
    rebuilt = base.index_copy(1, token_positions(mixed_tokens), foreign_mixed_tokens.to(base.dtype))
    if aggregation == "mean":
        return (base + rebuilt) / 2
    if aggregation == "max":
        return torch.maximum(base, rebuilt)
    raise ValueError(f"unknown srl_aggregation {aggregation!r}; known: mean, max")


def source_retention_terms(teacher: AudioEncoder, half: MixedHalf, settings: SrlSettings) -> dict[str, LossTerm]:
    """The SRL loss terms of the mixed half: its decoder outputs (the same ones the local-mixed loss
    uses) against the SRL target built from `half.fbank` and its base targets `half.base.local`."""
    if not (settings.with_local or settings.with_global):
        return {}
    base_targets = half.base.local
    mixed_tokens = half.mixed_token_index()
    if mixed_tokens.numel():
        foreign = foreign_clips(foreign_dropped_features(teacher, half.fbank, mixed_tokens, settings.top_k))
        target = srl_target(base_targets, foreign, mixed_tokens, settings.aggregation)
    else:
        # Nothing was mixed in this update: each clip's target is its own features.
        target = base_targets
    terms = {}
    if settings.with_local:
        terms["srl_local"] = local_loss(half.predictions, half.per_sequence(target), half.mask,
                                        official_factor=OFFICIAL_SRL_LOCAL_FACTOR, paper_weight=PAPER_SRL_WEIGHT,
                                        masked_index=half.masked_index)
    if settings.with_global:
        # Table 5's "global SRL": the student's CLS against the pooled SRL target (off officially).
        terms["srl_global"] = global_loss(half.cls, half.per_sequence(global_target(target)),
                                          official_factor=OFFICIAL_SRL_GLOBAL_FACTOR, paper_weight=PAPER_SRL_WEIGHT)
    return terms
