"""Partial mixing against spec algorithm.md §7 and paper Table 10."""
import math

import pytest
import torch

from sslam.audio.front_end import normalise, waveform_to_fbank
from sslam.runtime.errors import ConfigError
from sslam.objective.mixing import (
    MixRegions,
    all_regions_mixed,
    combine_spectrograms,
    draw_partial_regions,
    draw_regions,
    mix_batch,
)

OFFICIAL_FRACTION = 240 / 1024


def test_official_regions_cover_480_frames_in_patch_aligned_ranges():
    generator = torch.Generator().manual_seed(0)
    firsts, seconds = set(), set()
    for _ in range(3000):
        regions = draw_partial_regions(1024, 16, OFFICIAL_FRACTION, generator)
        (start1, end1), (start2, end2) = regions.unmixed_frames
        assert end1 - start1 == 240 and end2 - start2 == 240
        assert start1 % 16 == 0 and start2 % 16 == 0
        assert start2 >= end1  # the middle mixed region may be empty, never negative
        assert int(regions.unmixed_frame_mask().sum()) == 480  # 46.9 % unmixed, 53.1 % mixed
        assert int(regions.unmixed_patch_rows().sum()) == 30
        firsts.add(start1)
        seconds.add(start2)
    # idx1 ∈ {0, 16, …, 496}, idx2 up to 768 (the last mixed region is at least one patch row).
    assert firsts == set(range(0, 497, 16))
    assert min(seconds) == 240 and max(seconds) == 768


def test_regions_scale_with_the_clip_length():
    regions = draw_partial_regions(128, 8, OFFICIAL_FRACTION, torch.Generator().manual_seed(0))
    # round(0.234·128/8) = 4 rows of 8 frames per region.
    assert [end - start for start, end in regions.unmixed_rows] == [4, 4]
    assert regions.unmixed_rows[1][1] <= regions.time_patches - 1


def test_impossible_region_fraction_is_a_config_error():
    with pytest.raises(ConfigError):
        draw_partial_regions(64, 16, 0.45, torch.Generator())


def test_mixed_batch_is_the_base_clip_in_unmixed_regions_and_max_with_the_previous_clip_elsewhere():
    generator = torch.Generator().manual_seed(1)
    batch = torch.randn(3, 128, 8, generator=generator)
    regions = MixRegions(128, 8, ((2, 6), (9, 13)))
    mixed = mix_batch(batch, regions, "logmel_max")
    unmixed = regions.unmixed_frame_mask()
    for i in range(3):
        previous = batch[(i - 1) % 3]  # roll by +1: clip 0 is mixed with the last clip
        assert torch.equal(mixed[i, unmixed], batch[i, unmixed])
        assert torch.equal(mixed[i, ~unmixed], torch.maximum(batch[i, ~unmixed], previous[~unmixed]))


def test_logmel_mean_and_full_mixing():
    batch = torch.randn(2, 64, 4, generator=torch.Generator().manual_seed(2))
    full = all_regions_mixed(64, 8)
    mixed = mix_batch(batch, full, "logmel_mean")
    assert torch.allclose(mixed, (batch + batch.roll(1, dims=0)) / 2)
    assert not full.unmixed_patch_rows().any()


def test_no_mixing_is_the_identity():
    batch = torch.randn(2, 64, 4)
    regions = draw_regions("none", 64, 8, OFFICIAL_FRACTION)
    assert regions.is_identity and torch.equal(mix_batch(batch, regions, "logmel_max"), batch)


def test_waveform_mean_matches_the_log_mel_of_an_averaged_waveform():
    """The cached-log-mel approximation of Table 10's waveform average against the real thing."""
    generator = torch.Generator().manual_seed(0)
    white = torch.randn(1, 16000, generator=generator) * 0.1
    brown = torch.cumsum(torch.randn(1, 16000, generator=generator), dim=1) * 0.01
    brown = brown - brown.mean()
    mean, std = -4.268, 4.569
    fbank_a, fbank_b, fbank_avg = (waveform_to_fbank(w) for w in (white, brown, (white + brown) / 2))
    predicted = combine_spectrograms(normalise(fbank_a, mean, std), normalise(fbank_b, mean, std),
                                     "waveform_mean", (mean, std))
    error = fbank_avg - (predicted * 2 * std + mean)
    # Unbiased up to the random cross-spectrum term; log((e^a + e^b)/2) would be off by log 2.
    assert abs(float(error.mean())) < 0.15
    assert abs(float(error.median())) < 0.05
    assert float(error.abs().mean()) < 0.4 < math.log(2)


def test_waveform_mean_needs_the_normalisation():
    with pytest.raises(ConfigError):
        combine_spectrograms(torch.zeros(1, 8, 4), torch.zeros(1, 8, 4), "waveform_mean", None)


def test_regions_come_from_the_generator():
    first = draw_partial_regions(1024, 16, OFFICIAL_FRACTION, torch.Generator().manual_seed(5))
    again = draw_partial_regions(1024, 16, OFFICIAL_FRACTION, torch.Generator().manual_seed(5))
    assert first == again


def test_mix_probability_is_drawn_with_the_regions():
    generator = torch.Generator().manual_seed(0)
    drawn = [draw_regions("partial", 128, 8, OFFICIAL_FRACTION, generator, mix_probability=0.75)
             for _ in range(2000)]
    share = sum(not regions.is_identity for regions in drawn) / len(drawn)
    assert abs(share - 0.75) < 0.03
    assert draw_regions("partial", 128, 8, OFFICIAL_FRACTION, generator, mix_probability=0.0).is_identity
    # p = 1 draws no coin: the official regions consume exactly the region draw's numbers.
    assert (draw_regions("partial", 1024, 16, OFFICIAL_FRACTION, torch.Generator().manual_seed(5), 1.0)
            == draw_partial_regions(1024, 16, OFFICIAL_FRACTION, torch.Generator().manual_seed(5)))
    with pytest.raises(ConfigError, match="mix_probability"):
        draw_regions("partial", 128, 8, OFFICIAL_FRACTION, generator, mix_probability=1.5)
