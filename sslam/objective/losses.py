"""The regression losses and how they are weighted (spec algorithm.md §6, §11.3-4; paper Eq. 1, 2, 4).

Every term is computed as a plain mean (per masked token or per sequence) of the data2vec loss
s(x) = Σ_d (pred_d − target_d)² / √D; `term_weights` then decides how the means add up:

* `official`: the EFFECTIVE objective of the released fairseq code, where every loss tensor is
  summed and divided by the number of masked tokens of the student batch. A local term therefore
  weighs (its masked tokens)/(all masked tokens) — 1.0 in Stage 1, 0.5 per half in Stage 2 — and a
  global term, multiplied by that same token count before the division, becomes the SUM over its
  sequences (weight = number of sequences, 96 per half per GPU in Stage 2, 192 in Stage 1). A run
  with another B·C than 12·16 per GPU changes that weight. On top of that, each term carries its own
  `official_factor`, set where the term is defined (the SRL's ×2 lives in source_retention.py).
* `paper`: Eq. 1, 2 and 4 taken literally: plain means, each with its `paper_weight` — 1 for every term,
  since the paper gives no inter-loss weights; a term's own weight is set where the term is defined (so
  the SRL's official ×2 has, by design, no effect under `paper`: source_retention.PAPER_SRL_WEIGHT).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from sslam.runtime.errors import ConfigError
from sslam.objective.config import LossWeighting


@dataclass
class LossTerm:
    """One loss term: its mean, what it is a mean over, and its own factor (for the official weighting)."""

    value: torch.Tensor                  # fp32 scalar, mean of s(x)
    count: int                           # masked tokens (local) or sequences (global)
    kind: Literal["local", "global"]
    official_factor: float = 1.0         # the released code's multiplier of this term's loss tensor
    paper_weight: float = 1.0            # the term's weight under loss_weighting: paper


def d2v_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(..., D) pair -> (...) s = Σ_d (pred − target)² / √D, in fp32 (no reduction over tokens)."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ")
    squared_error = (prediction.float() - target.float()).pow(2)
    return squared_error.sum(dim=-1) / math.sqrt(prediction.shape[-1])


def local_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
               official_factor: float = 1.0, paper_weight: float = 1.0,
               masked_index: torch.Tensor | None = None) -> LossTerm:
    """Decoder output (N, L, D) vs target (N, L, D), averaged over the masked (True) tokens of (N, L).

    `masked_index` (N, M), each row's masked positions in ascending order, when every row masks M tokens:
    the tokens are then gathered by index, in the order boolean indexing gives, without the read of the
    mask's count from the device that boolean indexing needs.
    """
    if mask.shape != prediction.shape[:2]:
        raise ValueError(f"mask {tuple(mask.shape)} does not match prediction {tuple(prediction.shape)}")
    if masked_index is None:
        per_token = d2v_loss(prediction[mask], target[mask])
    else:
        per_token = d2v_loss(masked_tokens(prediction, masked_index), masked_tokens(target, masked_index))
    return LossTerm(value=per_token.mean(), count=per_token.numel(), kind="local", official_factor=official_factor,
                    paper_weight=paper_weight)


def masked_tokens(tokens: torch.Tensor, masked_index: torch.Tensor) -> torch.Tensor:
    """(N, L, D) tokens, (N, M) positions -> (N·M, D), row by row: `tokens[mask]` for a mask with M per row."""
    gathered = tokens.gather(1, masked_index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    return gathered.reshape(-1, tokens.shape[-1])


def global_loss(cls_prediction: torch.Tensor, pooled_target: torch.Tensor, official_factor: float = 1.0,
                paper_weight: float = 1.0) -> LossTerm:
    """Student CLS output (N, D) vs pooled teacher target (N, D), averaged over the N sequences."""
    per_sequence = d2v_loss(cls_prediction, pooled_target)
    return LossTerm(value=per_sequence.mean(), count=per_sequence.numel(), kind="global",
                    official_factor=official_factor, paper_weight=paper_weight)


def official_weight(term: LossTerm, num_masked_tokens: int) -> float:
    """The released code's effective factor of the term's mean: token share (local) or sequence count
    (global), times the term's own factor."""
    base = float(term.count) if term.kind == "global" else term.count / num_masked_tokens
    return base * term.official_factor


def term_weights(terms: dict[str, LossTerm], weighting: LossWeighting, num_masked_tokens: int) -> dict[str, float]:
    """The factor of each term's mean in the total loss (see the module docstring)."""
    if weighting == "paper":
        return {name: term.paper_weight for name, term in terms.items()}
    if weighting != "official":
        raise ConfigError(f"unknown loss_weighting {weighting!r}; known: official, paper")
    if num_masked_tokens < 1:
        raise ValueError("the official weighting needs the student batch's masked-token count (>= 1)")
    return {name: official_weight(term, num_masked_tokens) for name, term in terms.items()}


def total_loss(terms: dict[str, LossTerm], weights: dict[str, float]) -> torch.Tensor:
    if not terms:
        raise ValueError("no loss terms to add up")
    return sum(weights[name] * term.value for name, term in terms.items())
