"""Tiny model configurations shared by the model tests (kept small: 2 shared CPU cores)."""
import pytest
import torch

from sslam.model import DecoderConfig, EncoderConfig


@pytest.fixture
def tiny_config() -> EncoderConfig:
    # Non-default on purpose: 3 heads of 16, 64 mel bins (4 freq patches), 24 time patches max.
    return EncoderConfig(embed_dim=48, depth=2, num_heads=3, mlp_ratio=2.0, num_mel_bins=64, max_time_patches=24)


@pytest.fixture
def tiny_decoder_config() -> DecoderConfig:
    return DecoderConfig(depth=2, groups=4, kernel=3)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
