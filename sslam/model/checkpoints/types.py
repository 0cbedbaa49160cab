"""What a read checkpoint is, and how reading one fails: the types every part of `sslam.model.checkpoints.read` shares."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from sslam.model.config import EncoderConfig
from sslam.runtime.errors import SslamError


class CheckpointError(SslamError, ValueError):
    """A checkpoint cannot be read: unknown layout, unknown key, inconsistent shapes, bad dtypes, damaged file."""


class UnsafeCheckpointError(CheckpointError):
    """A `.pt` file would run code while loading; it was refused (`sslam.model.checkpoints.unpickler`)."""


@dataclass
class LoadedCheckpoint:
    """Weights in this package's own key names (`AudioEncoder` / `Decoder2d` state_dicts)."""

    encoder_config: EncoderConfig
    student: dict[str, torch.Tensor]
    teacher: dict[str, torch.Tensor] | None = None
    decoder: dict[str, torch.Tensor] | None = None
    head: dict[str, torch.Tensor] | None = None  # foreign layouts: fc_norm.{weight,bias}, head.{weight,bias}
    meta: dict[str, Any] = field(default_factory=dict)  # format, path, stage, variant, step, decoder_config
