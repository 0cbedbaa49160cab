"""The audio front end (sslam/audio/front_end.py): spec §1 parameters, sample-rate/channel handling, pad/crop/normalise, bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile
import torch
import torchaudio

from sslam.audio.front_end import (AUDIOSET_MEAN, AUDIOSET_STD, DEFAULT_FRONT_END, FrontEndConfig, fit_length,
                                   load_fbank, load_raw_fbank, normalise, resample, sinc_kernel_elements,
                                   waveform_to_fbank)
from sslam.runtime.errors import AudioError
from sslam.runtime.limits import MAX_SINC_KERNEL_ELEMENTS



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


# --- bounded decoding (issue 10.4) -------------------------------------------------------------------
def long_flac(path, minutes, sample_rate=16000):
    """10 s of tone, then silence (FLAC keeps a 1-h file at a few hundred kB)."""
    with soundfile.SoundFile(str(path), "w", samplerate=sample_rate, channels=1, format="FLAC") as stream:
        stream.write(tone(10.0, sample_rate))
        left = int(minutes * 60 * sample_rate) - 10 * sample_rate
        block = np.zeros(60 * sample_rate, dtype=np.float32)
        while left > 0:
            stream.write(block[:min(left, len(block))])
            left -= len(block)
    return path


@pytest.mark.parametrize("sample_rate", [16000, 44100])
def test_max_frames_keeps_the_result_of_a_clip_within_it(tmp_path, sample_rate):
    path = write(tmp_path / "clip.wav", tone(1.0, sample_rate), sample_rate)
    whole = load_raw_fbank(path)
    assert torch.equal(load_raw_fbank(path, max_frames=len(whole)), whole)
    assert torch.equal(load_raw_fbank(path, max_frames=1024), whole)


@pytest.mark.parametrize("sample_rate", [16000, 44100])
def test_max_frames_decodes_only_the_start_of_a_long_file(tmp_path, monkeypatch, sample_rate):
    path = write(tmp_path / "long.wav", tone(30.0, sample_rate), sample_rate, subtype="FLOAT")
    whole = load_raw_fbank(path)
    requested = []
    real_read = soundfile.read

    def recording_read(*args, **kwargs):
        requested.append(kwargs.get("frames"))
        return real_read(*args, **kwargs)

    monkeypatch.setattr(soundfile, "read", recording_read)
    window = load_raw_fbank(path, max_frames=100)
    assert window.shape == (100, 128)
    # 100 frames = 1.015 s of audio: the read stops shortly after it, far from the file's 30 s.
    assert 1.015 * sample_rate <= requested[0] <= 1.05 * sample_rate
    # Frame by frame the same fbank; only the clip mean subtracted before it covers less audio.
    torch.testing.assert_close(window, whole[:100], atol=2e-3, rtol=0)


def test_a_whole_file_decode_of_an_hour_is_an_oversize_file(tmp_path):
    path = long_flac(tmp_path / "hour.flac", 60)
    with pytest.raises(AudioError, match="oversize"):
        load_raw_fbank(path)
    assert load_raw_fbank(path, max_frames=1024).shape == (1024, 128)


def test_max_frames_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="max_frames"):
        load_raw_fbank(write(tmp_path / "a.wav", tone(1.0, 16000), 16000), max_frames=0)


# --- any sample rate in bounded memory (issue 18.1) ------------------------------------------------------
COMMON_RATES = [8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 96000]


def reference_fbank(path) -> torch.Tensor:
    """The front end as it was before issue 18: channel mean, torchaudio's sinc resampler at every rate, fbank."""
    samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    mono = torch.from_numpy(np.ascontiguousarray(samples.mean(axis=1, dtype=np.float32)))[None, :]
    if rate != 16000:
        mono = torchaudio.functional.resample(mono, rate, 16000)
    return waveform_to_fbank(mono)


@pytest.mark.parametrize("sample_rate", COMMON_RATES)
def test_common_rates_keep_the_official_resampler_bit_for_bit(tmp_path, sample_rate):
    stereo = np.stack([tone(1.3, sample_rate, 700.0, seed=1), tone(1.3, sample_rate, 3000.0, seed=2)], axis=1)
    path = write(tmp_path / f"sr{sample_rate}.wav", stereo, sample_rate, subtype="FLOAT")
    assert sinc_kernel_elements(sample_rate, 16000) <= MAX_SINC_KERNEL_ELEMENTS
    assert torch.equal(load_raw_fbank(path), reference_fbank(path))


@pytest.mark.parametrize("sample_rate", [48017, 44099, 22051, 767999])
def test_an_odd_rate_is_resampled_by_soxr_to_the_same_spectrum(tmp_path, sample_rate):
    # 48,017 Hz is prime: torchaudio's kernel would be 16,000 × 48,055 elements (gigabytes).
    assert sinc_kernel_elements(sample_rate, 16000) > MAX_SINC_KERNEL_ELEMENTS
    odd = load_raw_fbank(write(tmp_path / "odd.wav", tone(1.0, sample_rate), sample_rate, subtype="FLOAT"))
    reference = load_raw_fbank(write(tmp_path / "ref.wav", tone(1.0, 16000), 16000, subtype="FLOAT"))
    assert odd.shape == reference.shape == (98, 128)
    # The 1 kHz tone's bins agree with a 16-kHz recording of it within a fraction of a dB.
    peak = int(reference.mean(0).argmax())
    assert int(odd.mean(0).argmax()) == peak
    assert abs(float(odd[:, peak].mean() - reference[:, peak].mean())) < 0.1


def test_resampled_lengths_follow_the_header_formula():
    for rate in [48017, 44100, 22051]:
        for samples in [401, 4801, 48017]:
            out = resample(torch.ones(1, samples), rate, 16000)
            assert out.shape == (1, math.ceil(samples * 16000 / rate))


@pytest.mark.parametrize("sample_rate", [999, 768001, 999983])
def test_an_implausible_header_rate_is_an_audio_error(tmp_path, sample_rate):
    path = write(tmp_path / "odd.wav", tone(0.2, sample_rate), sample_rate)
    with pytest.raises(AudioError, match="implausible sample rate"):
        load_raw_fbank(path)


def test_a_resampler_out_of_memory_is_an_audio_error(tmp_path, monkeypatch):
    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory\nmore")

    monkeypatch.setattr(torchaudio.functional, "resample", no_memory)
    path = write(tmp_path / "clip.wav", tone(1.0, 44100), 44100)
    with pytest.raises(AudioError, match=r"clip.wav: cannot resample 44100 Hz to 16000 Hz: .*can't allocate memory$"):
        load_raw_fbank(path)
