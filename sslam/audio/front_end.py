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
import soxr
import torch
import torchaudio

from sslam.runtime.errors import AudioError
from sslam.runtime.limits import (MAX_DECODED_BYTES, MAX_SAMPLE_RATE, MAX_SINC_KERNEL_ELEMENTS,  # noqa: F401
                                  MAX_WHOLE_FILE_SECONDS, MIN_SAMPLE_RATE)

from sslam.audio.config import AUDIOSET_MEAN, AUDIOSET_STD, DEFAULT_FRONT_END, FrontEndConfig  # noqa: F401  (re-exported)


# Decoding a whole file costs memory in proportion to its length (a 1-h file: GBs for the samples, the
# resampler and the fbank's frame matrix). Callers that need only the first frames say so with
# `max_frames`; a whole-file decode longer than MAX_WHOLE_FILE_SECONDS is refused as an oversize file (a
# recorded skip), and so is one needing more than MAX_DECODED_BYTES (sslam.runtime.limits holds both).
# Extra native-rate samples read past the last needed one, so that the resampler's filter sees the same
# neighbourhood as in a whole-file decode (torchaudio's sinc filter spans ~6 input periods per side).
_RESAMPLER_MARGIN_SECONDS = 0.01


def audio_info(path: str | Path) -> soundfile._SoundFileInfo:
    """The file's header (frames, samplerate, channels) without decoding it; AudioError on any failure."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"missing audio file: {path}")
    try:
        info = soundfile.info(str(path))
    except Exception as error:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        raise AudioError(f"cannot decode {path}: {error}") from error
    if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
        raise AudioError(f"{path}: implausible sample rate {info.samplerate} Hz in the header (a real recording has "
                         f"{MIN_SAMPLE_RATE:,} to {MAX_SAMPLE_RATE:,} Hz): damaged or crafted file")
    return info


def decode_audio(path: str | Path, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Read a wav/flac/ogg file as float32 (frames, channels), only its first `max_seconds` when given;
    raise AudioError on any failure."""
    path = Path(path)
    info = audio_info(path)
    frames = -1
    if max_seconds is not None:
        frames = max(1, math.ceil(max_seconds * info.samplerate))
        if 0 < info.frames <= frames:
            frames = -1
    elif info.frames / max(info.samplerate, 1) > MAX_WHOLE_FILE_SECONDS:
        raise AudioError(f"{path}: oversize file ({info.frames / info.samplerate / 60:.1f} min; a whole-file decode "
                         f"is limited to {MAX_WHOLE_FILE_SECONDS / 60:.0f} min): give max_frames or cut it")
    decoded_bytes = (frames if frames > 0 else max(info.frames, 0)) * info.channels * 4
    if decoded_bytes > MAX_DECODED_BYTES:
        raise AudioError(f"{path}: oversize file ({info.channels} channels: {decoded_bytes / 2**20:.0f} MiB of samples "
                         f"to decode, more than {MAX_DECODED_BYTES / 2**20:.0f} MiB)")
    try:
        samples, sample_rate = soundfile.read(str(path), frames=frames, dtype="float32", always_2d=True)
    except MemoryError as error:
        raise AudioError(f"{path}: oversize file: not enough memory to decode it") from error
    except Exception as error:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        raise AudioError(f"cannot decode {path}: {error}") from error
    return samples, int(sample_rate)


def num_fbank_frames(num_samples: int, config: FrontEndConfig = DEFAULT_FRONT_END) -> int:
    """Frames the Kaldi fbank gives for `num_samples` samples at config.sample_rate (snip_edges)."""
    window, shift = config.min_samples(), config.frame_shift_samples()
    return 0 if num_samples < window else 1 + (num_samples - window) // shift


def clip_num_samples(path: str | Path, config: FrontEndConfig = DEFAULT_FRONT_END) -> int:
    """Samples the whole file has at the front end's rate, from its header alone (no decoding)."""
    info = audio_info(path)
    return math.ceil(info.frames * config.sample_rate / info.samplerate)


def clip_num_frames(path: str | Path, config: FrontEndConfig = DEFAULT_FRONT_END) -> int:
    """Frames the whole file would give, from its header alone (no decoding)."""
    return num_fbank_frames(clip_num_samples(path, config), config)


def _seconds_for_frames(max_frames: int, config: FrontEndConfig) -> float:
    samples = config.min_samples() + (max_frames - 1) * config.frame_shift_samples()
    return samples / config.sample_rate + _RESAMPLER_MARGIN_SECONDS


def sinc_kernel_elements(orig_rate: int, new_rate: int) -> int:
    """Elements of the kernel torchaudio's sinc resampler builds for orig_rate -> new_rate (its default
    lowpass_filter_width 6 and rolloff 0.99): (new / g) × (orig / g + 2·width), g = gcd(orig, new)."""
    divisor = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // divisor, new_rate // divisor
    width = math.ceil(6 * orig / (min(orig, new) * 0.99))
    return new * (orig + 2 * width)


def resample(waveform: torch.Tensor, orig_rate: int, new_rate: int, name: str = "audio") -> torch.Tensor:
    """(..., n) float32 samples at orig_rate -> (..., ceil(n · new_rate / orig_rate)) at new_rate.

    torchaudio's sinc resampler (the official recipe's) wherever its kernel is small, which is every common
    rate (8, 11.025, 16, 22.05, 24, 32, 44.1, 48, 96 kHz...), so that the front end equals the reference there
    exactly. Its kernel grows with the rates' co-prime parts (48,017 Hz: 16,000 × 48,055 elements, 6 GB), so
    above MAX_SINC_KERNEL_ELEMENTS soxr resamples instead (HQ: a steeper filter than torchaudio's), in memory
    proportional to the audio alone; its output is cut or zero-padded to torchaudio's length, so that frame
    counts from file headers stay right. Any failure, memory included, is an AudioError naming `name`."""
    if orig_rate == new_rate:
        return waveform
    try:
        if sinc_kernel_elements(orig_rate, new_rate) <= MAX_SINC_KERNEL_ELEMENTS:
            return torchaudio.functional.resample(waveform, orig_rate, new_rate)
        length = math.ceil(waveform.shape[-1] * new_rate / orig_rate)
        flat = waveform.detach().reshape(-1, waveform.shape[-1]).to(torch.float32).cpu().numpy()
        rows = [soxr.resample(np.ascontiguousarray(row), orig_rate, new_rate, quality="HQ")[:length] for row in flat]
        out = torch.from_numpy(np.stack([np.pad(row, (0, length - len(row))) for row in rows]))
        return out.reshape(*waveform.shape[:-1], length).to(waveform.device)
    except (MemoryError, RuntimeError, ValueError) as error:  # torch's allocator raises RuntimeError
        raise AudioError(f"{name}: cannot resample {orig_rate} Hz to {new_rate} Hz: "
                         f"{str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}") from error


def to_mono_16k(samples: np.ndarray, sample_rate: int, config: FrontEndConfig = DEFAULT_FRONT_END,
                name: str = "audio") -> torch.Tensor:
    """(frames, channels) float array at any rate -> (1, n) mono tensor at config.sample_rate.

    Channels are averaged BEFORE resampling. The official loader resamples first, and because
    torchaudio resamples along the last axis, a soundfile (frames, channels) array gets resampled
    along its channel axis: its recipe is only correct for mono files. Averaging first is correct
    for any channel count and identical for mono.
    """
    if samples.ndim == 1:
        samples = samples[:, None]
    mono = torch.from_numpy(np.ascontiguousarray(samples.mean(axis=1, dtype=np.float32)))[None, :]
    return resample(mono, sample_rate, config.sample_rate, name)


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


def load_raw_fbank(path: str | Path, config: FrontEndConfig = DEFAULT_FRONT_END,
                   max_frames: int | None = None) -> torch.Tensor:
    """Audio file -> raw (un-normalised, un-padded) log-mel (T, num_mel_bins) float32.

    `max_frames` (None = the whole file): decode only the audio that the first `max_frames` frames need
    and return at most that many, so memory follows `max_frames`, not the file. The DC offset and the
    silence test then cover the decoded part, which is all the model sees."""
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    max_seconds = None if max_frames is None else _seconds_for_frames(max_frames, config)
    samples, sample_rate = decode_audio(path, max_seconds)
    waveform = to_mono_16k(samples, sample_rate, config, name=str(path))
    del samples
    check_waveform(waveform, config, name=str(path))
    try:
        fbank = waveform_to_fbank(waveform, config)
    except (MemoryError, RuntimeError) as error:  # a per-file failure (torch's allocator raises RuntimeError)
        raise AudioError(f"{path}: cannot compute its fbank: {str(error).strip().splitlines()[0]}") from error
    if max_frames is not None:
        fbank = fbank[:max_frames]
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
