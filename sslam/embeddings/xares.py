"""An X-ARES audio encoder (https://github.com/jimbozhang/xares) for SSLAM/EAT checkpoints.

    python -m xares.run sslam/embeddings/xares.py src/tasks/*.py        # checkpoint from $SSLAM_CHECKPOINT

    from sslam.embeddings.xares import SSLAMEncoder
    encoder = SSLAMEncoder("hf:ta012/SSLAM_pretrain")
    frames = encoder(waveform)                                # (B, T) at 16 kHz -> (B, T', 768), 160 ms hop

X-ARES builds the encoder with no arguments: the checkpoint then comes from $SSLAM_CHECKPOINT, and an unset
one is an error (a random ViT-B only when the variable says "random"). X-ARES finds the class as the one module attribute whose name
ends in "Encoder", so this module must define no other.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sslam.embeddings.api import load_encoder


class SSLAMEncoder(torch.nn.Module):
    """Frame-level embeddings: one vector per 160 ms time patch (mean over frequency patches); audio of any
    length is embedded whole by windows (sslam.embeddings). `options` go to `load_encoder` (window, hop,
    which, dtype, batch_size...)."""

    def __init__(self, checkpoint: str | Path | None = None, **options: Any) -> None:
        super().__init__()
        options.setdefault("device", "cpu")  # X-ARES moves the encoder to its device itself
        self.embedder = load_encoder(checkpoint, **options)
        self.sampling_rate = self.embedder.sample_rate
        self.output_dim = self.embedder.embedding_size
        self.hop_size_in_ms = self.embedder.patch_ms

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, T) or (T,) waveform at 16 kHz -> (B, T', output_dim) float32."""
        if audio.ndim == 1:
            audio = audio.unsqueeze(0)
        embeddings, _ = self.embedder.timestamp_embeddings(audio)
        return embeddings


__all__ = ["SSLAMEncoder"]
