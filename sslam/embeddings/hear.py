"""The HEAR 2021 API (https://hearbenchmark.com) for SSLAM/EAT encoders: ``hear-validator sslam.embeddings.hear``.

    import sslam.embeddings.hear as hear
    model = hear.load_model("hf:ta012/SSLAM_pretrain")              # any checkpoint route, "" = $SSLAM_CHECKPOINT
    scene = hear.get_scene_embeddings(audio, model)                  # audio (n, samples) at 16 kHz -> (n, D)
    frames, times = hear.get_timestamp_embeddings(audio, model)      # (n, T, D), (n, T) in ms

Audio of any length is embedded whole by windows (sslam.embeddings): the scene embedding is the CLS output
averaged over the windows, the timestamp embeddings are one vector per 160 ms time patch (the mean of its
frequency patches), concatenated over the windows, stamped at the patch centres.
"""
from __future__ import annotations

from typing import Any

import torch

from sslam.embeddings.api import Embedder, load_encoder


def load_model(model_file_path: str = "", **options: Any) -> Embedder:
    """A torch Module with `sample_rate` (16000), `scene_embedding_size` and `timestamp_embedding_size`.
    `model_file_path`: any checkpoint route (file, hf: id, model folder) or "random"; "" = $SSLAM_CHECKPOINT,
    and an error when that is unset too. `options` go to `sslam.embeddings.load_encoder` (window, hop...)."""
    return load_encoder(model_file_path or None, **options)


def get_scene_embeddings(audio: torch.Tensor, model: Embedder) -> torch.Tensor:
    """audio (n, samples) float at model.sample_rate -> (n, scene_embedding_size) float32."""
    return model.scene_embeddings(audio)


def get_timestamp_embeddings(audio: torch.Tensor, model: Embedder) -> tuple[torch.Tensor, torch.Tensor]:
    """audio (n, samples) -> embeddings (n, T, timestamp_embedding_size) float32 and timestamps (n, T) in ms."""
    return model.timestamp_embeddings(audio)


__all__ = ["get_scene_embeddings", "get_timestamp_embeddings", "load_model"]
