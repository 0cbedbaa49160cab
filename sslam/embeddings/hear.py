"""The HEAR 2021 API (https://hearbenchmark.com) for SSLAM/EAT encoders: ``hear-validator sslam.embeddings.hear``.

    import sslam.embeddings.hear as hear
    model = hear.load_model("hf:ta012/SSLAM_pretrain")              # any checkpoint route, "" = $SSLAM_CHECKPOINT
    scene = hear.get_scene_embeddings(audio, model)                  # audio (n, samples) at 16 kHz -> (n, D)
    frames, times = hear.get_timestamp_embeddings(audio, model)      # (n, T, D), (n, T) in ms

Audio of any length is embedded whole by windows (sslam.embeddings): the scene embedding is the CLS output
averaged over the windows (or, with tokens="mean", the mean of the patch tokens holding audio), the timestamp
embeddings are one vector per 160 ms time patch (the mean of its frequency patches), concatenated over the
windows, stamped at the patch centres. `layers` picks the hidden states (-1, the default, is the last block's
output; N block N's; a list or "all"); several layers are concatenated per vector, so the sizes become L·D.
The HEAR tools pass only the model path: $SSLAM_LAYERS and $SSLAM_TOKENS set these two when no argument does.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from sslam.embeddings.api import Embedder, load_encoder

LAYERS_ENVIRONMENT = "SSLAM_LAYERS"
TOKENS_ENVIRONMENT = "SSLAM_TOKENS"


def load_model(model_file_path: str = "", layers: Any = None, tokens: str | None = None, **options: Any) -> Embedder:
    """A torch Module with `sample_rate` (16000), `scene_embedding_size` and `timestamp_embedding_size`.
    `model_file_path`: any checkpoint route (file, hf: id, model folder) or "random"; "" = $SSLAM_CHECKPOINT,
    and an error when that is unset too. `layers` (default $SSLAM_LAYERS, else -1) and `tokens` of the scene
    embedding (cls or mean; default $SSLAM_TOKENS, else cls): module docstring. `options` go to
    `sslam.embeddings.load_encoder` (window, hop...)."""
    layers = layers if layers is not None else os.environ.get(LAYERS_ENVIRONMENT) or -1
    tokens = tokens or os.environ.get(TOKENS_ENVIRONMENT) or "cls"
    return load_encoder(model_file_path or None, layers=layers, scene_tokens=tokens, **options)


def get_scene_embeddings(audio: torch.Tensor, model: Embedder) -> torch.Tensor:
    """audio (n, samples) float at model.sample_rate -> (n, scene_embedding_size) float32."""
    return model.scene_embeddings(audio)


def get_timestamp_embeddings(audio: torch.Tensor, model: Embedder) -> tuple[torch.Tensor, torch.Tensor]:
    """audio (n, samples) -> embeddings (n, T, timestamp_embedding_size) float32 and timestamps (n, T) in ms."""
    return model.timestamp_embeddings(audio)


__all__ = ["get_scene_embeddings", "get_timestamp_embeddings", "load_model"]
