"""Frozen SSLAM/EAT embeddings of audio of any length: the Python API behind `sslam extract`, `sslam.embeddings.hear`
and `sslam.embeddings.xares` (docs/embeddings.md).

    from sslam.embeddings import encode, load_encoder
    model = load_encoder("hf:ta012/SSLAM_pretrain")   # a file, an hf: id, a model folder; None = $SSLAM_CHECKPOINT
    clip = encode(model, "street.wav")[0]
    clip.scene        # (D,)    the clip: CLS outputs averaged over the windows
    clip.timestamps   # (T, D)  one vector per 160 ms time patch (mean over its frequency patches)
    clip.times_ms     # (T,)    the centre of each time patch

How a clip is embedded. The front end of `sslam.audio.front_end` makes a raw log-mel (16 kHz mono, Kaldi fbank,
100 frames/s). It is cut into windows of `window` frames every `hop` frames (default: the length the
checkpoint was trained with, 1024 frames = 10.24 s, without overlap); the last window is zero-padded in
the raw log-mel domain, as the official recipe pads a short clip. Each window is normalised with the
checkpoint's statistics and encoded without masking. A clip that fits one window gives exactly what the
official extractor gives. For longer clips:

* scene = the windows' CLS outputs averaged, each weighted by the real (unpadded) frames it holds;
* patch tokens: time patch g of the clip comes from the window whose centre is nearest to it, so
  overlapping windows still give one sequence at a regular 160 ms step, with each patch seen in the
  most context;
* `long_audio="truncate"` keeps only the first window instead (and warns): the behaviour of the
  official extractor and of `--target-length` in earlier versions.
"""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio
from torch import nn

from sslam.audio.front_end import FrontEndConfig, fit_length, load_raw_fbank, normalise, waveform_to_fbank
from sslam.model.checkpoints.export import random_encoder, save_pretrained
from sslam.model.checkpoints.read import build_encoder, read_checkpoint
from sslam.model.checkpoints.settings import InputSettings, default_input, input_settings
from sslam.model.encoder import AudioEncoder
from sslam.runtime.device import resolve_device
from sslam.runtime.errors import AudioError, SslamError

CHECKPOINT_ENVIRONMENT = "SSLAM_CHECKPOINT"
LONG_AUDIO = ("window", "truncate")
GRANULARITIES = ("all", "frame", "utterance", "timestamp")
DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


@dataclass
class ClipEmbedding:
    """One clip's embeddings. `patches` (P, F_p, D) holds every time patch the windows span (the last
    window's padding included, as the official extractor keeps it); `real_time_patches` of them contain
    audio."""

    scene: torch.Tensor
    patches: torch.Tensor
    num_frames: int
    num_windows: int
    truncated: bool
    patch_ms: float
    frame_ms: float

    @property
    def real_time_patches(self) -> int:
        covered = self.patches.shape[0]
        frames_per_patch = self.patch_ms / self.frame_ms
        return min(covered, math.ceil(self.num_frames / frames_per_patch))

    @property
    def timestamps(self) -> torch.Tensor:
        """(T, D): one vector per time patch that holds audio, averaged over its frequency patches."""
        return self.patches[: self.real_time_patches].mean(dim=1)

    @property
    def times_ms(self) -> torch.Tensor:
        """(T,) the centre of each time patch: patch t spans frames [16t, 16t+15], frame i the samples of
        [10i, 10i + 25) ms, so its centre is at 160·t + 87.5 ms."""
        window_ms = 25.0  # the Kaldi analysis window
        first_centre = (self.patch_ms - self.frame_ms + window_ms) / 2
        steps = torch.arange(self.real_time_patches, device=self.patches.device, dtype=torch.float32)
        return first_centre + self.patch_ms * steps

    def granularity(self, name: str) -> np.ndarray:
        """The `sslam extract` outputs: all (1+N, D) = scene then the N patch tokens; frame (N, D);
        utterance (D,); timestamp (T, D)."""
        tokens = self.patches.reshape(-1, self.patches.shape[-1])
        if name == "all":
            out = torch.cat([self.scene[None], tokens])
        elif name == "frame":
            out = tokens
        elif name == "utterance":
            out = self.scene
        elif name == "timestamp":
            out = self.timestamps
        else:
            raise SslamError(f"granularity must be one of {GRANULARITIES}, got {name!r}")
        return out.float().cpu().numpy()


class Embedder(nn.Module):
    """An encoder with its input settings and windowing: waveforms or fbanks in, `ClipEmbedding`s out.

    Also carries the attribute names of the HEAR API (`sample_rate`, `scene_embedding_size`,
    `timestamp_embedding_size`), so `sslam.embeddings.hear.load_model` can return it as is.
    """

    def __init__(self, encoder: AudioEncoder, settings: InputSettings | None = None, *, window: int | None = None,
                 hop: int | None = None, long_audio: str = "window", batch_size: int = 16,
                 dtype: str | torch.dtype | None = None) -> None:
        super().__init__()
        self.encoder = encoder.eval()
        self.settings = settings or InputSettings()
        self.front_end = FrontEndConfig(num_mel_bins=encoder.config.num_mel_bins)
        patch = encoder.config.patch_size
        self.window = int(window or self.settings.target_length)
        self.hop = int(hop or self.window)
        if long_audio not in LONG_AUDIO:
            raise SslamError(f"long_audio must be one of {LONG_AUDIO}, got {long_audio!r}")
        for name, frames in (("window", self.window), ("hop", self.hop)):
            if frames < patch or frames % patch:
                raise SslamError(f"{name} must be a positive multiple of the patch size {patch} frames, got {frames}")
        if self.hop > self.window:
            raise SslamError(f"hop ({self.hop} frames) must not exceed the window ({self.window} frames)")
        encoder.grid(self.window)  # the window must fit the positional table
        if batch_size < 1:
            raise SslamError(f"batch_size must be >= 1, got {batch_size}")
        self.long_audio, self.batch_size = long_audio, batch_size
        self.autocast_dtype = DTYPES[dtype] if isinstance(dtype, str) and dtype in DTYPES else dtype
        if self.autocast_dtype not in (None, torch.float32, torch.bfloat16):
            raise SslamError(f"dtype must be float32 or bfloat16, got {dtype!r}")

    # ------------------------------------------------------------------ sizes
    @property
    def sample_rate(self) -> int:
        return self.front_end.sample_rate

    @property
    def embedding_size(self) -> int:
        return self.encoder.config.embed_dim

    scene_embedding_size = embedding_size
    timestamp_embedding_size = embedding_size

    @property
    def patch_ms(self) -> float:
        """The time step of the timestamp embeddings: one patch of frames (160 ms)."""
        return self.encoder.config.patch_size * self.front_end.frame_shift_ms

    @property
    def device(self) -> torch.device:
        return self.encoder.cls_token.device

    # ------------------------------------------------------------------ front end
    def fbank(self, waveform: torch.Tensor) -> torch.Tensor:
        """(samples,) mono waveform at `sample_rate` -> raw log-mel (T, F). Unlike files (sslam.audio.front_end),
        silence is allowed here (benchmark clips can be silent); too-short clips are zero-padded to one frame."""
        if not torch.isfinite(waveform).all():
            raise AudioError("audio contains NaN or inf samples")
        shortfall = self.front_end.min_samples() - waveform.shape[-1]
        if shortfall > 0:
            waveform = torch.nn.functional.pad(waveform, (0, shortfall))
        return waveform_to_fbank(waveform.float().reshape(1, -1), self.front_end)

    def _waveforms(self, audio: Any, sample_rate: int | None) -> list[torch.Tensor]:
        """A (n, samples) or (samples,) tensor/array, or a list of 1-D ones -> list of 1-D tensors at 16 kHz."""
        if isinstance(audio, (list, tuple)):
            clips = [torch.as_tensor(np.asarray(a) if not torch.is_tensor(a) else a) for a in audio]
        else:
            batch = torch.as_tensor(audio) if not torch.is_tensor(audio) else audio
            if batch.ndim not in (1, 2):
                raise SslamError(f"audio must be (samples,) or (clips, samples), got shape {tuple(batch.shape)}")
            clips = list(batch.reshape(-1, batch.shape[-1]))
        rate = sample_rate or self.sample_rate
        out = []
        for clip in clips:
            if clip.ndim != 1:
                raise SslamError(f"each clip must be 1-D (mono samples), got shape {tuple(clip.shape)}")
            clip = clip.float()
            if rate != self.sample_rate:
                clip = torchaudio.functional.resample(clip, rate, self.sample_rate)
            out.append(clip)
        return out

    # ------------------------------------------------------------------ encoding
    def window_starts(self, num_frames: int) -> list[int]:
        if self.long_audio == "truncate" or num_frames <= self.window:
            return [0]
        return [k * self.hop for k in range(1 + math.ceil((num_frames - self.window) / self.hop))]

    @torch.inference_mode()
    def embed_fbanks(self, fbanks: Sequence[torch.Tensor], warn_truncation: bool = True) -> list[ClipEmbedding]:
        """Raw log-mels (T_i, F) -> one ClipEmbedding each; all their windows run through the encoder
        together, `batch_size` windows at a time."""
        if not fbanks:
            return []
        plans, windows = [], []
        for fbank in fbanks:
            starts = self.window_starts(fbank.shape[0])
            plans.append(starts)
            for start in starts:
                window = fit_length(fbank[start: start + self.window], self.window)
                windows.append(normalise(window.float(), self.settings.norm_mean, self.settings.norm_std))
        cls, patches = self._encode_windows(windows)
        clips, next_window = [], 0
        for fbank, starts in zip(fbanks, plans):
            count = len(starts)
            clips.append(self._assemble(fbank.shape[0], starts, cls[next_window: next_window + count],
                                        patches[next_window: next_window + count]))
            next_window += count
        truncated = sum(clip.truncated for clip in clips)
        if truncated and warn_truncation:
            warnings.warn(f"{truncated} clip(s) longer than the window ({self.window} frames) were truncated "
                          "(long_audio='truncate'); use long_audio='window' to embed them whole", stacklevel=2)
        return clips

    def _encode_windows(self, windows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, F) windows -> CLS outputs (n, D) and patch tokens (n, Tp, Fp, D), float32 on the device."""
        time_patches, freq_patches = self.encoder.grid(self.window)
        cls, patches = [], []
        use_autocast = self.autocast_dtype is torch.bfloat16
        for first in range(0, len(windows), self.batch_size):
            batch = torch.stack(windows[first: first + self.batch_size]).to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_autocast):
                tokens = self.encoder(batch).float()
            cls.append(tokens[:, 0])
            patches.append(tokens[:, 1:].reshape(tokens.shape[0], time_patches, freq_patches, -1))
        return torch.cat(cls), torch.cat(patches)

    def _assemble(self, num_frames: int, starts: list[int], cls: torch.Tensor, patches: torch.Tensor) -> ClipEmbedding:
        patch = self.encoder.config.patch_size
        window_patches = self.window // patch
        real_frames = torch.tensor([max(0, min(self.window, num_frames - start)) for start in starts],
                                   dtype=torch.float32, device=cls.device)
        scene = (real_frames[:, None] * cls).sum(0) / real_frames.sum()
        first_patch = torch.tensor(starts, device=cls.device) // patch  # (K,)
        covered = int(first_patch[-1]) + window_patches
        position = torch.arange(covered, device=cls.device)
        offset = position[:, None] - first_patch[None, :]  # (P, K): index of patch g inside window k
        inside = (offset >= 0) & (offset < window_patches)
        distance = ((offset + 0.5) - window_patches / 2).abs().masked_fill(~inside, math.inf)
        owner = distance.argmin(dim=1)  # nearest window centre; ties go to the earlier window
        tokens = patches[owner, offset[position, owner]]
        return ClipEmbedding(scene, tokens, num_frames, len(starts), num_frames > self.window and len(starts) == 1,
                             self.patch_ms, self.front_end.frame_shift_ms)

    def embed(self, audio: Any, sample_rate: int | None = None) -> list[ClipEmbedding]:
        """Waveforms (see `_waveforms`) -> one ClipEmbedding each."""
        waveforms = self._waveforms(audio, sample_rate)
        return self.embed_fbanks([self.fbank(w.to(self.device)) for w in waveforms])

    def scene_embeddings(self, audio: torch.Tensor) -> torch.Tensor:
        """(n, samples) at 16 kHz -> (n, D) float32."""
        return torch.stack([clip.scene for clip in self.embed(audio)])

    def timestamp_embeddings(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, samples) at 16 kHz, all the same length -> embeddings (n, T, D) and times in ms (n, T)."""
        clips = self.embed(audio)
        if len({clip.real_time_patches for clip in clips}) > 1:
            raise SslamError("timestamp_embeddings stacks clips of one length; use encode() for clips of several")
        return torch.stack([c.timestamps for c in clips]), torch.stack([c.times_ms for c in clips])

    def save_pretrained(self, folder: str | Path) -> Path:
        """The encoder and its input settings as a model folder that `load_encoder` reads back."""
        return save_pretrained(self.encoder, folder, self.settings)


def load_encoder(spec: str | Path | None = None, which: str = "student", *, device: str | None = "auto",
                 window: int | None = None, hop: int | None = None, long_audio: str = "window",
                 batch_size: int = 16, dtype: str | None = None, norm_mean: float | None = None,
                 norm_std: float | None = None, num_heads: int | None = None,
                 num_mel_bins: int | None = None) -> Embedder:
    """An `Embedder` for a checkpoint: a file, ``hf:OWNER/NAME[@REV][:FILE]`` or a model folder
    (docs/checkpoints.md). None: the checkpoint named by $SSLAM_CHECKPOINT, else a random-init ViT-B (with
    a warning: its embeddings carry no information). The window defaults to the length the checkpoint
    was trained with; norm_mean/norm_std override the statistics it records."""
    spec = spec or os.environ.get(CHECKPOINT_ENVIRONMENT) or None
    if spec is None:
        warnings.warn(f"no checkpoint given and ${CHECKPOINT_ENVIRONMENT} is unset: using a randomly initialised "
                      "ViT-B/16, whose embeddings carry no information", stacklevel=2)
        encoder = random_encoder()
        settings = default_input(encoder.config, source="random init")
    else:
        loaded = read_checkpoint(spec, num_heads=num_heads, num_mel_bins=num_mel_bins)
        encoder, settings = build_encoder(loaded, which), input_settings(loaded)
    if norm_mean is not None or norm_std is not None:
        settings = InputSettings(settings.norm_mean if norm_mean is None else norm_mean,
                                 settings.norm_std if norm_std is None else norm_std,
                                 settings.target_length, source="given")
    embedder = Embedder(encoder, settings, window=window, hop=hop, long_audio=long_audio, batch_size=batch_size,
                        dtype=dtype)
    return embedder.to(resolve_device(device))


def encode(model: Embedder, audio: Any, sample_rate: int | None = None) -> list[ClipEmbedding]:
    """Embed audio files (a path or a list of paths, decoded by sslam.audio.front_end) or waveforms ((n, samples)
    array/tensor or a list of 1-D ones, at `sample_rate`, default 16 kHz). One ClipEmbedding per clip."""
    if isinstance(audio, (str, Path)) or (isinstance(audio, (list, tuple)) and audio
                                          and all(isinstance(a, (str, Path)) for a in audio)):
        paths = [audio] if isinstance(audio, (str, Path)) else list(audio)
        return model.embed_fbanks([load_raw_fbank(path, model.front_end) for path in paths])
    return model.embed(audio, sample_rate)


__all__ = ["CHECKPOINT_ENVIRONMENT", "ClipEmbedding", "Embedder", "encode", "load_encoder"]
