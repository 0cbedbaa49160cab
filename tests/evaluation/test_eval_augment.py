"""Training augmentations: mixup, SpecAug, roll + gain on the cached fbank, keyword-spotting noise."""
import math

import pytest
import torch

from sslam.audio.front_end import waveform_to_fbank
from sslam.evaluation.augment import (TrainingAugmentation, keyword_noise, mixup, roll_and_gain,
                                      spec_augment)


def test_mixup_mixes_with_the_reversed_batch_and_mixes_targets_alike():
    torch.manual_seed(0)
    fbank, targets = torch.randn(5, 16, 8), torch.eye(5)
    mixed, mixed_targets, lam = mixup(fbank, targets, alpha=0.8, prob=1.0)
    assert 0.0 < lam < 1.0
    torch.testing.assert_close(mixed, lam * fbank + (1 - lam) * fbank.flip(0))
    torch.testing.assert_close(mixed_targets, lam * targets + (1 - lam) * targets.flip(0))
    # the number of positive labels (the BCE normaliser) is unchanged by mixing
    assert mixed_targets.sum().item() == pytest.approx(targets.sum().item())


def test_mixup_probability_and_alpha_zero_leave_the_batch_alone():
    fbank, targets = torch.randn(4, 16, 8), torch.eye(4)
    for alpha, prob in ((0.8, 0.0), (0.0, 1.0)):
        out, out_targets, lam = mixup(fbank, targets, alpha, prob)
        assert lam == 1.0 and out is fbank and out_targets is targets
    torch.manual_seed(1)
    applied = sum(mixup(fbank, targets, 0.8, 0.9)[2] != 1.0 for _ in range(400))
    assert 320 < applied < 395            # ~90 % of 400 batches are mixed


def test_spec_augment_zeroes_one_frequency_band_and_one_time_band_per_example():
    torch.manual_seed(2)
    batch, frames, bins = 64, 100, 40
    fbank = torch.randn(batch, frames, bins) + 10.0          # no zero anywhere before masking
    out = spec_augment(fbank, freq_ratio=0.2, time_ratio=0.3)
    widths_f, widths_t = [], []
    for example in out:
        zero = example == 0
        time_rows = zero.all(dim=1).nonzero().flatten()
        freq_cols = zero.all(dim=0).nonzero().flatten()
        for index in (time_rows, freq_cols):   # each mask is one contiguous band
            if len(index):
                assert (index.diff() == 1).all()
        widths_t.append(len(time_rows))
        widths_f.append(len(freq_cols))
        # every zero lies in the time band or the frequency band
        band = torch.zeros_like(zero)
        band[time_rows] = True
        band[:, freq_cols] = True
        assert (zero <= band).all()
    assert max(widths_f) < 0.2 * bins and max(widths_t) < 0.3 * frames
    assert max(widths_f) > 0 and max(widths_t) > 0
    torch.testing.assert_close(spec_augment(fbank, 0.0, 0.0), fbank)


def test_waveform_gain_is_an_additive_offset_in_log_mel():
    torch.manual_seed(3)
    time_axis = torch.arange(16000) / 16000
    waveform = (0.3 * torch.sin(2 * math.pi * 440 * time_axis) + 0.05 * torch.randn(16000))[None]
    gain = 1.37
    original = waveform_to_fbank(waveform)
    difference = waveform_to_fbank(gain * waveform) - original
    # Exact except where the mel energy sits at the log floor (low mel bins that no FFT bin
    # reaches at 128 bins / 512-point FFT): those stay at the floor whatever the gain.
    floor = original == original.min()
    assert floor.float().mean() < 0.05
    torch.testing.assert_close(difference[~floor], torch.full_like(difference[~floor], 2 * math.log(gain)),
                               atol=2e-3, rtol=0)


def test_roll_and_gain_rolls_true_frames_only_and_adds_a_gain_offset():
    torch.manual_seed(4)
    norm_std = 4.5
    fbank = torch.randn(6, 40, 8)
    num_frames = torch.tensor([40, 30, 25, 12, 1, 33])
    out = roll_and_gain(fbank, num_frames, norm_std)
    for example, length in enumerate(num_frames.tolist()):
        torch.testing.assert_close(out[example, length:], fbank[example, length:])   # padding untouched
        original, augmented = fbank[example, :length], out[example, :length]
        matches = []
        for shift in range(length):
            offset = augmented - torch.roll(original, shift, dims=0)
            if offset.std() < 1e-5 if offset.numel() > 1 else True:
                matches.append(offset.mean().item())
        assert matches, f"example {example}: not a circular roll plus a constant"
        gain = math.exp(matches[0] * norm_std)        # offset = 2 ln g / (2 std)
        assert 0.5 <= gain <= 1.5


def test_keyword_noise_adds_small_positive_noise_and_rolls_by_at_most_ten_frames():
    torch.manual_seed(5)
    fbank = torch.randn(8, 50, 4)
    out = keyword_noise(fbank)
    for example in range(8):
        found = False
        for shift in range(-10, 10):
            noise = out[example] - torch.roll(fbank[example], shift, dims=0)
            if (noise >= 0).all() and (noise < 0.1).all():
                found = True
        assert found


def test_training_augmentation_keeps_shapes_and_target_mass():
    torch.manual_seed(6)
    augment = TrainingAugmentation(norm_std=4.0, roll=True, noise=True, mixup_alpha=0.8, mixup_prob=1.0)
    fbank, targets = torch.randn(4, 32, 16), torch.eye(4)
    out, out_targets = augment(fbank, targets, torch.tensor([32, 20, 10, 32]))
    assert out.shape == fbank.shape and out_targets.shape == targets.shape
    assert out_targets.sum().item() == pytest.approx(4.0)
