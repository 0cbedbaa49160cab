"""The student-only convolutional decoder ("Decoder2d", spec algorithm.md §4).

The visible tokens the student encoded go back to their grid positions; every masked position
gets a fresh Gaussian noise token (not a learned mask token, and no positional embedding: the
convolutions see position through the grid layout itself). The decoder draws nothing itself: the
caller passes the noise tokens (`draw_noise` gives them the configured N(0, mask_noise_std²)), so
the random stream belongs to whoever owns the run's generators. A stack of grouped 2-D convolutions
over the (time, frequency) patch grid then predicts a D-dimensional target at every position.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslam.model.config import DecoderConfig, ModelInputError


class ConvLayer(nn.Module):
    """Conv2d → LayerNorm over channels (no affine) → GELU, on (N, D, Tp, Fp)."""

    def __init__(self, dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size=kernel, padding=kernel // 2, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        # Channel LayerNorm = LayerNorm on the last axis of the channels-last view.
        x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), eps=1e-5).permute(0, 3, 1, 2)
        return F.gelu(x)


class Decoder2d(nn.Module):
    """forward(visible (N, K, D), keep_index (N, K), grid (Tp, Fp), noise (N, Tp·Fp − K, D))
    -> predictions (N, Tp·Fp, D)."""

    def __init__(self, config: DecoderConfig | None = None, embed_dim: int = 768) -> None:
        super().__init__()
        self.config = config = config or DecoderConfig()
        if embed_dim % config.groups:
            raise ModelInputError(f"embed_dim {embed_dim} is not divisible by decoder groups {config.groups}")
        self.embed_dim = embed_dim
        # PyTorch default init for the convolutions and the projection, as in the official code.
        self.layers = nn.ModuleList(ConvLayer(embed_dim, config.kernel, config.groups) for _ in range(config.depth))
        self.proj = nn.Linear(embed_dim, embed_dim)

    def draw_noise(self, num_sequences: int, num_masked: int, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(N, M) -> (N, M, D) noise tokens ~ N(0, mask_noise_std²), drawn on `device` from `generator`
        (which must live on that device: no host-side draw and copy)."""
        noise = torch.randn(num_sequences, num_masked, self.embed_dim, generator=generator, device=device,
                            dtype=dtype)
        return noise * self.config.mask_noise_std

    @staticmethod
    def masked_index(keep_index: torch.Tensor, num_positions: int) -> torch.Tensor:
        """(N, K) kept positions -> (N, L − K) the other positions, ascending (the order of `noise`)."""
        is_kept = torch.zeros(keep_index.shape[0], num_positions, dtype=torch.uint8, device=keep_index.device)
        is_kept.scatter_(1, keep_index, 1)
        # Stable sort puts the masked (0) positions first, in ascending order, without a host sync.
        return torch.argsort(is_kept, dim=1, stable=True)[:, :num_positions - keep_index.shape[1]]

    def scatter_to_grid(self, visible: torch.Tensor, keep_index: torch.Tensor, noise: torch.Tensor,
                        num_positions: int, masked_index: torch.Tensor | None = None) -> torch.Tensor:
        """(N, K, D) visible tokens at `keep_index`, (N, L − K, D) noise tokens at the other positions in
        ascending order -> (N, L, D) time-major grid tokens. `masked_index`: those other positions, when the
        caller has them already (`sslam.objective.masking.kept_and_masked_index`)."""
        batch, kept, dim = visible.shape
        if keep_index.shape != (batch, kept):
            raise ModelInputError(f"keep_index must be {(batch, kept)}, got {tuple(keep_index.shape)}")
        if kept > num_positions:
            raise ModelInputError(f"{kept} visible tokens do not fit a grid of {num_positions} positions")
        if noise.shape != (batch, num_positions - kept, dim):
            raise ModelInputError(f"noise must be {(batch, num_positions - kept, dim)} (one token per masked "
                                  f"position), got {tuple(noise.shape)}")
        if masked_index is None:
            masked_index = self.masked_index(keep_index, num_positions)
        tokens = visible.new_empty(batch, num_positions, dim)
        tokens = tokens.scatter(1, masked_index.unsqueeze(-1).expand(-1, -1, dim), noise.to(visible.dtype))
        return tokens.scatter(1, keep_index.unsqueeze(-1).expand(-1, -1, dim), visible)

    def forward(self, visible: torch.Tensor, keep_index: torch.Tensor, grid: tuple[int, int],
                noise: torch.Tensor, masked_index: torch.Tensor | None = None) -> torch.Tensor:
        time_patches, freq_patches = grid
        batch, _, dim = visible.shape
        if dim != self.embed_dim:
            raise ModelInputError(f"decoder expects width {self.embed_dim}, got {dim}")
        tokens = self.scatter_to_grid(visible, keep_index, noise, time_patches * freq_patches, masked_index)
        # Time-major tokens (t·Fp + f) -> image layout (N, D, Tp, Fp).
        x = tokens.transpose(1, 2).reshape(batch, dim, time_patches, freq_patches)
        for layer in self.layers:
            x = x + layer(x)  # residual around every layer, the first included
        return self.proj(x.flatten(2).transpose(1, 2))


__all__ = ["Decoder2d", "DecoderConfig"]
