"""Training-time augmentations of downstream training, on batches of normalised fbank (B, T, F).

Order follows the official code: per-clip augmentations first (roll + gain, or keyword-spotting
noise; done in its dataset), then batch mixup, then SpecAug (done in its model).

Roll and gain work on the cached fbank instead of the waveform (spec §1 draws them on the
waveform before the fbank):
* roll: rolling the waveform circularly by r samples ~ rolling the frames circularly by r/160
  (10 ms shift). Only the clip's true frames roll; the padding stays at the end, as it does when
  the waveform is rolled before padding. The frames that straddle the wrap point differ slightly.
* gain: the front end is linear up to the power spectrum (DC removal, pre-emphasis, window, FFT),
  so a waveform gain g multiplies every mel energy by g² and adds exactly 2·ln(g) to the raw
  log-mel, i.e. 2·ln(g) / (2·std) to the normalised log-mel ((x − mean) / (2·std), spec §1).
  The only exception is a mel energy at the floor of the log (digital silence). Padded frames
  are zero in the raw domain whatever the gain, so they are left alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torchaudio

GAIN_BETA = 10.0        # official: gain = Beta(10, 10) + 0.5, i.e. in [0.5, 1.5], mean 1
NOISE_ROLL_FRAMES = 10  # keyword-spotting roll: numpy randint(-10, 10) -> offsets in [-10, 9]


def on_device(tensor: torch.Tensor, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A per-clip value drawn on the host, on `like`'s device. To a GPU it goes from pinned memory: a copy
    from ordinary memory would first wait for every kernel already queued."""
    if like.device.type == "cuda":
        return tensor.pin_memory().to(like.device, dtype, non_blocking=True)
    return tensor.to(like.device, dtype)


def _per_example_roll(fbank: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Roll example b's first lengths[b] frames circularly by offsets[b]; frames after stay put."""
    time = torch.arange(fbank.shape[1], device=fbank.device)[None, :]
    lengths = on_device(lengths, fbank)[:, None].clamp(min=1)
    source = torch.where(time < lengths, (time - on_device(offsets, fbank)[:, None]) % lengths, time)
    return fbank.gather(1, source[..., None].expand(-1, -1, fbank.shape[2]))


def roll_and_gain(fbank: torch.Tensor, num_frames: torch.Tensor, norm_std: float) -> torch.Tensor:
    """Random circular time roll of each clip's true frames plus a random gain (see module doc)."""
    batch, total_frames = fbank.shape[:2]
    lengths = num_frames.clamp(max=total_frames).to(torch.long)
    offsets = (torch.rand(batch) * lengths).to(torch.long)
    rolled = _per_example_roll(fbank, offsets, lengths)
    # validate_args=False: checking the constant parameters would read them back at every step.
    gain = torch.distributions.Beta(GAIN_BETA, GAIN_BETA, validate_args=False).sample((batch,)) + 0.5
    offset = on_device(2.0 * torch.log(gain) / (2.0 * norm_std), fbank, fbank.dtype)
    inside = torch.arange(total_frames, device=fbank.device)[None, :] < on_device(lengths, fbank)[:, None]
    return rolled + offset[:, None, None] * inside[..., None]


def keyword_noise(fbank: torch.Tensor) -> torch.Tensor:
    """Keyword-spotting noise (spec §1): add U[0,1) noise scaled by U[0,1)/10 per clip, then roll
    the whole clip (padding included, as officially) by an offset in [-10, 9] frames."""
    batch, total_frames = fbank.shape[:2]
    scale = torch.rand(batch, 1, 1, device=fbank.device, dtype=fbank.dtype) / 10
    noisy = fbank + torch.rand_like(fbank) * scale
    offsets = torch.randint(-NOISE_ROLL_FRAMES, NOISE_ROLL_FRAMES, (batch,))
    return _per_example_roll(noisy, offsets, torch.full((batch,), total_frames))


def mixup(fbank: torch.Tensor, targets: torch.Tensor, alpha: float, prob: float
          ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Batch-mode mixup: one λ ~ Beta(α, α) for the batch, used with probability `prob`, mixing
    each clip with the REVERSED batch (clip b with clip B−1−b); targets are mixed the same way.
    Returns (fbank, targets, λ); λ = 1 when mixup is off or not drawn."""
    if alpha <= 0 or torch.rand(()) >= prob:
        return fbank, targets, 1.0
    lam = float(torch.distributions.Beta(alpha, alpha, validate_args=False).sample())
    mixed = lam * fbank + (1.0 - lam) * fbank.flip(0)
    return mixed, lam * targets + (1.0 - lam) * targets.flip(0), lam


def spec_augment(fbank: torch.Tensor, freq_ratio: float, time_ratio: float) -> torch.Tensor:
    """One frequency mask of width U[0, freq_ratio·F) and one time mask of width U[0, time_ratio·T)
    per example, both filled with 0 (the normalised mean)."""
    _, total_frames, mel_bins = fbank.shape
    if freq_ratio > 0:
        fbank = torchaudio.functional.mask_along_axis_iid(fbank, freq_ratio * mel_bins, 0.0, axis=2)
    if time_ratio > 0:
        fbank = torchaudio.functional.mask_along_axis_iid(fbank, time_ratio * total_frames, 0.0, axis=1)
    return fbank


@dataclass
class TrainingAugmentation:
    """All training augmentations of one regime, applied in the official order."""

    norm_std: float
    roll: bool = True
    noise: bool = False
    mixup_alpha: float = 0.8
    mixup_prob: float = 0.9
    specaug_freq: float = 0.2
    specaug_time: float = 0.2

    @classmethod
    def from_regime(cls, regime, norm_std: float) -> "TrainingAugmentation":
        return cls(norm_std=norm_std, roll=regime.roll, noise=regime.noise, mixup_alpha=regime.mixup,
                   mixup_prob=regime.mixup_prob, specaug_freq=regime.specaug_freq,
                   specaug_time=regime.specaug_time)

    def __call__(self, fbank: torch.Tensor, targets: torch.Tensor, num_frames: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.roll:
            fbank = roll_and_gain(fbank, num_frames, self.norm_std)
        if self.noise:
            fbank = keyword_noise(fbank)
        fbank, targets, _ = mixup(fbank, targets, self.mixup_alpha, self.mixup_prob)
        return spec_augment(fbank, self.specaug_freq, self.specaug_time), targets
