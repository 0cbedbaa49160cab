"""Inverse block multi-masking (spec algorithm.md §3; paper §3.1).

Inverse masking builds the pattern of KEPT patches as a few square blocks, then inverts it, so the
student sees small contiguous islands of the spectrogram and has to predict the large rest.
Masks are boolean (num_masks, L) over the time-major patch grid: True = masked (hidden from the
student), matching the official code's 1 = masked.
"""
from __future__ import annotations

import torch

from sslam.runtime.errors import ConfigError
from sslam.objective.config import floor_count


def inverse_block_mask(
    num_masks: int,
    grid: tuple[int, int],
    mask_prob: float,
    mask_prob_adjust: float,
    block_size: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw `num_masks` independent masks over a (time_patches, freq_patches) grid.

    Every row masks exactly L − ⌊L·(1 − mask_prob)⌋ cells: the student's batched gather of kept
    tokens needs the same count in every row.
    """
    time_patches, freq_patches = grid
    num_cells = time_patches * freq_patches
    num_kept = kept_cells(num_cells, mask_prob)
    if not 1 <= num_kept < num_cells:
        raise ConfigError(
            f"mask_prob {mask_prob} on a {time_patches}x{freq_patches} grid keeps {num_kept} of "
            f"{num_cells} patches; at least one must be kept and one masked")

    # 1. Block centres, uniform over the grid WITH replacement (blocks may overlap).
    num_centres = num_block_centres(num_cells, mask_prob, mask_prob_adjust, block_size)
    centres = torch.randint(0, num_cells, (num_masks, num_centres), generator=generator)
    # 2. Their block_size x block_size neighbourhoods.
    kept = block_pattern(centres, grid, block_size).float()

    # 3. Force exactly num_kept kept cells. Ranking by (kept + uniform noise) puts every block cell
    #    above every other cell, so the top num_kept are a uniformly random subset of the block cells
    #    when there are too many, or all of them plus uniformly random extra cells when too few.
    noise = torch.rand(num_masks, num_cells, generator=generator)
    chosen = torch.topk(kept + noise, num_kept, dim=1).indices
    exact_kept = torch.zeros(num_masks, num_cells, dtype=torch.bool)
    exact_kept.scatter_(1, chosen, True)

    # 4. Invert: True = masked.
    return ~exact_kept


def kept_cells(num_cells: int, mask_prob: float) -> int:
    """⌊L·(1 − mask_prob)⌋, the kept cells of every row of `inverse_block_mask` (102 of 512 officially)."""
    return floor_count(num_cells * (1.0 - mask_prob))


def num_block_centres(num_cells: int, mask_prob: float, mask_prob_adjust: float, block_size: int) -> int:
    """⌊L·(1 − mask_prob + mask_prob_adjust)/block²⌋ (5 on the official 64x8 grid). The adjustment
    over-provisions blocks because overlaps and edge clamping lose cells. On a tiny grid it can be
    0; then every kept cell is an isolated random one, as in the official code."""
    return floor_count(num_cells * (1.0 - mask_prob + mask_prob_adjust) / block_size**2)


def block_pattern(centres: torch.Tensor, grid: tuple[int, int], block_size: int) -> torch.Tensor:
    """(N, n) centre cell indices -> (N, L) bool, True on each centre's block_size² neighbourhood.

    Offsets run from −block//2 (−2..+2 for block 5). Coordinates are clamped to the grid, so a block
    at an edge is squashed onto the border row/column rather than shifted inwards.
    """
    time_patches, freq_patches = grid
    centre_time = torch.div(centres, freq_patches, rounding_mode="floor")
    centre_freq = centres % freq_patches
    offsets = torch.arange(block_size, device=centres.device) - block_size // 2
    block_time = (centre_time[:, :, None, None] + offsets[None, None, :, None]).clamp(0, time_patches - 1)
    block_freq = (centre_freq[:, :, None, None] + offsets[None, None, None, :]).clamp(0, freq_patches - 1)
    cells_per_row = centres.shape[1] * block_size**2
    block_cells = (block_time * freq_patches + block_freq).reshape(centres.shape[0], cells_per_row)
    pattern = torch.zeros(centres.shape[0], time_patches * freq_patches, dtype=torch.bool, device=centres.device)
    return pattern.scatter_(1, block_cells, True)


def clone_masks(
    batch_size: int,
    clones: int,
    grid: tuple[int, int],
    mask_prob: float,
    mask_prob_adjust: float,
    block_size: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(batch_size·clones, L) masks in sample-major order: sample i owns rows i·C … i·C + C − 1,
    the order of `x.repeat_interleave(clones, dim=0)`.

    Every row is an independent draw, so sample-major order is a labelling convention; it matters
    because the student batch, the teacher targets and the shared Stage-2 masks all index rows by it.
    """
    return inverse_block_mask(batch_size * clones, grid, mask_prob, mask_prob_adjust, block_size, generator)


def clone_rows(x: torch.Tensor, clones: int) -> torch.Tensor:
    """(B, ...) -> (B·clones, ...): each row repeated `clones` times in a row, the sample-major order of
    `clone_masks` (= `x.repeat_interleave(clones, dim=0)`, without the device read some backends make to
    size a repeat)."""
    return x.unsqueeze(1).expand(x.shape[0], clones, *x.shape[1:]).reshape(x.shape[0] * clones, *x.shape[1:])


def keep_index(mask: torch.Tensor, num_kept: int | None = None) -> torch.Tensor:
    """(N, L) boolean mask -> (N, K) indices of the kept (False) cells, ascending.

    A stable argsort with the kept cells (0) first, as the official code gathers them. `num_kept`: K, when
    the caller knows it (`kept_cells`); None counts it on the mask and checks that every row keeps as many,
    which reads the mask back from its device.
    """
    return kept_and_masked_index(mask, num_kept)[0]


def kept_and_masked_index(mask: torch.Tensor, num_kept: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, L) boolean mask -> ((N, K) kept cells, (N, L − K) masked cells), each ascending, from one
    stable argsort (see `keep_index` for `num_kept`)."""
    if num_kept is None:
        kept_per_row = (~mask).sum(dim=1)
        if kept_per_row.numel() and not torch.all(kept_per_row == kept_per_row[0]):
            raise ValueError("every mask row must keep the same number of cells to gather a batch")
        num_kept = int(kept_per_row[0]) if kept_per_row.numel() else 0
    order = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)
    return order[:, :num_kept], order[:, num_kept:]
