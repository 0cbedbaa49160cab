"""The model's typed settings: torch-free, so that a study config is validated without importing torch.

`EncoderConfig` (the ViT-B/16 of EAT/SSLAM by default) and `DecoderConfig` (the official Decoder2d);
`sslam.model.encoder` and `sslam.model.decoder` build the modules from them.
"""
from __future__ import annotations

from dataclasses import dataclass

from sslam.configuration import check_ranges
from sslam.errors import SslamError


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
        check_ranges(self, embed_dim=">= 1", depth=">= 1", num_heads=">= 1", mlp_ratio="> 0", patch_size=">= 1",
                     num_mel_bins=">= 1", max_time_patches=">= 1", norm_eps="> 0", drop_path="[0, 1)")
        if self.embed_dim % self.num_heads:
            raise ModelInputError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.embed_dim % 4:
            # The 2-D sin-cos table splits the channels into 2 axes × (sin, cos).
            raise ModelInputError(f"embed_dim {self.embed_dim} must be divisible by 4 for the 2-D sin-cos table")
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


@dataclass
class DecoderConfig:
    depth: int = 6
    groups: int = 16
    kernel: int = 3
    # Standard deviation of the noise tokens placed at masked positions (official mask_noise_std).
    mask_noise_std: float = 0.01

    def __post_init__(self) -> None:
        check_ranges(self, depth=">= 1", groups=">= 1", kernel=">= 1", mask_noise_std=">= 0")
        if self.kernel % 2 == 0:
            raise ModelInputError(f"decoder kernel must be odd to keep the grid size, got {self.kernel}")
