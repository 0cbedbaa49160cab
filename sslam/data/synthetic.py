"""The embedded corpus: real audio files and canonical manifests, generated in seconds.

It stands in for AudioSet / ESC-50 / SPASS in the laptop demo so that the whole study (pretraining,
evaluation, tables) runs end to end without any download. `corpus` picks what the clips hold:

* `tones` (this module; the tests' fast fixture): every clip is a soundscape of a few sound events
  from 14 classes placed at random onsets and levels over a quiet noise floor. Every event draws its
  own parameters (f0, partials, sweep range, bandwidth, rate, duration, envelope), so a class is a
  family of sounds, not one template.
* `instruments` (`sslam.data.instruments`; the demo's corpus): sampled General-MIDI instruments
  rendered from a soundfont, 15 classes (14 instrument families and the drum kits); a clip mixes
  one phrase per class present.

Both write the same sets with the same contract; `num_classes(config)` is the configured corpus's
class count.

Sets (their names are part of the data contract):

| set         | split(s)          | events per clip          | labels                              |
|-------------|-------------------|--------------------------|-------------------------------------|
| `pretrain`  | unlabeled         | `pretrain_events` range  | none                                |
| `mono`      | train, folds 1..5 | exactly one              | single label, balanced over classes |
| `poly`      | train / test      | `poly_events` range      | the distinct classes present        |
|             |                   | (test: 1..`polyphony_max_events` if `poly_test_by_polyphony`) | + `polyphony` column |
| `polyphony` | test              | 1..`polyphony_max_events`| distinct classes; `polyphony` column|

Files are 16-bit wav at `sample_rate`, except that every `odd_format_every`-th clip of each set
is written at `odd_sample_rate` and another one in each such group as stereo (the two channels
are the same signal with different gains). Those clips make the front end's downmix and
resampling path run on the demo data too.

Everything is a pure function of `seed`: clip k of set s uses the generator
`numpy.random.default_rng([seed, s, k])`, so a clip does not change when another set is resized.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import pandas as pd
import soundfile

from sslam.data import instruments
from sslam.data.manifest import LABEL_SEPARATOR, Manifest, write_manifest
from sslam.runtime.configuration import check_ranges, from_dict, load_yaml, section
from sslam.runtime.errors import ConfigError

SET_NAMES = ("pretrain", "mono", "poly", "polyphony")


@dataclass
class SyntheticConfig:
    """Sizes and levels of the synthetic corpus; defaults fit a whole-study demo in minutes on 2 cores."""

    # tones: the sine-and-noise events below (the fast fixture of the tests); instruments: sampled General-MIDI
    # instruments rendered from a soundfont (sslam.data.instruments; the demo's corpus). Same sets and contract.
    corpus: Literal["tones", "instruments"] = "tones"
    seed: int = 0
    clip_seconds: float = 2.0
    sample_rate: int = 16000
    pretrain_clips: int = 256
    pretrain_events: tuple[int, int] = (1, 3)          # inclusive range of events per clip
    mono_clips_per_class: int = 10
    mono_folds: int = 5
    poly_train_clips: int = 120
    poly_test_clips: int = 40
    poly_events: tuple[int, int] = (2, 6)
    # The test split spread evenly over 1..polyphony_max_events distinct classes, with a `polyphony` column
    # on every row: the benchmark then gives Table 3's per-bin scores itself, so a study needs no separate
    # polyphony benchmark trained again on the same training set (the demo does this).
    poly_test_by_polyphony: bool = False
    polyphony_clips: int = 64                           # spread evenly over the bins 1..max
    polyphony_max_events: int = 8
    event_level_dbfs: tuple[float, float] = (-28.0, -10.0)   # peak level range of one event (instrument part)
    background_dbfs: float = -55.0                      # RMS of the white-noise floor
    odd_format_every: int = 8                           # 0 = every file mono at sample_rate
    odd_sample_rate: int = 22050                        # tones; instruments write the renderer's 48 kHz stereo

    def __post_init__(self) -> None:
        check_ranges(self, seed=">= 0", sample_rate=">= 1", background_dbfs="< 0", odd_sample_rate=">= 1",
                     pretrain_clips=">= 0", mono_clips_per_class=">= 0", poly_train_clips=">= 0",
                     poly_test_clips=">= 0", polyphony_clips=">= 0", mono_folds=">= 1")
        if self.clip_seconds <= 0.1:
            raise ConfigError(f"synthetic.clip_seconds must be > 0.1 s, got {self.clip_seconds}")
        for name in ("pretrain_events", "poly_events"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ConfigError(f"synthetic.{name} must be a range [low, high] with 1 <= low <= high")
        classes = len(corpus_classes(self)[0])
        if not 1 <= self.polyphony_max_events <= classes:
            raise ConfigError(f"synthetic.polyphony_max_events must be in 1..{classes} (distinct classes of corpus "
                              f"{self.corpus})")
        if self.corpus == "instruments":
            instruments.check_config(self)
        if self.mono_folds < 1:
            raise ConfigError("synthetic.mono_folds must be >= 1")
        if self.odd_format_every == 1 or self.odd_format_every < 0:
            raise ConfigError("synthetic.odd_format_every must be 0 (off) or >= 2")
        low, high = self.event_level_dbfs
        if not low <= high < 0:
            raise ConfigError("synthetic.event_level_dbfs must be a range of negative dBFS values")
        sizes = ("pretrain_clips", "mono_clips_per_class", "poly_train_clips", "poly_test_clips", "polyphony_clips")
        for name in sizes:
            if getattr(self, name) < 0:
                raise ConfigError(f"synthetic.{name} must be >= 0")


# ---------------------------------------------------------------------------------------------
# Event synthesis: each function draws its own parameters and returns a float array of peak 1.

def _seconds(rng: np.random.Generator, low: float, high: float, sample_rate: int) -> int:
    return max(int(rng.uniform(low, high) * sample_rate), 1)


def _envelope(num_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Random linear attack (5-60 ms) and release (20 % - 60 % of the event)."""
    attack = min(int(rng.uniform(0.005, 0.06) * sample_rate), num_samples // 2) + 1
    release = max(int(rng.uniform(0.2, 0.6) * num_samples), 1)
    envelope = np.ones(num_samples)
    envelope[:attack] = np.linspace(0.0, 1.0, attack)
    envelope[-release:] *= np.linspace(1.0, 0.0, release) ** rng.uniform(1.0, 3.0)
    return envelope


def _band_noise(num_samples: int, sample_rate: int, rng: np.random.Generator, low_hz: float, high_hz: float) -> np.ndarray:
    """White noise with every FFT bin outside [low_hz, high_hz] removed."""
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    frequencies = np.fft.rfftfreq(num_samples, 1.0 / sample_rate)
    spectrum[(frequencies < low_hz) | (frequencies > high_hz)] = 0.0
    return np.fft.irfft(spectrum, num_samples)


def _partials(time_axis: np.ndarray, f0: float, ratios: np.ndarray, amplitudes: np.ndarray, nyquist: float) -> np.ndarray:
    audible = f0 * ratios < 0.95 * nyquist       # partials above Nyquist would alias
    phases = 2 * np.pi * np.outer(f0 * ratios[audible], time_axis)
    return (amplitudes[audible, None] * np.sin(phases)).sum(axis=0)


def _harmonic(rng, sr):
    n = _seconds(rng, 0.3, 1.0, sr)
    count = rng.integers(3, 9)
    ratios = np.arange(1, count + 1, dtype=float)
    tone = _partials(np.arange(n) / sr, rng.uniform(150, 500), ratios, ratios ** -rng.uniform(0.5, 2.0), sr / 2)
    return tone * _envelope(n, sr, rng)


def _buzz(rng, sr):
    n = _seconds(rng, 0.3, 0.9, sr)
    # A sawtooth (every harmonic, amplitude 1/k) low-passed at 4 kHz; its aliases above that are cut too.
    sawtooth = 2 * ((rng.uniform(60, 140) * np.arange(n) / sr) % 1.0) - 1
    spectrum = np.fft.rfft(sawtooth)
    spectrum[np.fft.rfftfreq(n, 1 / sr) > 4000] = 0.0
    return np.fft.irfft(spectrum, n) * _envelope(n, sr, rng)


def _sweep(rng, sr, upward: bool):
    n = _seconds(rng, 0.2, 0.8, sr)
    start, ratio = rng.uniform(200, 700), rng.uniform(2.5, 6.0)
    frequency = start * ratio ** np.linspace(0.0, 1.0, n)          # exponential sweep
    if not upward:
        frequency = frequency[::-1]
    return np.sin(2 * np.pi * np.cumsum(frequency) / sr) * _envelope(n, sr, rng)


def _noise_band(rng, sr, centre_range, width_range, duration_range):
    n = _seconds(rng, *duration_range, sr)
    centre = min(rng.uniform(*centre_range), 0.8 * sr / 2)
    half_width = centre * rng.uniform(*width_range) / 2
    return _band_noise(n, sr, rng, centre - half_width, centre + half_width) * _envelope(n, sr, rng)


def _clicks(rng, sr):
    n = _seconds(rng, 0.3, 1.0, sr)
    period = int(sr / rng.uniform(8, 30))
    click_length = int(0.002 * sr) + 1
    click = _band_noise(click_length * 4, sr, rng, 1500, 0.9 * sr / 2)[:click_length]
    signal = np.zeros(n)
    for onset in range(int(rng.integers(0, period)), n - click_length, period):
        signal[onset:onset + click_length] += click * rng.uniform(0.6, 1.0)
    return signal


def _knock(rng, sr):
    decay = rng.uniform(0.015, 0.06)
    n = max(int(6 * decay * sr), 2)
    time_axis = np.arange(n) / sr
    burst = _band_noise(n, sr, rng, 100, 2000) * rng.uniform(0.5, 1.5)
    thud = np.sin(2 * np.pi * rng.uniform(60, 150) * time_axis) * np.abs(burst).max()
    return (burst + thud) * np.exp(-time_axis / decay)


def _am_tone(rng, sr):
    n = _seconds(rng, 0.4, 1.0, sr)
    time_axis = np.arange(n) / sr
    modulator = 1 - rng.uniform(0.6, 1.0) * (0.5 + 0.5 * np.cos(2 * np.pi * rng.uniform(4, 16) * time_axis))
    return np.sin(2 * np.pi * rng.uniform(500, 1500) * time_axis) * modulator * _envelope(n, sr, rng)


def _fm_tone(rng, sr):
    n = _seconds(rng, 0.4, 1.0, sr)
    time_axis = np.arange(n) / sr
    frequency = rng.uniform(800, 2500) + rng.uniform(50, 300) * np.sin(2 * np.pi * rng.uniform(4, 10) * time_axis)
    return np.sin(2 * np.pi * np.cumsum(frequency) / sr) * _envelope(n, sr, rng)


def _whistle(rng, sr):
    n = _seconds(rng, 0.2, 0.8, sr)
    start = min(rng.uniform(2500, 5000), 0.8 * sr / 2)
    frequency = start * (1 + rng.uniform(-0.03, 0.03) * np.linspace(0, 1, n))    # slight drift
    return np.sin(2 * np.pi * np.cumsum(frequency) / sr) * _envelope(n, sr, rng)


def _bell(rng, sr):
    decay = rng.uniform(0.15, 0.5)
    n = min(int(4 * decay * sr), int(1.5 * sr))
    time_axis = np.arange(n) / sr
    ratios = np.array([1.0, 2.76, 5.40, 8.93]) * rng.uniform(0.97, 1.03, 4)      # inharmonic partials
    tone = _partials(time_axis, rng.uniform(300, 900), ratios, rng.uniform(0.3, 1.0, 4), sr / 2)
    return tone * np.exp(-time_axis / decay)


def _beeps(rng, sr):
    n = _seconds(rng, 0.4, 1.0, sr)
    time_axis = np.arange(n) / sr
    rate, burst = rng.uniform(3, 8), rng.uniform(0.04, 0.08)
    gate = (time_axis * rate) % 1.0 < burst * rate
    return np.sin(2 * np.pi * rng.uniform(800, 2000) * time_axis) * gate


def _crackle(rng, sr):
    n = _seconds(rng, 0.4, 1.2, sr)
    impulses = np.zeros(n)
    count = int(rng.uniform(50, 200) * n / sr)
    impulses[rng.integers(0, n, count)] = rng.uniform(-1, 1, count)
    spectrum = np.fft.rfft(impulses)
    spectrum[np.fft.rfftfreq(n, 1 / sr) < 1000] = 0.0
    return np.fft.irfft(spectrum, n) + 1e-6 * rng.standard_normal(n)


@dataclass(frozen=True)
class EventClass:
    label_id: str
    name: str
    synthesize: Callable[[np.random.Generator, int], np.ndarray]


EVENT_CLASSES: tuple[EventClass, ...] = (
    EventClass("harmonic", "harmonic tone", _harmonic),
    EventClass("buzz", "low buzz", _buzz),
    EventClass("chirp_up", "upward chirp", lambda rng, sr: _sweep(rng, sr, upward=True)),
    EventClass("chirp_down", "downward chirp", lambda rng, sr: _sweep(rng, sr, upward=False)),
    EventClass("noise_low", "low band noise", lambda rng, sr: _noise_band(rng, sr, (150, 500), (0.3, 1.0), (0.3, 1.2))),
    EventClass("noise_high", "high band noise", lambda rng, sr: _noise_band(rng, sr, (3000, 6000), (0.2, 0.6), (0.3, 1.2))),
    EventClass("clicks", "click train", _clicks),
    EventClass("knock", "percussive knock", _knock),
    EventClass("am_tone", "amplitude-modulated tone", _am_tone),
    EventClass("fm_tone", "frequency-modulated tone", _fm_tone),
    EventClass("whistle", "high whistle", _whistle),
    EventClass("bell", "inharmonic bell", _bell),
    EventClass("beeps", "beep train", _beeps),
    EventClass("crackle", "crackle", _crackle),
)
CLASS_IDS = tuple(event.label_id for event in EVENT_CLASSES)


def corpus_classes(config: SyntheticConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(class ids, class names) of the configured corpus, in the order of its classes file."""
    if config.corpus == "instruments":
        return instruments.CLASS_IDS, instruments.CLASS_NAMES
    return CLASS_IDS, tuple(event.name for event in EVENT_CLASSES)


def num_classes(config: SyntheticConfig) -> int:
    """How many classes the configured corpus has (the mono set holds mono_clips_per_class of each)."""
    return len(corpus_classes(config)[0])


def set_sizes(name: str, config: SyntheticConfig) -> dict[str, int]:
    """{split: clips} that set `name` of the configured corpus will hold, without drawing or rendering it: what
    `sslam plan` reads before the corpus exists (the tests hold it equal to the generated manifests). Splits
    without clips are left out, as a manifest's split counts leave them out."""
    sizes = {"pretrain": {"unlabeled": config.pretrain_clips},
             "mono": {"train": config.mono_clips_per_class * num_classes(config)},
             "poly": {"train": config.poly_train_clips, "test": config.poly_test_clips},
             "polyphony": {"test": config.polyphony_clips}}
    if name not in sizes:
        raise ConfigError(f"unknown synthetic set {name!r}; known: {', '.join(SET_NAMES)}")
    return {split: count for split, count in sizes[name].items() if count > 0}


def make_event(label: str | int, rng: np.random.Generator, sample_rate: int = 16000) -> np.ndarray:
    """One random instance of a class (label id or index), float32 with peak amplitude 1."""
    event = EVENT_CLASSES[label] if isinstance(label, (int, np.integer)) else EVENT_CLASSES[CLASS_IDS.index(label)]
    signal = np.asarray(event.synthesize(rng, sample_rate), dtype=np.float64)
    return (signal / max(np.abs(signal).max(), 1e-12)).astype(np.float32)


def make_soundscape(class_indices, rng: np.random.Generator, config: SyntheticConfig, sample_rate: int) -> np.ndarray:
    """Place one event per entry of `class_indices` at a random onset and level over a noise floor."""
    num_samples = int(round(config.clip_seconds * sample_rate))
    mix = rng.standard_normal(num_samples) * 10 ** (config.background_dbfs / 20)
    for class_index in class_indices:
        event = make_event(int(class_index), rng, sample_rate)[:num_samples]
        onset = int(rng.integers(0, num_samples - len(event) + 1))
        mix[onset:onset + len(event)] += event * 10 ** (rng.uniform(*config.event_level_dbfs) / 20)
    peak = np.abs(mix).max()
    return (mix * (0.95 / peak) if peak > 0.95 else mix).astype(np.float32)   # keep 16-bit wav unclipped


# ---------------------------------------------------------------------------------------------
# Sets: each returns, per clip, (split, fold, class indices of its events, extra columns).

def _set_plan(name: str, config: SyntheticConfig, rng: np.random.Generator) -> list[tuple[str, int, list[int], dict]]:
    num_classes = len(EVENT_CLASSES)
    if name == "pretrain":
        counts = rng.integers(config.pretrain_events[0], config.pretrain_events[1] + 1, config.pretrain_clips)
        return [("unlabeled", -1, list(rng.integers(0, num_classes, k)), {}) for k in counts]
    if name == "mono":
        # Classes interleaved and folds assigned round-robin inside each class: balanced folds.
        return [("train", (i // num_classes) % config.mono_folds + 1, [i % num_classes], {})
                for i in range(config.mono_clips_per_class * num_classes)]
    if name == "poly":
        splits = ["train"] * config.poly_train_clips + ["test"] * config.poly_test_clips
        counts = rng.integers(config.poly_events[0], config.poly_events[1] + 1, len(splits))
        plan = [(split, -1, list(rng.integers(0, num_classes, k)), {}) for split, k in zip(splits, counts)]
        if not config.poly_test_by_polyphony:
            return plan
        # Drawn after the default plan, so the training rows are the same clips either way.
        bins = np.arange(config.poly_test_clips) % config.polyphony_max_events + 1
        test = [("test", -1, list(rng.choice(num_classes, k, replace=False)), {}) for k in bins]
        return [(split, fold, classes, {"polyphony": len(set(int(c) for c in classes))})
                for split, fold, classes, _ in [row for row in plan if row[0] == "train"] + test]
    if name == "polyphony":
        bins = np.arange(config.polyphony_clips) % config.polyphony_max_events + 1
        return [("test", -1, list(rng.choice(num_classes, k, replace=False)), {"polyphony": int(k)}) for k in bins]
    raise ConfigError(f"unknown synthetic set {name!r}; known: {', '.join(SET_NAMES)}")


def _file_format(index: int, config: SyntheticConfig) -> tuple[int, int]:
    """(sample rate, channels) of clip `index`: mostly mono at sample_rate, a few odd ones."""
    every = config.odd_format_every
    if every and index % every == every - 1:
        return config.odd_sample_rate, 1
    if every and index % every == every // 2 - 1:
        return config.sample_rate, 2
    return config.sample_rate, 1


def _tones_clip(index: int, class_indices, config: SyntheticConfig, set_index: int) -> tuple[np.ndarray, int]:
    """(samples, sample rate) of clip `index` of the tones corpus, in its file format."""
    rng = np.random.default_rng([config.seed, set_index, index])
    sample_rate, channels = _file_format(index, config)
    audio = make_soundscape(class_indices, rng, config, sample_rate)
    if channels == 2:
        audio = np.stack([audio * rng.uniform(0.6, 1.0), audio * rng.uniform(0.6, 1.0)], axis=1)
    return audio, sample_rate


def generate_set(name: str, config: SyntheticConfig, out_dir: str | Path) -> Path:
    """Write `out_dir/<name>/audio/*.wav` and `out_dir/<name>/manifest.tsv` (+ classes); return the manifest path."""
    set_dir = Path(out_dir) / name
    (set_dir / "audio").mkdir(parents=True, exist_ok=True)
    set_index = SET_NAMES.index(name)
    if config.corpus == "instruments":
        plan = instruments.set_plan(name, config, np.random.default_rng([config.seed, set_index]))
        clips = instruments.set_audio(plan, config, set_index, lambda index: _file_format(index, config))
    else:
        plan = _set_plan(name, config, np.random.default_rng([config.seed, set_index]))
        clips = (_tones_clip(index, class_indices, config, set_index) for index, (_, _, class_indices, _) in
                 enumerate(plan))
    class_ids, class_names = corpus_classes(config)
    rows = []
    for index, ((split, fold, class_indices, extra), (audio, sample_rate)) in enumerate(zip(plan, clips)):
        clip_id = f"{name}-{index:05d}"
        relative = Path("audio") / f"{clip_id}.wav"
        soundfile.write(set_dir / relative, audio, sample_rate, subtype="PCM_16")
        present = sorted(set(int(c) for c in class_indices))
        rows.append({"clip_id": clip_id, "path": str(relative), "split": split, "fold": fold,
                     "labels": "" if split == "unlabeled" else LABEL_SEPARATOR.join(class_ids[c] for c in present),
                     "sample_rate": sample_rate, "duration": config.clip_seconds, **extra})
    table = pd.DataFrame(rows, columns=None if rows else ["clip_id", "path"])
    manifest = Manifest(table, list(class_ids), list(class_names), root=set_dir)
    return write_manifest(manifest, set_dir / "manifest.tsv")


def write_unlabeled_clips(out_dir: str | Path, num_clips: int, clip_seconds: float = 10.0, sample_rate: int = 32000,
                          audio_format: str = "wav", seed: int = 0) -> Path:
    """`num_clips` pretrain-like soundscapes in one format (e.g. AudioSet-like 10-s 32 kHz flac), for benchmarks."""
    config = SyntheticConfig(seed=seed, clip_seconds=clip_seconds, sample_rate=sample_rate, odd_format_every=0)
    out_dir = Path(out_dir)
    (out_dir / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(num_clips):
        rng = np.random.default_rng([seed, len(SET_NAMES), index])
        events = rng.integers(0, len(EVENT_CLASSES), int(rng.integers(3, 9)))
        relative = Path("audio") / f"clip-{index:05d}.{audio_format}"
        soundfile.write(out_dir / relative, make_soundscape(events, rng, config, sample_rate), sample_rate, subtype="PCM_16")
        rows.append({"clip_id": f"clip-{index:05d}", "path": str(relative), "split": "unlabeled",
                     "sample_rate": sample_rate, "duration": clip_seconds})
    return write_manifest(Manifest(pd.DataFrame(rows), root=out_dir), out_dir / "manifest.tsv")


def generate_corpus(config: SyntheticConfig, out_dir: str | Path, sets=SET_NAMES) -> dict[str, Path]:
    """Write every requested set; returns {set name: manifest path}. The instrument corpus also records what
    it was rendered from (soundfont digest, renderer version) in `out_dir/instruments.json`."""
    if config.corpus == "instruments":
        instruments.write_source_description(out_dir)
    return {name: generate_set(name, config, out_dir) for name in sets}


# ---------------------------------------------------------------------------------------------
# `sslam synth`

def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--config", help="study YAML; its `synthetic` section (defaults if omitted)")
    parser.add_argument("--out", required=True, help="output folder; one sub-folder per set")
    parser.add_argument("--sets", nargs="+", choices=SET_NAMES, default=list(SET_NAMES), help="sets to write (default: all)")


def run(args: argparse.Namespace) -> int:
    data = section(load_yaml(args.config), "synthetic") if args.config else {}
    config = from_dict(SyntheticConfig, data, where="synthetic")
    started = time.perf_counter()
    for name, path in generate_corpus(config, args.out, args.sets).items():
        print(f"{name}: {path}")
    print(f"synthetic corpus written to {args.out} in {time.perf_counter() - started:.1f} s")
    return 0
