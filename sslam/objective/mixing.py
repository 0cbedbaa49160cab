"""Partial mixing of log-mel spectrograms (spec algorithm.md §7; paper §3.2.1, Tables 4 and 10).

Each clip is mixed with the previous clip of the batch (roll by +1, wrap-around) everywhere except in
two "unmixed" regions where the clip is kept as it is. The regions are patch-aligned and drawn once
per batch, so every clip of the batch shares them (as the official code does per GPU).

The batch arrives normalised, x = (raw − mean)/(2·std). Max and mean commute with that positive affine
map, so `logmel_max` and `logmel_mean` work on x directly; `waveform_mean` has to undo it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sslam.runtime.errors import ConfigError
from sslam.objective.config import MixMode, MixOp
from sslam.objective.masking import clone_rows
from sslam.objective.targets import TeacherTargets


@dataclass(frozen=True)
class MixRegions:
    """Where a mixed batch equals its base clip.

    `unmixed_rows` are [start, end) ranges of time-patch rows; frames map to rows by patch_size.
    Frames past the last whole patch (never seen by the encoder) count as mixed.
    """

    num_frames: int
    patch_size: int
    unmixed_rows: tuple[tuple[int, int], ...]

    @property
    def time_patches(self) -> int:
        return self.num_frames // self.patch_size

    @property
    def unmixed_frames(self) -> tuple[tuple[int, int], ...]:
        return tuple((start * self.patch_size, end * self.patch_size) for start, end in self.unmixed_rows)

    def unmixed_patch_rows(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(time_patches,) bool: True where the row is the base clip alone."""
        rows = torch.zeros(self.time_patches, dtype=torch.bool, device=device)
        for start, end in self.unmixed_rows:
            rows[start:end] = True
        return rows

    def mixed_token_mask(self, freq_patches: int, device: torch.device | str | None = None) -> torch.Tensor:
        """(time_patches·freq_patches,) bool over the time-major token grid: True in mixed rows."""
        return (~self.unmixed_patch_rows(device)).repeat_interleave(freq_patches)

    @property
    def mixed_rows(self) -> tuple[tuple[int, int], ...]:
        """[start, end) ranges of the mixed time-patch rows (the complement of `unmixed_rows`), ascending."""
        unmixed = [False] * self.time_patches
        for start, end in self.unmixed_rows:
            unmixed[start:end] = [True] * len(unmixed[start:end])
        ranges: list[tuple[int, int]] = []
        for row, kept in enumerate(unmixed):
            if kept:
                continue
            if ranges and ranges[-1][1] == row:
                ranges[-1] = (ranges[-1][0], row + 1)
            else:
                ranges.append((row, row + 1))
        return tuple(ranges)

    def mixed_token_index(self, freq_patches: int, device: torch.device | str | None = None) -> torch.Tensor:
        """(L_mixed,) positions of the mixed rows' tokens on the time-major grid, ascending: the True
        entries of `mixed_token_mask`, built from the rows this object holds (nothing is read back)."""
        pieces = [torch.arange(start * freq_patches, end * freq_patches, device=device)
                  for start, end in self.mixed_rows]
        if not pieces:
            return torch.zeros(0, dtype=torch.long, device=device)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def unmixed_frame_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(num_frames,) bool: True where the frame is the base clip alone."""
        frames = torch.zeros(self.num_frames, dtype=torch.bool, device=device)
        for start, end in self.unmixed_frames:
            frames[start:end] = True
        return frames

    @property
    def is_identity(self) -> bool:
        return self.unmixed_rows == ((0, self.time_patches),) and self.num_frames == self.time_patches * self.patch_size


def draw_partial_regions(num_frames: int, patch_size: int, region_fraction: float,
                         generator: torch.Generator | None = None) -> MixRegions:
    """Two unmixed regions of round(region_fraction·T) frames, rounded to whole patch rows.

    Official ranges at T = 1024, p = 16 (15-row regions on a 64-row grid): start1 ∈ {0, …, 31} rows
    (frames 0…496, i.e. before T/2), start2 ∈ {start1 + 15, …, 48} rows, so the last mixed region is
    at least one row; the first and middle mixed regions may be empty. In rows, for any T:
    start1 < min(⌈Tp/2⌉, Tp − 2R) and start1 + R ≤ start2 ≤ Tp − R − 1.
    """
    time_patches = num_frames // patch_size
    region_rows = round(region_fraction * num_frames / patch_size)
    first_start_limit = min(math.ceil(time_patches / 2), time_patches - 2 * region_rows)
    if region_rows < 1 or first_start_limit < 1:
        raise ConfigError(
            f"region_fraction {region_fraction} gives {region_rows}-row unmixed regions on a "
            f"{time_patches}-row grid; need two regions of >= 1 row plus >= 1 mixed row")
    start1 = int(torch.randint(0, first_start_limit, (1,), generator=generator))
    start2 = int(torch.randint(start1 + region_rows, time_patches - region_rows, (1,), generator=generator))
    return MixRegions(num_frames, patch_size, ((start1, start1 + region_rows), (start2, start2 + region_rows)))


def no_regions_mixed(num_frames: int, patch_size: int) -> MixRegions:
    """The whole clip unmixed: mixing is the identity (mix_mode none, or an update that skips mixing)."""
    return MixRegions(num_frames, patch_size, ((0, num_frames // patch_size),))


def all_regions_mixed(num_frames: int, patch_size: int) -> MixRegions:
    """Full mixing (Table 4's "mixed audio"): nothing kept unmixed."""
    return MixRegions(num_frames, patch_size, ())


def draw_regions(mode: MixMode, num_frames: int, patch_size: int, region_fraction: float,
                 generator: torch.Generator | None = None, mix_probability: float = 1.0) -> MixRegions:
    """This update's regions. With probability 1 − mix_probability the update is not mixed at all
    (Table 4's "mixed audio in 75 % of updates"); the coin is drawn only when mix_probability < 1, so
    the official p = 1 consumes exactly the numbers of the region draw."""
    if not 0.0 <= mix_probability <= 1.0:
        raise ConfigError(f"mix_probability must be in [0, 1], got {mix_probability}")
    if mix_probability < 1.0 and float(torch.rand(1, generator=generator)) >= mix_probability:
        return no_regions_mixed(num_frames, patch_size)
    if mode == "partial":
        return draw_partial_regions(num_frames, patch_size, region_fraction, generator)
    if mode == "full":
        return all_regions_mixed(num_frames, patch_size)
    if mode == "none":
        return no_regions_mixed(num_frames, patch_size)
    raise ConfigError(f"unknown mix_mode {mode!r}; known: partial, full, none")


def combine_spectrograms(base: torch.Tensor, foreign: torch.Tensor, op: MixOp,
                         norm_stats: tuple[float, float] | None = None) -> torch.Tensor:
    """Mix two normalised log-mel batches everywhere with `op` (Table 10's three strategies)."""
    if op == "logmel_max":
        return torch.maximum(base, foreign)
    if op == "logmel_mean":
        return (base + foreign) / 2
    if op == "waveform_mean":
        if norm_stats is None:
            raise ConfigError("mix_op waveform_mean needs the fbank normalisation (norm_mean, norm_std)")
        mean, std = norm_stats
        # We mix cached log-mels, not waveforms. Kaldi fbank is log(mel power), and the mel power of
        # w = (a + b)/2 is (P_a + P_b + 2·Re(A·B*))/4; for independent clips the cross term averages out,
        # so its log-mel is log(e^a + e^b) − log 4. Exact only in expectation over the phases.
        raw_base, raw_foreign = base * (2 * std) + mean, foreign * (2 * std) + mean
        raw_mixed = torch.logaddexp(raw_base.float(), raw_foreign.float()) - math.log(4.0)
        return ((raw_mixed - mean) / (2 * std)).to(base.dtype)
    raise ConfigError(f"unknown mix_op {op!r}; known: logmel_max, logmel_mean, waveform_mean")


def foreign_clips(batch: torch.Tensor) -> torch.Tensor:
    """Clip i's mixing partner is clip i − 1 (wrap-around), the official roll by +1."""
    return torch.roll(batch, shifts=1, dims=0)


def mix_batch(fbank: torch.Tensor, regions: MixRegions, op: MixOp,
              norm_stats: tuple[float, float] | None = None) -> torch.Tensor:
    """(B, T, F) normalised batch -> the mixed batch: the base clip inside the unmixed regions,
    op(base, foreign) elsewhere.

    For logmel_max this equals the official "foreign := −inf in the regions, then max with the
    base"; a `where` states the same thing for every op.
    """
    if fbank.dim() != 3 or fbank.shape[1] != regions.num_frames:
        raise ValueError(f"expected (B, {regions.num_frames}, F) fbank, got {tuple(fbank.shape)}")
    if regions.is_identity:
        return fbank
    return mix_frames(fbank, regions.unmixed_frame_mask(fbank.device), op, norm_stats)


def mix_frames(fbank: torch.Tensor, unmixed_frames: torch.Tensor, op: MixOp,
               norm_stats: tuple[float, float] | None = None) -> torch.Tensor:
    """`mix_batch` with the regions given as their (T,) frame mask (True = the base clip alone)."""
    mixed_everywhere = combine_spectrograms(fbank, foreign_clips(fbank), op, norm_stats)
    return torch.where(unmixed_frames[None, :, None], fbank, mixed_everywhere)


@dataclass
class MixedHalf:
    """What the mixed-half losses (source_retention.py, mixit.py) see of one Stage-2 forward.

    Student rows are sample-major (clone j of clip i is row i·C + j); teacher rows are one per clip.
    """

    predictions: torch.Tensor  # (B·C, L, D) decoder outputs of the mixed half
    cls: torch.Tensor          # (B·C, D) student CLS outputs of the mixed half
    mask: torch.Tensor         # (B·C, L) True = masked
    fbank: torch.Tensor        # (B, T, F) the UN-mixed, un-rolled batch (the base clips)
    base: TeacherTargets       # the teacher's targets of `fbank`: local (B, L, D), pooled (B, D)
    regions: MixRegions | None  # this batch's mixing regions (None: `mixed_tokens` says where they are)
    clones: int                # C
    # (B·C, M) each row's masked positions, ascending, when every row masks M tokens (the drawn masks do):
    # the losses then gather them by index instead of reading the mask's count back from the device.
    masked_index: torch.Tensor | None = None
    # (L_mixed,) positions of the tokens of mixed rows, ascending; None: derived from `regions`.
    mixed_tokens: torch.Tensor | None = None
    # How many masked tokens lie in mixed rows (MixIT's patch-level selection), counted on the host's masks.
    mixit_tokens: int | None = None

    @property
    def freq_patches(self) -> int:
        return self.base.local.shape[1] // self.regions.time_patches

    def mixed_token_index(self) -> torch.Tensor:
        """(L_mixed,) positions of the tokens of mixed rows (where the foreign clip is audible), ascending."""
        if self.mixed_tokens is not None:
            return self.mixed_tokens
        return self.regions.mixed_token_index(self.freq_patches, self.base.local.device)

    @property
    def has_mixed_tokens(self) -> bool:
        """Whether any token is mixed (known from shapes: nothing is read back)."""
        return self.mixed_token_index().numel() > 0

    def token_is_mixed(self) -> torch.Tensor:
        """(L,) True for the tokens of mixed rows (where the foreign clip is audible)."""
        if self.mixed_tokens is None:
            return self.regions.mixed_token_mask(self.freq_patches, self.base.local.device)
        length = self.base.local.shape[1]
        return torch.zeros(length, dtype=torch.bool, device=self.mixed_tokens.device).index_fill_(
            0, self.mixed_tokens, True)

    def per_sequence(self, per_clip: torch.Tensor) -> torch.Tensor:
        """(B, ...) one row per clip -> (B·C, ...) one row per student sequence."""
        return clone_rows(per_clip, self.clones)
