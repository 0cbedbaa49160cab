"""Tiny shared settings for the objective tests (2 CPU cores are shared by several people)."""
import pytest

from sslam.model import DecoderConfig, EncoderConfig


@pytest.fixture
def tiny_encoder_cfg() -> EncoderConfig:
    # 128 frames x 32 mel bins with 8x8 patches -> a 16 x 4 grid of 64 tokens.
    return EncoderConfig(embed_dim=32, depth=2, num_heads=2, patch_size=8, num_mel_bins=32, max_time_patches=32)


@pytest.fixture
def tiny_decoder_cfg() -> DecoderConfig:
    return DecoderConfig(depth=2, groups=4)
