"""Frozen SSLAM/EAT embeddings of audio of any length: the Python API behind `sslam extract`, `sslam.embeddings.hear`
and `sslam.embeddings.xares` (docs/embeddings.md).

    from sslam.embeddings import encode, load_encoder
    model = load_encoder("hf:ta012/SSLAM_pretrain")   # a file, an hf: id, a model folder; None = $SSLAM_CHECKPOINT
    clip = encode(model, "street.wav")[0]
    clip.scene        # (D,)    the clip: CLS outputs averaged over the windows
    clip.timestamps   # (T, D)  one vector per 160 ms time patch (mean over its frequency patches)
    clip.times_ms     # (T,)    the centre of each time patch
    encode(model, "street.wav", layers="all", tokens="patch")[0]   # (depth+1, N, D): every layer's patch tokens

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

Layers and tokens. `layers` picks the hidden states: -1 (default) the last block's output, what the official
extractor gives; N the output of block N (0 = the input of the first block); a list of them; or "all" (0..depth).
One layer gives the shapes below; several put a layer axis first. `tokens` picks what of a layer is returned:
cls (D,), mean (D,) = the mean of the patch tokens holding audio, patch (N, D), timestamp (T, D), all (1+N, D)
(`utterance` and `frame` are EAT's extractor's names for cls and patch).
"""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sslam.audio.front_end import FrontEndConfig, fit_length, load_raw_fbank, normalise, resample, waveform_to_fbank
from sslam.model.checkpoints.export import random_encoder, save_pretrained
from sslam.model.checkpoints.read import build_encoder, read_checkpoint
from sslam.model.checkpoints.settings import InputSettings, default_input, input_settings
from sslam.model.encoder import AudioEncoder, hidden_states
from sslam.runtime.device import resolve_device
from sslam.runtime.errors import AudioError, SslamError

CHECKPOINT_ENVIRONMENT = "SSLAM_CHECKPOINT"
RANDOM = "random"  # the one spelling that asks for a randomly initialised encoder
LONG_AUDIO = ("window", "truncate")
TOKENS = ("cls", "mean", "patch", "timestamp", "all")
TOKEN_ALIASES = {"utterance": "cls", "frame": "patch"}  # the names of EAT's official extractor
GRANULARITIES = TOKENS + tuple(TOKEN_ALIASES)
ALL_LAYERS = "all"
DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


def token_name(name: str) -> str:
    """A token choice (cls, mean, patch, timestamp, all, or EAT's utterance / frame) -> its canonical name."""
    name = TOKEN_ALIASES.get(name, name)
    if name not in TOKENS:
        raise SslamError(f"tokens must be one of {', '.join(GRANULARITIES)}, got {name!r}")
    return name


def parse_layers(layers: int | str | Sequence[int] | None, depth: int) -> tuple[tuple[int, ...], bool]:
    """-1, N, "N", "4,8,12", [4, 8, 12] or "all" -> (layer numbers in 0..depth, whether a layer axis is kept).
    One layer (an int, or a string without a comma) keeps today's shapes; a list or "all" adds the axis."""
    if layers is None:
        layers = -1
    if isinstance(layers, str):
        text = layers.strip()
        if text == ALL_LAYERS:
            return tuple(range(depth + 1)), True
        try:
            numbers = [int(part) for part in text.split(",")]
        except ValueError:
            raise SslamError(f"layers must be a layer number, a comma-separated list of them or 'all', got {layers!r}"
                             ) from None
        stacked = "," in text
    elif isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
        numbers, stacked = [int(layers)], False
    elif isinstance(layers, Sequence) and layers and all(isinstance(n, (int, np.integer)) for n in layers):
        numbers, stacked = [int(n) for n in layers], True
    else:
        raise SslamError(f"layers must be a layer number, a list of them or 'all', got {layers!r}")
    for number in numbers:
        if not -(depth + 1) <= number <= depth:
            raise SslamError(f"layer {number} does not exist: the encoder has layers 0..{depth} (0 = the input of "
                             f"the first block, {depth} = -1 = the last block's output)")
    return tuple(number % (depth + 1) for number in numbers), stacked


@dataclass
class ClipEmbedding:
    """One clip's embeddings. `patches` (P, F_p, D) holds every time patch the windows span (the last
    window's padding included, as the official extractor keeps it); `real_time_patches` of them contain
    audio. With several `layers` (`stacked`), `scene` is (L, D) and `patches` (L, P, F_p, D), and every
    token choice gets the same leading layer axis."""

    scene: torch.Tensor
    patches: torch.Tensor
    num_frames: int
    num_windows: int
    truncated: bool
    patch_ms: float
    frame_ms: float
    layers: tuple[int, ...] = ()  # the layer numbers (0..depth) behind the leading axis, or the one layer
    stacked: bool = False

    @property
    def real_time_patches(self) -> int:
        covered = self.patches.shape[-3]
        frames_per_patch = self.patch_ms / self.frame_ms
        return min(covered, math.ceil(self.num_frames / frames_per_patch))

    @property
    def timestamps(self) -> torch.Tensor:
        """(T, D): one vector per time patch that holds audio, averaged over its frequency patches."""
        return self.patches[..., : self.real_time_patches, :, :].mean(dim=-2)

    @property
    def mean(self) -> torch.Tensor:
        """(D,): the mean of every patch token that holds audio (the padding of the last window left out, so a
        clip's mean does not depend on the window or on what it is batched with)."""
        return self.patches[..., : self.real_time_patches, :, :].mean(dim=(-3, -2))

    @property
    def times_ms(self) -> torch.Tensor:
        """(T,) the centre of each time patch: patch t spans frames [16t, 16t+15], frame i the samples of
        [10i, 10i + 25) ms, so its centre is at 160·t + 87.5 ms."""
        window_ms = 25.0  # the Kaldi analysis window
        first_centre = (self.patch_ms - self.frame_ms + window_ms) / 2
        steps = torch.arange(self.real_time_patches, device=self.patches.device, dtype=torch.float32)
        return first_centre + self.patch_ms * steps

    def tokens(self, name: str) -> torch.Tensor:
        """What `name` picks of each layer (module docstring): cls (D,), mean (D,), patch (N, D), timestamp (T, D),
        all (1+N, D) = cls then the patch tokens; several layers put their axis first."""
        name = token_name(name)
        if name == "cls":
            return self.scene
        if name == "mean":
            return self.mean
        if name == "timestamp":
            return self.timestamps
        patches = self.patches.flatten(-3, -2)  # time-major: token t·F_p + f
        if name == "patch":
            return patches
        return torch.cat([self.scene.unsqueeze(-2), patches], dim=-2)

    def granularity(self, name: str) -> np.ndarray:
        """The `sslam extract` outputs: `tokens(name)` as float32 numpy."""
        return self.tokens(name).float().cpu().numpy()


class Embedder(nn.Module):
    """An encoder with its input settings and windowing: waveforms or fbanks in, `ClipEmbedding`s out.

    Also carries the attribute names of the HEAR API (`sample_rate`, `scene_embedding_size`,
    `timestamp_embedding_size`), so `sslam.embeddings.hear.load_model` can return it as is.
    """

    def __init__(self, encoder: AudioEncoder, settings: InputSettings | None = None, *, window: int | None = None,
                 hop: int | None = None, long_audio: str = "window", batch_size: int = 16,
                 dtype: str | torch.dtype | None = None, layers: int | str | Sequence[int] | None = -1,
                 scene_tokens: str = "cls") -> None:
        super().__init__()
        self.encoder = encoder.eval()
        self.layers, self.stacked = parse_layers(layers, encoder.config.depth)
        self.scene_tokens = token_name(scene_tokens)
        if self.scene_tokens not in ("cls", "mean"):
            raise SslamError(f"scene_tokens must be cls or mean, got {scene_tokens!r}")
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
        """D, the encoder's width: the size of one layer's vector."""
        return self.encoder.config.embed_dim

    @property
    def feature_size(self) -> int:
        """The size of a scene or timestamp vector of `scene_embeddings` / `timestamp_embeddings` (HEAR, X-ARES):
        D per layer, the layers concatenated in the order asked for."""
        return self.embedding_size * len(self.layers)

    scene_embedding_size = feature_size
    timestamp_embedding_size = feature_size

    def with_layers(self, layers: int | str | Sequence[int] | None) -> "Embedder":
        """The same encoder and settings with other layers (shares the weights; nothing is copied)."""
        return Embedder(self.encoder, self.settings, window=self.window, hop=self.hop, long_audio=self.long_audio,
                        batch_size=self.batch_size, dtype=self.autocast_dtype, layers=layers,
                        scene_tokens=self.scene_tokens)

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
                clip = resample(clip, rate, self.sample_rate)  # bounded: a prime rate never builds a 6-GB kernel
            out.append(clip)
        return out

    # ------------------------------------------------------------------ encoding
    def window_starts(self, num_frames: int) -> list[int]:
        if self.long_audio == "truncate" or num_frames <= self.window:
            return [0]
        return [k * self.hop for k in range(1 + math.ceil((num_frames - self.window) / self.hop))]

    def num_windows(self, num_frames: int) -> int:
        return len(self.window_starts(num_frames))

    @torch.inference_mode()
    def embed_fbanks(self, fbanks: Sequence[torch.Tensor], warn_truncation: bool = True,
                     on_windows: Callable[[int], None] | None = None) -> list[ClipEmbedding]:
        """Raw log-mels (T_i, F) -> one ClipEmbedding each; all their windows run through the encoder
        together, `batch_size` windows at a time. `on_windows(n)` is called after each batch of n windows
        (progress inside long clips)."""
        if not fbanks:
            return []
        plans, windows = [], []
        for fbank in fbanks:
            starts = self.window_starts(fbank.shape[0])
            plans.append(starts)
            for start in starts:
                window = fit_length(fbank[start: start + self.window], self.window)
                windows.append(normalise(window.float(), self.settings.norm_mean, self.settings.norm_std))
        cls, patches = self._encode_windows(windows, on_windows)
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

    def _encode_windows(self, windows: list[torch.Tensor], on_windows: Callable[[int], None] | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, F) windows -> CLS outputs (n, L, D) and patch tokens (n, L, Tp, Fp, D) of the chosen layers,
        float32 on the device."""
        time_patches, freq_patches = self.encoder.grid(self.window)
        cls, patches = [], []
        use_autocast = self.autocast_dtype is torch.bfloat16
        for first in range(0, len(windows), self.batch_size):
            batch = torch.stack(windows[first: first + self.batch_size]).to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_autocast):
                tokens = hidden_states(self.encoder, batch, self.layers).float()  # (n, L, 1+N, D)
            cls.append(tokens[:, :, 0])
            patches.append(tokens[:, :, 1:].reshape(*tokens.shape[:2], time_patches, freq_patches, -1))
            if on_windows is not None:
                on_windows(batch.shape[0])
        return torch.cat(cls), torch.cat(patches)

    def _assemble(self, num_frames: int, starts: list[int], cls: torch.Tensor, patches: torch.Tensor) -> ClipEmbedding:
        """One clip's windows (K of them: cls (K, L, D), patches (K, L, Tp, Fp, D)) -> its ClipEmbedding."""
        patch = self.encoder.config.patch_size
        window_patches = self.window // patch
        real_frames = torch.tensor([max(0, min(self.window, num_frames - start)) for start in starts],
                                   dtype=torch.float32, device=cls.device)
        scene = (real_frames[:, None, None] * cls).sum(0) / real_frames.sum()  # (L, D)
        first_patch = torch.tensor(starts, device=cls.device) // patch  # (K,)
        covered = int(first_patch[-1]) + window_patches
        position = torch.arange(covered, device=cls.device)
        offset = position[:, None] - first_patch[None, :]  # (P, K): index of patch g inside window k
        inside = (offset >= 0) & (offset < window_patches)
        distance = ((offset + 0.5) - window_patches / 2).abs().masked_fill(~inside, math.inf)
        owner = distance.argmin(dim=1)  # nearest window centre; ties go to the earlier window
        tokens = patches[owner, :, offset[position, owner]].movedim(1, 0)  # (P, L, Fp, D) -> (L, P, Fp, D)
        if not self.stacked:
            scene, tokens = scene[0], tokens[0]
        return ClipEmbedding(scene, tokens, num_frames, len(starts), num_frames > self.window and len(starts) == 1,
                             self.patch_ms, self.front_end.frame_shift_ms, self.layers, self.stacked)

    def embed(self, audio: Any, sample_rate: int | None = None) -> list[ClipEmbedding]:
        """Waveforms (see `_waveforms`) -> one ClipEmbedding each."""
        waveforms = self._waveforms(audio, sample_rate)
        return self.embed_fbanks([self.fbank(w.to(self.device)) for w in waveforms])

    def _features(self, values: torch.Tensor) -> torch.Tensor:
        """(L, ..., D) of several layers -> (..., L·D), the layers concatenated per vector; one layer as is."""
        return torch.cat(list(values), dim=-1) if self.stacked else values

    def scene_embeddings(self, audio: torch.Tensor) -> torch.Tensor:
        """(n, samples) at 16 kHz -> (n, feature_size) float32: the `scene_tokens` (cls or mean) of each layer."""
        return torch.stack([self._features(clip.tokens(self.scene_tokens)) for clip in self.embed(audio)])

    def timestamp_embeddings(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, samples) at 16 kHz, all the same length -> embeddings (n, T, feature_size) and times in ms (n, T)."""
        clips = self.embed(audio)
        if len({clip.real_time_patches for clip in clips}) > 1:
            raise SslamError("timestamp_embeddings stacks clips of one length; use encode() for clips of several")
        return (torch.stack([self._features(c.timestamps) for c in clips]),
                torch.stack([c.times_ms for c in clips]))

    def save_pretrained(self, folder: str | Path) -> Path:
        """The encoder and its input settings as a model folder that `load_encoder` reads back."""
        return save_pretrained(self.encoder, folder, self.settings)


def checkpoint_spec(spec: str | Path | None) -> str | Path:
    """The checkpoint to load: `spec`, else $SSLAM_CHECKPOINT. A forgotten checkpoint is an error, never a
    silent random network: a benchmark run would score one without anyone noticing."""
    spec = spec or os.environ.get(CHECKPOINT_ENVIRONMENT) or None
    if spec is None:
        raise SslamError(f"no checkpoint given and ${CHECKPOINT_ENVIRONMENT} is unset: name a checkpoint (a file, "
                         f"hf:OWNER/NAME or a model folder), or {RANDOM!r} for a randomly initialised ViT-B/16")
    return spec


def load_encoder(spec: str | Path | None = None, which: str = "student", *, device: str | None = "auto",
                 window: int | None = None, hop: int | None = None, long_audio: str = "window",
                 batch_size: int = 16, dtype: str | None = None, norm_mean: float | None = None,
                 norm_std: float | None = None, num_heads: int | None = None,
                 num_mel_bins: int | None = None, layers: int | str | Sequence[int] | None = -1,
                 scene_tokens: str = "cls") -> Embedder:
    """An `Embedder` for a checkpoint: a file, ``hf:OWNER/NAME[@REV][:FILE]`` or a model folder
    (docs/checkpoints.md). None or "": the checkpoint named by $SSLAM_CHECKPOINT; neither given is an error.
    "random" (only when asked for by name) is a randomly initialised ViT-B/16, whose embeddings carry no
    information. The window defaults to the length the checkpoint was trained with; norm_mean/norm_std
    override the statistics it records. `layers` (module docstring) picks the hidden states, `scene_tokens`
    (cls or mean) what `scene_embeddings` returns."""
    spec = checkpoint_spec(spec)
    if str(spec) == RANDOM:
        warnings.warn("checkpoint 'random': a randomly initialised ViT-B/16, whose embeddings carry no information",
                      stacklevel=2)
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
                        dtype=dtype, layers=layers, scene_tokens=scene_tokens)
    return embedder.to(resolve_device(device))


def encode(model: Embedder, audio: Any, sample_rate: int | None = None, *,
           layers: int | str | Sequence[int] | None = None, tokens: str | None = None
           ) -> list[ClipEmbedding] | list[torch.Tensor]:
    """Embed audio files (a path or a list of paths, decoded by sslam.audio.front_end) or waveforms ((n, samples)
    array/tensor or a list of 1-D ones, at `sample_rate`, default 16 kHz). One ClipEmbedding per clip; with
    `tokens` (cls, mean, patch, timestamp, all) one tensor per clip instead, `clip.tokens(tokens)`. `layers`
    (-1, N, a list, "all"; default: the model's) picks the hidden states; several add a leading layer axis."""
    if layers is not None:
        model = model.with_layers(layers)
    if tokens is not None:
        tokens = token_name(tokens)  # before the work: a typo is one line, not a wasted encoding
    if isinstance(audio, (str, Path)) or (isinstance(audio, (list, tuple)) and audio
                                          and all(isinstance(a, (str, Path)) for a in audio)):
        paths = [audio] if isinstance(audio, (str, Path)) else list(audio)
        clips = model.embed_fbanks([load_raw_fbank(path, model.front_end) for path in paths])
    else:
        clips = model.embed(audio, sample_rate)
    return clips if tokens is None else [clip.tokens(tokens) for clip in clips]


__all__ = ["CHECKPOINT_ENVIRONMENT", "RANDOM", "TOKENS", "ClipEmbedding", "Embedder", "encode", "load_encoder",
           "parse_layers"]
