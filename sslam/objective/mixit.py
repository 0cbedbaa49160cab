"""MixIT concept separation (paper Appendix C, Eq. 6): the variant the paper tried in place of the SRL.

Notation (paper): the student sees S_mixed, the mixture of the base clip S2 (= clip i) and the foreign
clip S1 (= clip i − 1, the batch roll). An MLP head projects the student's output into K vectors
Ŷ = (Ŷ(1), …, Ŷ(K)); the teacher sees S1 and S2 UNMIXED, giving Z_S1 and Z_S2 (the targets of the
unmixed half, S1's rolled by one clip, so no extra teacher pass). Then

    L_MixIT = min_A Σ_{i=1,2} L(Z_Si, [A·Ŷ]_i),    A ∈ B^{2×K}, every column sums to 1:

each vector goes to exactly one source, and each source is regressed by the sum of its vectors. For L
we use the regression loss of every other term, s = Σ_d (·)²/√D (an MSE up to its 1/√D scale).

Choices the paper leaves open (justified in docs/objective.md):
* the minimum is taken per student sequence (one A per example, as MixIT takes it per mixture);
* level `patch`: the head maps the decoder outputs, and the loss runs over the masked tokens of the
  MIXED rows: in the unmixed rows the mixture is S2 alone and holds nothing of S1 to separate;
* level `cls`: the head maps the CLS output, and the sources are the teacher's pooled targets;
* an update that skips mixing (mix_probability < 1) holds no S1: its MixIT terms are 0 (computed on
  an empty selection, so the head still gets a zero gradient, as DDP requires of every parameter).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslam.objective.config import MixItLevel, ObjectiveConfig
from sslam.objective.losses import LossTerm, d2v_loss
from sslam.objective.mixing import MixedHalf, foreign_clips

LEVELS: dict[MixItLevel, tuple[str, ...]] = {"patch": ("patch",), "cls": ("cls",), "both": ("patch", "cls")}


@dataclass(frozen=True)
class MixItSettings:
    num_vectors: int               # K
    levels: tuple[str, ...]        # "patch" and/or "cls"

    @classmethod
    def from_config(cls, config: ObjectiveConfig) -> "MixItSettings":
        return cls(config.mixit_vectors, LEVELS[config.mixit_level])

    @property
    def term_names(self) -> tuple[str, ...]:
        return tuple(f"mixit_{level}" for level in self.levels)


class MixItHead(nn.Module):
    """(…, D) -> (…, K, D): Linear(D, D) → GELU → Linear(D, K·D). Pretraining only, like the decoder."""

    def __init__(self, dim: int, num_vectors: int) -> None:
        super().__init__()
        self.num_vectors = num_vectors
        self.hidden = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, num_vectors * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vectors = self.out(F.gelu(self.hidden(x)))
        return vectors.unflatten(-1, (self.num_vectors, x.shape[-1]))


def build_heads(settings: MixItSettings, dim: int) -> nn.ModuleDict:
    """One head per level: the decoder outputs and the CLS output are different representations."""
    return nn.ModuleDict({level: MixItHead(dim, settings.num_vectors) for level in settings.levels})


def assignments(num_vectors: int, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(2^K, K) every A ∈ B^{2×K} with unit column sums, as its first row: 1 = the vector goes to S1,
    0 = to S2 (the second row is 1 − the first)."""
    codes = torch.arange(2**num_vectors, device=device)[:, None]
    bits = torch.arange(num_vectors, device=device)[None, :]
    return ((codes >> bits) & 1).to(dtype)


@torch.no_grad()
def assignment_errors(vectors: torch.Tensor, sources: torch.Tensor, group: torch.Tensor,
                      num_groups: int) -> torch.Tensor:
    """Σ over each group's tokens of s(Z_S1, A₁Ŷ) + s(Z_S2, A₂Ŷ), for every assignment at once.

    vectors (T, K, D), sources (T, 2, D) = (Z_S1, Z_S2), group (T,) in 0..G−1 -> (G, 2^K).
    With a = A's first row, ‖z − Σ_k a_k y_k‖² = ‖z‖² − 2 aᵀ(Yz) + aᵀ(YYᵀ)a, so the K×K Gram matrix,
    the K inner products and the norm, each summed per group, give all 2^K errors without building a
    (T, 2^K, D) tensor. In float64 without autocast: only the choice of A is taken from these values.
    """
    num_vectors, dim = vectors.shape[1], vectors.shape[2]
    with torch.autocast(vectors.device.type, enabled=False):
        y, z = vectors.double(), sources.double()
        gram = y.new_zeros(num_groups, num_vectors, num_vectors)
        gram.index_add_(0, group, torch.einsum("tkd,tld->tkl", y, y))                   # Σ YYᵀ (G, K, K)
        cross = y.new_zeros(num_groups, 2, num_vectors)
        cross.index_add_(0, group, torch.einsum("tsd,tkd->tsk", z, y))                  # Σ Yz  (G, 2, K)
        norms = y.new_zeros(num_groups, 2).index_add_(0, group, z.pow(2).sum(dim=-1))   # Σ ‖z‖² (G, 2)
        to_first = assignments(num_vectors, vectors.device, torch.float64)
        errors = y.new_zeros(num_groups, to_first.shape[0])
        for source, share in enumerate((to_first, 1 - to_first)):
            quadratic = torch.einsum("pk,gkl,pl->gp", share, gram, share)
            errors += norms[:, source, None] - 2 * cross[:, source] @ share.T + quadratic
    return errors / math.sqrt(dim)


def mixit_loss(vectors: torch.Tensor, sources: torch.Tensor, group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """(T,) per-token s(Z_S1, ·) + s(Z_S2, ·) under the best assignment of each token's group.

    The sums are rebuilt from the vectors for the chosen A only, so the gradient flows through that
    assignment alone (the minimum's own gradient) and the value is exact, not the Gram expansion's.
    """
    best = assignment_errors(vectors, sources, group, num_groups).argmin(dim=1)          # (G,)
    chosen = assignments(vectors.shape[1], vectors.device, vectors.dtype)[best][group]   # (T, K)
    to_first = torch.einsum("tk,tkd->td", chosen, vectors)
    to_second = torch.einsum("tk,tkd->td", 1 - chosen, vectors)
    return d2v_loss(to_first, sources[:, 0]) + d2v_loss(to_second, sources[:, 1])


def _term(head: nn.Module, student: torch.Tensor, first: torch.Tensor, second: torch.Tensor,
          selected: torch.Tensor, kind: str, count: int | None = None) -> LossTerm:
    """student (N, …, D) and the sources (N, …, D) at the True entries of `selected` (N, …).

    `count`: how many entries are True, when the caller knows it (the host counts them on its own masks): the
    entries are then taken by position, in the same order, without boolean indexing's read of the count from
    the device."""
    if count is None:
        rows = torch.arange(selected.shape[0], device=selected.device).view(-1, *[1] * (selected.dim() - 1))
        group = rows.expand_as(selected)[selected]

        def pick(values: torch.Tensor) -> torch.Tensor:
            return values[selected]
    else:
        # A stable descending sort keeps the True entries first, in ascending position order.
        positions = torch.argsort(selected.reshape(-1).to(torch.uint8), descending=True, stable=True)[:count]
        group = torch.div(positions, selected[0].numel(), rounding_mode="floor")

        def pick(values: torch.Tensor) -> torch.Tensor:
            return values.reshape(-1, values.shape[-1]).index_select(0, positions)
    vectors = head(pick(student))                                                       # (T, K, D)
    per_token = mixit_loss(vectors, torch.stack([pick(first), pick(second)], dim=1), group, selected.shape[0])
    count = per_token.numel()
    # An empty selection gives an exact 0 whose graph still reaches the head (zero gradients).
    return LossTerm(value=per_token.sum() / max(count, 1), count=count, kind=kind)


def mixit_terms(heads: nn.ModuleDict, half: MixedHalf) -> dict[str, LossTerm]:
    """The MixIT terms of the mixed half (see the module docstring), named mixit_<level>."""
    mixed = half.has_mixed_tokens
    terms = {}
    if "patch" in heads:
        selected = half.mask & half.token_is_mixed()[None, :]                              # (B·C, L)
        local = half.base.local
        terms["mixit_patch"] = _term(heads["patch"], half.predictions, half.per_sequence(foreign_clips(local)),
                                     half.per_sequence(local), selected, "local", half.mixit_tokens)
    if "cls" in heads:
        selected = torch.full((half.cls.shape[0],), mixed, dtype=torch.bool, device=half.cls.device)
        pooled = half.base.pooled
        terms["mixit_cls"] = _term(heads["cls"], half.cls, half.per_sequence(foreign_clips(pooled)),
                                   half.per_sequence(pooled), selected, "global", selected.shape[0] if mixed else 0)
    return terms
