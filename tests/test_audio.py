"""The audio front end (sslam/audio.py): spec §1 parameters, sample-rate/channel handling, pad/crop/normalise, bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile
import torch
import torchaudio

from sslam.audio import (
    AUDIOSET_MEAN,
    AUDIOSET_STD,
    DEFAULT_FRONT_END,
    FrontEndConfig,
    fit_length,
    load_fbank,
    load_raw_fbank,
    normalise,
    waveform_to_fbank,
)
from sslam.errors import AudioError



def tone(seconds: float, sample_rate: int, frequency: float = 1000.0, amplitude: float = 0.3, seed: int = 0) -> np.ndarray:
    time_axis = np.arange(int(seconds * sample_rate)) / sample_rate
    noise = np.random.default_rng(seed).standard_normal(len(time_axis)) * 0.01
    return (amplitude * np.sin(2 * np.pi * frequency * time_axis) + noise).astype(np.float32)


def write(path, samples, sample_rate, subtype="PCM_16"):
    soundfile.write(str(path), samples, sample_rate, subtype=subtype)
    return path


def test_front_end_parameters_match_spec_section_1():
    config = DEFAULT_FRONT_END
    assert (config.sample_rate, config.num_mel_bins, config.frame_shift_ms) == (16000, 128, 10.0)
    assert (config.window_type, config.htk_compat, config.use_energy, config.dither) == ("hanning", True, False, 0.0)
    # Every Kaldi option the spec lists as "default" spelled out: the front end must agree with it.
    waveform = torch.from_numpy(tone(1.0, 16000))[None]
    expected = torchaudio.compliance.kaldi.fbank(
        waveform - waveform.mean(), htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
        num_mel_bins=128, dither=0.0, frame_shift=10.0, frame_length=25.0, preemphasis_coefficient=0.97,
        round_to_power_of_two=True, low_freq=20.0, high_freq=0.0, remove_dc_offset=True, snip_edges=True,
        use_log_fbank=True, use_power=True)
    torch.testing.assert_close(waveform_to_fbank(waveform), expected)


def test_ten_second_16k_clip_gives_998_frames(tmp_path):
    fbank = load_raw_fbank(write(tmp_path / "ten.wav", tone(10.0, 16000), 16000))
    assert tuple(fbank.shape) == (998, 128)
    assert fbank.dtype == torch.float32


@pytest.mark.parametrize("sample_rate", [8000, 44100, 32000])
def test_other_sample_rates_are_resampled_to_16k(tmp_path, sample_rate):
    reference = load_raw_fbank(write(tmp_path / "ref.wav", tone(1.0, 16000), 16000))
    fbank = load_raw_fbank(write(tmp_path / f"sr{sample_rate}.wav", tone(1.0, sample_rate), sample_rate))
    assert fbank.shape == reference.shape == (98, 128)   # duration, not sample count, sets the frame count
    # The 1 kHz tone lands in the same mel bin whatever the file's rate.
    assert fbank.mean(0).argmax() == reference.mean(0).argmax()


def test_stereo_is_downmixed_before_resampling(tmp_path):
    left, right = tone(1.0, 44100, 700.0, seed=1), tone(1.0, 44100, 2500.0, seed=2)
    stereo = write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 44100, subtype="FLOAT")
    mono = write(tmp_path / "mono.wav", ((left + right) / 2).astype(np.float32), 44100, subtype="FLOAT")
    torch.testing.assert_close(load_raw_fbank(stereo), load_raw_fbank(mono), atol=1e-3, rtol=1e-4)


def test_stereo_file_whose_channels_cancel_is_silent(tmp_path):
    signal = tone(1.0, 44100)
    path = write(tmp_path / "cancel.wav", np.stack([signal, -signal], axis=1), 44100, subtype="FLOAT")
    with pytest.raises(AudioError, match="silent"):
        load_raw_fbank(path)


def test_dc_offset_does_not_change_the_fbank(tmp_path):
    signal = tone(1.0, 16000)
    plain = load_raw_fbank(write(tmp_path / "plain.wav", signal, 16000, subtype="FLOAT"))
    offset = load_raw_fbank(write(tmp_path / "offset.wav", signal + 0.2, 16000, subtype="FLOAT"))
    torch.testing.assert_close(plain, offset, atol=2e-3, rtol=1e-3)


def test_short_clip_is_zero_padded_in_the_raw_domain_before_normalisation(tmp_path):
    path = write(tmp_path / "short.wav", tone(0.5, 16000), 16000)
    raw = load_raw_fbank(path)
    frames = raw.shape[0]
    fitted = fit_length(raw, 100)
    assert fitted.shape == (100, 128)
    assert torch.equal(fitted[:frames], raw) and torch.all(fitted[frames:] == 0)
    model_input = load_fbank(path, target_length=100)
    pad_value = (0.0 - AUDIOSET_MEAN) / (2 * AUDIOSET_STD)
    torch.testing.assert_close(model_input[frames:], torch.full((100 - frames, 128), pad_value))
    assert math.isclose(pad_value, 0.467, abs_tol=1e-3)      # spec §1: padding becomes +0.467


def test_long_clip_keeps_its_first_frames(tmp_path):
    path = write(tmp_path / "long.wav", tone(3.0, 16000), 16000)
    raw = load_raw_fbank(path)
    assert raw.shape[0] == 298
    torch.testing.assert_close(load_fbank(path, 100, mean=-5.0, std=3.0), normalise(raw[:100], -5.0, 3.0))


def test_normalisation_divides_by_twice_the_std():
    values = torch.tensor([[-5.0, 1.0], [3.0, 7.0]])
    torch.testing.assert_close(normalise(values, 1.0, 4.0), (values - 1.0) / 8.0)


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="missing"):
        load_raw_fbank(tmp_path / "nope.wav")


@pytest.mark.parametrize("content", [b"", b"RIFF\x00\x00\x00\x00WAVEfmt garbage", b"\x00\x01" * 500])
def test_corrupt_or_zero_byte_file(tmp_path, content):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError, match="cannot decode"):
        load_raw_fbank(path)


def test_zero_length_audio(tmp_path):
    path = write(tmp_path / "empty.wav", np.zeros((0,), dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="empty"):
        load_raw_fbank(path)


def test_silent_audio(tmp_path):
    with pytest.raises(AudioError, match="silent"):
        load_raw_fbank(write(tmp_path / "silent.wav", np.zeros(16000, dtype=np.float32), 16000))


def test_nan_samples(tmp_path):
    samples = tone(1.0, 16000)
    samples[100] = np.nan
    with pytest.raises(AudioError, match="NaN"):
        load_raw_fbank(write(tmp_path / "nan.wav", samples, 16000, subtype="FLOAT"))


def test_clip_shorter_than_one_window(tmp_path):
    with pytest.raises(AudioError, match="shorter than one 25 ms"):
        load_raw_fbank(write(tmp_path / "tiny.wav", tone(0.01, 16000), 16000))


def test_custom_front_end_changes_the_mel_count(tmp_path):
    fbank = load_raw_fbank(write(tmp_path / "a.wav", tone(1.0, 16000), 16000), FrontEndConfig(num_mel_bins=64))
    assert fbank.shape == (98, 64)
