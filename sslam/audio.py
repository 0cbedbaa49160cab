"""Audio front end: decode → mono → 16 kHz → DC removal → Kaldi fbank → pad/truncate → normalise.

This is the single code path from an audio file to the model's input; the cache, the on-the-fly
loader, feature extraction and the tests all go through it. Parameters follow the official
SSLAM/EAT recipe (spec §1).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio

from sslam.errors import AudioError

from sslam.front_end import AUDIOSET_MEAN, AUDIOSET_STD, DEFAULT_FRONT_END, FrontEndConfig  # noqa: F401  (re-exported)


def decode_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a wav/flac/ogg file as float32 (frames, channels); raise AudioError on any failure."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"missing audio file: {path}")
    try:
        samples, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as error:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        raise AudioError(f"cannot decode {path}: {error}") from error
    return samples, int(sample_rate)


def to_mono_16k(samples: np.ndarray, sample_rate: int, config: FrontEndConfig = DEFAULT_FRONT_END) -> torch.Tensor:
    """(frames, channels) float array at any rate -> (1, n) mono tensor at config.sample_rate.

    Channels are averaged BEFORE resampling. The official loader resamples first, and because
    torchaudio resamples along the last axis, a soundfile (frames, channels) array gets resampled
    along its channel axis: its recipe is only correct for mono files. Averaging first is correct
    for any channel count and identical for mono.
    """
    if samples.ndim == 1:
        samples = samples[:, None]
    mono = torch.from_numpy(np.ascontiguousarray(samples.mean(axis=1, dtype=np.float32)))[None, :]
    if sample_rate != config.sample_rate:
        mono = torchaudio.functional.resample(mono, sample_rate, config.sample_rate)
    return mono


def check_waveform(waveform: torch.Tensor, config: FrontEndConfig = DEFAULT_FRONT_END, name: str = "clip") -> None:
    """Raise AudioError for empty, too short, non-finite or silent audio."""
    if waveform.numel() == 0:
        raise AudioError(f"{name}: empty audio (zero samples)")
    if not torch.isfinite(waveform).all():
        raise AudioError(f"{name}: audio contains NaN or inf samples")
    if waveform.shape[-1] < config.min_samples():
        raise AudioError(f"{name}: audio shorter than one 25 ms analysis window ({waveform.shape[-1]} samples)")
    peak = (waveform - waveform.mean()).abs().max().item()
    if peak <= 10 ** (config.silence_dbfs / 20):
        level = "-inf" if peak == 0 else f"{20 * math.log10(peak):.1f}"
        raise AudioError(f"{name}: silent audio (peak {level} dBFS <= {config.silence_dbfs} dBFS)")


def waveform_to_fbank(waveform: torch.Tensor, config: FrontEndConfig = DEFAULT_FRONT_END) -> torch.Tensor:
    """(1, n) mono waveform at config.sample_rate -> raw log-mel (T, num_mel_bins), DC offset removed."""
    waveform = waveform - waveform.mean()
    return torchaudio.compliance.kaldi.fbank(
        waveform,
        htk_compat=config.htk_compat,
        sample_frequency=config.sample_rate,
        use_energy=config.use_energy,
        window_type=config.window_type,
        num_mel_bins=config.num_mel_bins,
        dither=config.dither,
        frame_shift=config.frame_shift_ms,
    )


def fit_length(fbank: torch.Tensor, target_length: int) -> torch.Tensor:
    """Zero-pad at the end or keep the first `target_length` frames, in the raw log-mel domain
    (the official recipe pads before normalising, so padding becomes +mean/(2·std) afterwards)."""
    frames = fbank.shape[-2]
    if frames < target_length:
        return torch.nn.functional.pad(fbank, (0, 0, 0, target_length - frames))
    return fbank[..., :target_length, :]


def normalise(fbank: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """(x − mean) / (2·std): the official recipe's factor 2, which the paper's tables omit."""
    return (fbank - mean) / (2.0 * std)


def load_raw_fbank(path: str | Path, config: FrontEndConfig = DEFAULT_FRONT_END) -> torch.Tensor:
    """Audio file -> raw (un-normalised, un-padded) log-mel (T, num_mel_bins) float32."""
    samples, sample_rate = decode_audio(path)
    waveform = to_mono_16k(samples, sample_rate, config)
    check_waveform(waveform, config, name=str(path))
    fbank = waveform_to_fbank(waveform, config)
    if not torch.isfinite(fbank).all():
        raise AudioError(f"{path}: fbank contains NaN or inf")
    return fbank


def load_fbank(
    path: str | Path,
    target_length: int = 1024,
    mean: float = AUDIOSET_MEAN,
    std: float = AUDIOSET_STD,
    config: FrontEndConfig = DEFAULT_FRONT_END,
) -> torch.Tensor:
    """Audio file -> normalised model input, float32 (target_length, num_mel_bins)."""
    return normalise(fit_length(load_raw_fbank(path, config), target_length), mean, std).float()
