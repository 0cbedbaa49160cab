"""The input settings a checkpoint records: how its training input was made (normalisation, window length)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sslam.audio.config import AUDIOSET_MEAN, AUDIOSET_STD
from sslam.runtime.limits import MAX_TARGET_LENGTH
from sslam.model.checkpoints.routes import CONFIG_NAME
from sslam.model.checkpoints.types import CheckpointError, LoadedCheckpoint
from sslam.model.config import EncoderConfig


# ---------------------------------------------------------------------------------------------- input settings
@dataclass(frozen=True)
class InputSettings:
    """How the encoder's input was made in training: (x − norm_mean) / (2·norm_std) on the raw log-mel,
    clips padded/cut to `target_length` frames. `source` says where the values came from."""

    norm_mean: float = AUDIOSET_MEAN
    norm_std: float = AUDIOSET_STD
    target_length: int = 1024
    source: str = "default (AudioSet statistics, 1024 frames: the official EAT/SSLAM values)"

    def __post_init__(self) -> None:
        if not math.isfinite(self.norm_mean) or not math.isfinite(self.norm_std):
            raise CheckpointError(f"norm_mean and norm_std must be finite, got {self.norm_mean} and {self.norm_std} "
                                  f"({self.source})")
        if not self.norm_std > 0:
            raise CheckpointError(f"norm_std must be > 0, got {self.norm_std} ({self.source})")
        # Every input window is padded to target_length frames: a stated length beyond any positional table
        # (1e8 frames: 51 GB per window) is refused before a window is made.
        if not 1 <= self.target_length <= MAX_TARGET_LENGTH:
            raise CheckpointError(f"target_length must be in [1, {MAX_TARGET_LENGTH}], got {self.target_length} "
                                  f"({self.source})")

    def as_dict(self) -> dict[str, Any]:
        return {"norm_mean": self.norm_mean, "norm_std": self.norm_std, "target_length": self.target_length}


INPUT_KEYS = ("norm_mean", "norm_std", "target_length")


DEFAULT_TARGET_LENGTH = InputSettings.target_length


def default_input(config: EncoderConfig, source: str = InputSettings.source) -> InputSettings:
    """The official settings, with the window shortened to what a small encoder's positional table holds."""
    longest = config.max_time_patches * config.patch_size
    return InputSettings(target_length=min(DEFAULT_TARGET_LENGTH, longest), source=source)


def input_settings(loaded: LoadedCheckpoint) -> InputSettings:
    """The input settings a checkpoint records: the project's own files store them under "input" (written
    by training), model folders in config.json; anything else gets the official defaults."""
    stored, source = loaded.meta.get("input"), "the checkpoint"
    if not stored and loaded.meta.get("path"):
        config = Path(loaded.meta["path"]).with_name(CONFIG_NAME)
        if config.is_file():
            try:
                stored, source = json.loads(config.read_text()), str(config)
            except (OSError, ValueError) as error:  # JSONDecodeError, UnicodeDecodeError (a binary file)
                raise CheckpointError(f"{config}: unreadable config: {error}") from error
    values = {key: stored[key] for key in INPUT_KEYS if isinstance(stored, dict) and stored.get(key) is not None}
    default = default_input(loaded.encoder_config)
    if not values:
        return default
    try:
        return InputSettings(float(values.get("norm_mean", default.norm_mean)),
                             float(values.get("norm_std", default.norm_std)),
                             int(values.get("target_length", default.target_length)), source=source)
    except (TypeError, ValueError, OverflowError) as error:  # int(inf) overflows
        raise CheckpointError(f"{source}: malformed input settings {values}: {error}") from error


__all__ = ["InputSettings", "default_input", "input_settings"]
