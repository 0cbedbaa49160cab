"""Inverse block masking against spec algorithm.md §3."""
import pytest
import torch

from sslam.runtime.errors import ConfigError
from sslam.objective.masking import block_pattern, clone_masks, inverse_block_mask, keep_index, num_block_centres

OFFICIAL_GRID = (64, 8)


def test_official_grid_keeps_exactly_102_of_512_in_every_row():
    generator = torch.Generator().manual_seed(0)
    masks = inverse_block_mask(500, OFFICIAL_GRID, 0.8, 0.07, 5, generator)
    assert masks.shape == (500, 512) and masks.dtype == torch.bool
    assert torch.all((~masks).sum(dim=1) == 102)  # ⌊512·0.2⌋ visible, 410 masked (80.08 %)
    assert num_block_centres(512, 0.8, 0.07, 5) == 5  # ⌊512·0.27/25⌋


@pytest.mark.parametrize("grid,mask_prob,expected_kept", [((16, 4), 0.8, 12), ((10, 4), 0.8, 8), ((8, 8), 0.5, 32)])
def test_kept_count_is_floor_of_keep_fraction_on_other_grids(grid, mask_prob, expected_kept):
    # (10, 4) with 0.8: 40·0.2 is 7.999… in floating point but must count as 8.
    masks = inverse_block_mask(50, grid, mask_prob, 0.07, 5, torch.Generator().manual_seed(1))
    assert torch.all((~masks).sum(dim=1) == expected_kept)


def test_block_in_the_interior_is_a_full_square():
    grid = (12, 10)
    centre = 5 * 10 + 4  # time 5, freq 4
    pattern = block_pattern(torch.tensor([[centre]]), grid, 5)[0].view(grid)
    expected = torch.zeros(grid, dtype=torch.bool)
    expected[3:8, 2:7] = True
    assert torch.equal(pattern, expected)


def test_block_at_a_corner_is_clamped_not_shifted():
    grid = (12, 10)
    pattern = block_pattern(torch.tensor([[0]]), grid, 5)[0].view(grid)
    expected = torch.zeros(grid, dtype=torch.bool)
    expected[0:3, 0:3] = True  # offsets −2..+2 clamped to 0 squash the block to 3x3
    assert torch.equal(pattern, expected)
    last = grid[0] * grid[1] - 1
    pattern = block_pattern(torch.tensor([[last]]), grid, 5)[0].view(grid)
    assert pattern.sum() == 9 and pattern[-3:, -3:].all()


def test_kept_cells_form_blocks_unlike_random_masks():
    generator = torch.Generator().manual_seed(2)
    kept = ~inverse_block_mask(200, OFFICIAL_GRID, 0.8, 0.07, 5, generator).view(200, *OFFICIAL_GRID)

    def share_with_kept_neighbour(cells: torch.Tensor) -> float:
        padded = torch.nn.functional.pad(cells.float(), (1, 1, 1, 1))
        neighbours = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
        return float((neighbours[cells] > 0).float().mean())

    scattered = torch.zeros(200, 512, dtype=torch.bool)
    scattered.scatter_(1, torch.rand(200, 512, generator=generator).argsort(dim=1)[:, :102], True)
    assert share_with_kept_neighbour(kept) > 0.85  # isolated cells only fill overlap losses
    assert share_with_kept_neighbour(scattered.view(200, *OFFICIAL_GRID)) < 0.7


def test_masks_are_reproducible_from_the_generator():
    first = clone_masks(3, 4, (16, 4), 0.8, 0.07, 5, torch.Generator().manual_seed(7))
    again = clone_masks(3, 4, (16, 4), 0.8, 0.07, 5, torch.Generator().manual_seed(7))
    other = clone_masks(3, 4, (16, 4), 0.8, 0.07, 5, torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.shape == (12, 64)
    # C different masks per clip: clones of one clip are independent draws.
    assert len({tuple(row.tolist()) for row in first}) == 12


def test_keep_index_lists_kept_cells_in_ascending_order():
    masks = inverse_block_mask(6, (16, 4), 0.8, 0.07, 5, torch.Generator().manual_seed(3))
    index = keep_index(masks)
    assert index.shape == (6, 12)
    for row, mask in zip(index, masks):
        assert torch.equal(row, torch.nonzero(~mask).flatten())


def test_keep_index_rejects_ragged_masks():
    masks = torch.tensor([[True, False, False], [True, True, False]])
    with pytest.raises(ValueError):
        keep_index(masks)


def test_a_mask_that_keeps_nothing_is_a_config_error():
    with pytest.raises(ConfigError):
        inverse_block_mask(1, (2, 2), 0.8, 0.07, 5)
