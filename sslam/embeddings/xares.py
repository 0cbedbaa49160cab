"""An X-ARES audio encoder (https://github.com/jimbozhang/xares) for SSLAM/EAT checkpoints.

    python -m xares.run sslam/embeddings/xares.py src/tasks/*.py        # checkpoint from $SSLAM_CHECKPOINT

    from sslam.embeddings.xares import SSLAMEncoder
    encoder = SSLAMEncoder("hf:ta012/SSLAM_pretrain")
    frames = encoder(waveform)                                # (B, T) at 16 kHz -> (B, T', 768), 160 ms hop

X-ARES builds the encoder with no arguments: the checkpoint then comes from $SSLAM_CHECKPOINT, and an unset
one is an error (a random ViT-B only when the variable says "random"); $SSLAM_LAYERS and $SSLAM_TOKENS give
the layers and tokens the same way. X-ARES finds the class as the one module attribute whose name ends in
"Encoder", so this module must define no other.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from sslam.embeddings.api import load_encoder
from sslam.runtime.errors import SslamError

FRAME_TOKENS = ("timestamp", "patch")


class SSLAMEncoder(torch.nn.Module):
    """Frame-level embeddings, one vector per 160 ms time patch: tokens="timestamp" (default) the mean of its
    frequency patches (D), "patch" its F_p patch tokens concatenated (F_p·D). `layers` (-1 = the last block's
    output, N, a list or "all") concatenates several layers per vector. Audio of any length is embedded whole
    by windows (sslam.embeddings). `options` go to `load_encoder` (window, hop, which, dtype, batch_size...)."""

    def __init__(self, checkpoint: str | Path | None = None, layers: Any = None, tokens: str | None = None,
                 **options: Any) -> None:
        super().__init__()
        options.setdefault("device", "cpu")  # X-ARES moves the encoder to its device itself
        self.tokens = tokens or os.environ.get("SSLAM_TOKENS") or "timestamp"
        if self.tokens not in FRAME_TOKENS:
            raise SslamError(f"X-ARES tokens must be one of {', '.join(FRAME_TOKENS)}, got {self.tokens!r}")
        layers = layers if layers is not None else os.environ.get("SSLAM_LAYERS") or -1
        self.embedder = load_encoder(checkpoint, layers=layers, **options)
        self.sampling_rate = self.embedder.sample_rate
        per_step = self.embedder.encoder.config.freq_patches if self.tokens == "patch" else 1
        self.output_dim = self.embedder.feature_size * per_step
        self.hop_size_in_ms = self.embedder.patch_ms

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, T) or (T,) waveform at 16 kHz -> (B, T', output_dim) float32."""
        if audio.ndim == 1:
            audio = audio.unsqueeze(0)
        if self.tokens == "timestamp":
            embeddings, _ = self.embedder.timestamp_embeddings(audio)
            return embeddings
        clips = self.embedder.embed(audio)
        steps = {clip.real_time_patches for clip in clips}
        if len(steps) > 1:
            raise SslamError("a batch holds clips of one length")
        # (L, P, F_p, D) or (P, F_p, D) -> (T, [L,] F_p·D) -> (T, L·F_p·D), layers outermost as in timestamps
        frames = [clip.patches[..., : clip.real_time_patches, :, :].flatten(-2) for clip in clips]
        return torch.stack([torch.cat(list(f), dim=-1) if self.embedder.stacked else f for f in frames])


__all__ = ["SSLAMEncoder"]
