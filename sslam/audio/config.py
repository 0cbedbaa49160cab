"""The audio front end's settings (spec §1), torch-free so that a study config validates without torch.

`sslam.audio.front_end` implements the front end with these settings; the HDF5 cache records them in every shard.
"""
from __future__ import annotations

from dataclasses import dataclass

from sslam.runtime.configuration import check_ranges
from sslam.runtime.errors import ConfigError
from sslam.runtime.limits import MAX_MEL_BINS


AUDIOSET_MEAN = -4.268
AUDIOSET_STD = 4.569
KALDI_WINDOWS = ("hamming", "hanning", "povey", "rectangular", "blackman")


@dataclass(frozen=True)
class FrontEndConfig:
    """Kaldi fbank parameters; everything not listed keeps torchaudio's Kaldi defaults
    (25 ms window, preemphasis 0.97, 512-point FFT, 20 Hz low cut, snip_edges, log power mel)."""

    sample_rate: int = 16000
    num_mel_bins: int = 128
    frame_shift_ms: float = 10.0
    window_type: str = "hanning"
    htk_compat: bool = True
    use_energy: bool = False
    dither: float = 0.0
    # A clip whose peak (after DC removal) is below this level is digital silence: its log-mel is
    # the floor everywhere and it would only teach the model the padding value.
    silence_dbfs: float = -90.0

    def __post_init__(self) -> None:
        # num_mel_bins within the limit every shard reader checks (sslam.runtime.limits), so that no study can
        # build shards its own jobs would refuse.
        check_ranges(self, sample_rate=">= 1", num_mel_bins=f"[1, {MAX_MEL_BINS}]", frame_shift_ms="> 0",
                     dither=">= 0", silence_dbfs="<= 0")
        if self.window_type not in KALDI_WINDOWS:
            raise ConfigError(f"window_type must be one of {list(KALDI_WINDOWS)}, got {self.window_type!r}")

    def min_samples(self) -> int:
        """One 25 ms analysis window: anything shorter yields no fbank frame at all."""
        return int(round(0.025 * self.sample_rate))

    def frame_shift_samples(self) -> int:
        """Samples between frame starts (Kaldi rounds the shift down to whole samples)."""
        return int(self.sample_rate * self.frame_shift_ms * 0.001)  # the same float expression as torchaudio's


DEFAULT_FRONT_END = FrontEndConfig()
