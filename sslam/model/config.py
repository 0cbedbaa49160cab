"""The model's typed settings: torch-free, so that a study config is validated without importing torch.

`EncoderConfig` (the ViT-B/16 of EAT/SSLAM by default) and `DecoderConfig` (the official Decoder2d);
`sslam.model.encoder` and `sslam.model.decoder` build the modules from them.
"""
from __future__ import annotations

from dataclasses import dataclass

from sslam.runtime.configuration import check_ranges
from sslam.runtime.errors import SslamError
from sslam.runtime.limits import MAX_MEL_BINS, MAX_POSITION_TABLE_ELEMENTS, MAX_TIME_PATCHES


class ModelInputError(SslamError, ValueError):
    """An input tensor or configuration does not fit the encoder (wrong shape, too long...)."""


@dataclass
class EncoderConfig:
    """ViT-B/16 over a 128-bin log-mel spectrogram (the official EAT/SSLAM encoder)."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    num_mel_bins: int = 128
    # Rows of the positional table along time: 768 time patches ≈ 2 minutes of 10 ms frames.
    max_time_patches: int = 768
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    # Largest stochastic-depth rate (last block); 0 in pre-training, 0.1 in the official fine-tuning.
    drop_path: float = 0.0

    def __post_init__(self) -> None:
        # The positional table is max_time_patches × (num_mel_bins / patch_size) × embed_dim floats, built before
        # any weight is loaded: a model folder's config.json must not be able to ask for gigabytes of it.
        check_ranges(self, embed_dim=">= 1", depth=">= 1", num_heads=">= 1", mlp_ratio="> 0", patch_size=">= 1",
                     num_mel_bins=f"[1, {MAX_MEL_BINS}]", max_time_patches=f"[1, {MAX_TIME_PATCHES}]", norm_eps="> 0",
                     drop_path="[0, 1)")
        if self.embed_dim % self.num_heads:
            raise ModelInputError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.embed_dim % 4:
            # The 2-D sin-cos table splits the channels into 2 axes × (sin, cos).
            raise ModelInputError(f"embed_dim {self.embed_dim} must be divisible by 4 for the 2-D sin-cos table")
        table = self.max_time_patches * (self.num_mel_bins // self.patch_size) * self.embed_dim
        if table > MAX_POSITION_TABLE_ELEMENTS:
            raise ModelInputError(f"a positional table of {self.max_time_patches} × {self.num_mel_bins // self.patch_size} "
                                  f"patches × {self.embed_dim} channels is {table:,} elements, more than "
                                  f"{MAX_POSITION_TABLE_ELEMENTS:,}")
        if self.num_mel_bins % self.patch_size:
            raise ModelInputError(
                f"num_mel_bins {self.num_mel_bins} is not a multiple of patch_size {self.patch_size}"
            )

    @property
    def freq_patches(self) -> int:
        return self.num_mel_bins // self.patch_size

    @property
    def mlp_hidden_dim(self) -> int:
        return int(round(self.embed_dim * self.mlp_ratio))

    def flops_per_forward(self, num_tokens: int, num_patches: int | None = None) -> int:
        """Forward FLOPs of one sequence (multiply-add = 2 FLOPs), for MFU accounting and `sslam plan`.

        Per block, with L = num_tokens (CLS included), D = width, H = MLP width:
          matmuls  2·L·(4·D² + 2·D·H)   (qkv 3D², proj D², fc1 D·H, fc2 H·D)
          attention 4·L²·D              (Q·Kᵀ and attention·V, 2·L²·D each)
        plus the patch embedding 2·P·D·patch² over P = num_patches (default num_tokens − 1; the
        student embeds all patches before dropping the masked ones, so pass the full count).
        Norms, GELU and softmax are ignored. A backward pass costs about twice the forward.
        ViT-B at 513 tokens: ≈ 97 GFLOPs.
        """
        dim, hidden, length = self.embed_dim, self.mlp_hidden_dim, num_tokens
        per_block = 2 * length * (4 * dim * dim + 2 * dim * hidden) + 4 * length * length * dim
        patches = num_tokens - 1 if num_patches is None else num_patches
        return self.depth * per_block + 2 * patches * dim * self.patch_size**2


@dataclass
class DecoderConfig:
    depth: int = 6
    groups: int = 16
    kernel: int = 3
    # Standard deviation of the noise tokens placed at masked positions (official mask_noise_std).
    mask_noise_std: float = 0.01

    def flops_per_forward(self, embed_dim: int, num_positions: int) -> int:
        """Grouped k×k convs over the full grid per layer, then the output Linear (2 FLOPs per multiply-add)."""
        conv = 2 * num_positions * embed_dim * (embed_dim // self.groups) * self.kernel**2
        return self.depth * conv + 2 * num_positions * embed_dim * embed_dim

    def __post_init__(self) -> None:
        check_ranges(self, depth=">= 1", groups=">= 1", kernel=">= 1", mask_noise_std=">= 0")
        if self.kernel % 2 == 0:
            raise ModelInputError(f"decoder kernel must be odd to keep the grid size, got {self.kernel}")
