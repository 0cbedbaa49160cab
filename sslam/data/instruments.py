"""The instrument corpus: real sampled instruments, rendered from the General-MIDI soundfont that pretty_midi ships.

`synthetic.corpus: instruments` makes `sslam synth` write this corpus instead of the sine-and-noise tones of
`sslam.data.synthetic`, with the same four sets and the same data contract (manifest columns, splits, folds,
`polyphony` column, classes file): the demo's datasets, cache, evaluation jobs and tables do not know which
corpus they read.

Sound source. `TimGM6mb.sf2` (6 MB, inside the installed `pretty_midi` package: 128 General-MIDI programs and
8 drum kits of recorded instrument samples) is played by `midirenderer` (a Rust SoundFont synthesizer) from
MIDI files built in memory with `mido`. Reverb and chorus sends are set to 0 (CC 91/93), so every clip is dry.
The renderer writes 48 kHz stereo; clips are mixed there and then brought to `sample_rate` the way the front
end does it (channels averaged first, then torchaudio's resampler).

Classes: 14 of the 16 General-MIDI instrument families (the two sound-effect families are left out: they are
not instruments) and the drum kits, 15 in all. A clip of a class plays one program of the family (drawn from
its 8) or one of the 8 drum kits, so a class is a family of timbres, not one sample set.

A part (one instrument in a clip) is a phrase drawn from the clip's generator: tempo (shared by the clip's
parts), key and mode, note values and their variation (note density, rhythm), rests, chords, articulation
(staccato to legato), dynamics (a velocity level with jitter and an expression ramp), and its first onset in
the first quarter of the clip. Every melodic part draws its register from the SAME range (C3-C5 centre, notes
E2-C6), whatever the family: the natural ranges of the families would give the class away through pitch alone
(a bass never plays where a piccolo does), and a linear read-out of random features separates pitch
ranges as well as anything; with one shared range, the class has to be heard in the timbre.

Levels: each part is peak-normalised and placed at a peak level drawn from `event_level_dbfs`, over a white
noise floor at `background_dbfs` (as the tones corpus does), and the mix is scaled down only if its peak
exceeds 0.95.

Determinism: clip k of set s is a pure function of `numpy.random.default_rng([seed, s, k])` and of the
soundfont (its SHA-256 is written to `<out>/instruments.json` with the renderer's version): the same seed gives
the same bytes.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sslam.runtime.errors import ConfigError, SslamError

SOUNDFONT_NAME = "TimGM6mb.sf2"
RENDER_RATE = 48000                 # what midirenderer writes (stereo, 16-bit); checked on every render
DRUM_CHANNEL = 9                    # General MIDI channel 10
TICKS_PER_BEAT = 480
MIDI_TEMPO_US = 500_000             # the MIDI file's own tempo: 120 bpm, 960 ticks per second
TICKS_PER_SECOND = TICKS_PER_BEAT * 1_000_000 / MIDI_TEMPO_US
SILENT_PART_PEAK = 1e-4             # a rendered part below -80 dBFS has no sound (a key without a sample)
PART_ATTEMPTS = 5                   # redraws of a phrase that rendered silent, before giving up
WINDOW_GAP_SECONDS = 0.25           # between two parts rendered in one file (see window_ticks)
WINDOW_QUANTUM = 32                 # ticks
RENDER_BATCH = 64                   # parts per rendered file
CLIPS_PER_RENDER = 32               # clips drawn, rendered and mixed together (bounds the memory)

# Register shared by every melodic family (see the module docstring): the phrase centre and the note range.
CENTRE_RANGE = (48, 72)             # C3..C5
NOTE_RANGE = (40, 84)               # E2..C6
MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
NOTE_VALUES = (0.25, 0.5, 1.0, 2.0)         # a part's basic note value, in beats ...
NOTE_VALUE_WEIGHTS = (0.2, 0.35, 0.3, 0.15)  # ... drawn with these weights
DRUM_KITS = (0, 8, 16, 24, 25, 32, 40, 48)  # Standard, Room, Power, Electronic, TR 808, Jazz, Brush, Orchestra
# General-MIDI percussion keys, grouped by role: a drum part picks a kick, a backbeat voice, a time-keeper and
# 0-3 colours, each with its own hit probability per grid step.
DRUM_KICKS = (35, 36)
DRUM_BACKBEATS = (38, 40, 37, 39)           # snares, side stick, hand clap
DRUM_TIMEKEEPERS = (42, 44, 46, 51, 59, 54, 70)   # hi-hats, rides, tambourine, maracas
DRUM_COLOURS = (41, 43, 45, 47, 48, 50, 49, 57, 55, 52, 56, 60, 61, 62, 63, 64, 69, 75, 76, 77)


@dataclass(frozen=True)
class Family:
    label_id: str
    name: str
    programs: tuple[int, ...]               # General-MIDI programs (0-based); empty for the drum kits

    @property
    def drums(self) -> bool:
        return not self.programs


def _programs(first: int) -> tuple[int, ...]:
    return tuple(range(first, first + 8))


FAMILIES: tuple[Family, ...] = (
    Family("piano", "piano", _programs(0)),
    Family("chromatic_percussion", "chromatic percussion", _programs(8)),
    Family("organ", "organ", _programs(16)),
    Family("guitar", "guitar", _programs(24)),
    Family("bass", "bass", _programs(32)),
    Family("strings", "strings", _programs(40)),
    Family("ensemble", "ensemble", _programs(48)),
    Family("brass", "brass", _programs(56)),
    Family("reed", "reed", _programs(64)),
    Family("pipe", "pipe", _programs(72)),
    Family("synth_lead", "synth lead", _programs(80)),
    Family("synth_pad", "synth pad", _programs(88)),
    Family("ethnic", "ethnic", _programs(104)),
    Family("percussive", "percussive", _programs(112)),
    Family("drums", "drum kit", ()),
)
CLASS_IDS = tuple(family.label_id for family in FAMILIES)
CLASS_NAMES = tuple(family.name for family in FAMILIES)


# ---------------------------------------------------------------------------------------------
# The sound source

def soundfont_path() -> Path:
    """The soundfont inside the installed pretty_midi package (found without importing pretty_midi)."""
    spec = importlib.util.find_spec("pretty_midi")
    if spec is None or spec.origin is None:
        raise SslamError("synthetic.corpus: instruments renders the soundfont that the `pretty_midi` package ships; "
                         "install the project's dependencies (make env, or pip install -c constraints.txt -e .)")
    path = Path(spec.origin).parent / SOUNDFONT_NAME
    if not path.is_file():
        raise SslamError(f"synthetic.corpus: instruments: {path} not found (the installed pretty_midi ships no "
                         f"{SOUNDFONT_NAME})")
    return path


@functools.lru_cache(maxsize=1)
def soundfont_bytes() -> bytes:
    return soundfont_path().read_bytes()


def source_description() -> dict:
    """What the clips were rendered from: soundfont file and digest, renderer and MIDI library versions."""
    from importlib.metadata import version

    return {"soundfont": SOUNDFONT_NAME, "soundfont_sha256": hashlib.sha256(soundfont_bytes()).hexdigest(),
            "soundfont_bytes": len(soundfont_bytes()), "pretty_midi": version("pretty_midi"),
            "midirenderer": version("midirenderer"), "mido": version("mido"), "render_rate": RENDER_RATE,
            "classes": list(CLASS_IDS)}


# ---------------------------------------------------------------------------------------------
# Phrases: (onset s, offset s, key, velocity) notes of one part

def _melodic_notes(rng: np.random.Generator, seconds: float, beat: float) -> list[tuple[float, float, int, int]]:
    tonic = int(rng.integers(0, 12))
    scale = MAJOR if rng.random() < 0.5 else MINOR
    keys = [k for k in range(NOTE_RANGE[0], NOTE_RANGE[1] + 1) if (k - tonic) % 12 in scale]
    centre = int(rng.integers(CENTRE_RANGE[0], CENTRE_RANGE[1] + 1))
    degree = int(np.argmin([abs(k - centre) for k in keys]))
    value = float(rng.choice(NOTE_VALUES, p=NOTE_VALUE_WEIGHTS)) * beat
    rest_probability, chord_probability = rng.uniform(0.0, 0.3), rng.uniform(0.0, 0.4)
    articulation = rng.uniform(0.4, 1.0)                # sounding fraction of each note's slot
    dynamic = rng.uniform(40, 120)
    notes = []
    onset = rng.uniform(0.0, 0.25 * seconds)
    first = True
    while onset < seconds:
        slot = value * float(rng.choice((0.5, 1.0, 1.0, 2.0)))
        if first or rng.random() >= rest_probability:     # the first note always sounds
            velocity = int(np.clip(round(dynamic + rng.normal(0.0, 8.0)), 1, 127))
            chord = [0] + ([2, 4][:int(rng.integers(1, 3))] if rng.random() < chord_probability else [])
            offset = min(onset + max(slot * articulation, 0.03), seconds)
            for step in chord:
                notes.append((onset, offset, keys[min(degree + step, len(keys) - 1)], velocity))
        first = False
        degree = int(np.clip(degree + rng.choice((-2, -1, -1, 0, 1, 1, 2)), 0, len(keys) - 1))
        onset += slot
    return notes


def _drum_notes(rng: np.random.Generator, seconds: float, beat: float) -> list[tuple[float, float, int, int]]:
    per_beat = int(rng.choice((2, 3, 4)))               # eighths, triplets or sixteenths
    voices = [int(rng.choice(DRUM_KICKS)), int(rng.choice(DRUM_BACKBEATS)), int(rng.choice(DRUM_TIMEKEEPERS))]
    voices += [int(k) for k in rng.choice(DRUM_COLOURS, int(rng.integers(0, 4)), replace=False)]
    probability = {voice: rng.uniform(0.08, 0.7) for voice in voices}
    dynamic = rng.uniform(50, 120)
    step = beat / per_beat
    start = rng.uniform(0.0, 0.25 * seconds)
    notes = []
    for index in range(int((seconds - start) / step) + 1):
        onset = start + index * step
        if onset >= seconds:
            break
        for voice in voices:
            # the kick on every bar's first beat and the first hit of the part: the part is never empty
            forced = voice == voices[0] and (index == 0 or index % (4 * per_beat) == 0)
            if forced or rng.random() < probability[voice]:
                velocity = int(np.clip(round(dynamic + rng.normal(0.0, 12.0)), 1, 127))
                notes.append((onset, min(onset + 0.1, seconds), voice, velocity))
    return notes


def part_events(family: Family, rng: np.random.Generator, seconds: float, tempo_bpm: float) -> list[tuple]:
    """The MIDI events of one part of `family`, `seconds` long, as (tick from the part's start, order at that
    tick, mido message); draws everything from `rng`. The part starts by setting its channel up (no reverb,
    no chorus, no modulation, its program) and ends with all sound off and every controller reset, so that
    parts can follow each other in one file."""
    import mido

    beat = 60.0 / tempo_bpm
    channel = DRUM_CHANNEL if family.drums else 0
    program = int(rng.choice(DRUM_KITS if family.drums else family.programs))
    notes = _drum_notes(rng, seconds, beat) if family.drums else _melodic_notes(rng, seconds, beat)
    expression = np.linspace(rng.uniform(70, 127), rng.uniform(70, 127), 8)   # a slow crescendo or decrescendo
    events: list[tuple] = []
    for control, value in ((91, 0), (93, 0), (1, 0)):
        events.append((0, 0, mido.Message("control_change", channel=channel, control=control, value=value)))
    events.append((0, 0, mido.Message("program_change", channel=channel, program=program)))
    for index, level in enumerate(expression):
        tick = int(round(index * seconds / len(expression) * TICKS_PER_SECOND))
        events.append((tick, 0, mido.Message("control_change", channel=channel, control=11, value=int(level))))
    for onset, offset, key, velocity in notes:
        on, off = int(round(onset * TICKS_PER_SECOND)), int(round(offset * TICKS_PER_SECOND))
        events.append((on, 2, mido.Message("note_on", channel=channel, note=key, velocity=velocity)))
        events.append((max(off, on + 1), 1, mido.Message("note_off", channel=channel, note=key, velocity=0)))
    # At the clip's end: all sound off (120), reset all controllers (121). The renderer stops at a file's last
    # event, so these also make a lone part's file last exactly the clip.
    end = int(round(seconds * TICKS_PER_SECOND))
    events.append((end, 3, mido.Message("control_change", channel=channel, control=120, value=0)))
    events.append((end, 3, mido.Message("control_change", channel=channel, control=121, value=0)))
    return events


def window_ticks(seconds: float) -> int:
    """Ticks between the starts of two parts rendered in one file: the clip, a gap for the cut-off sound to
    die away, rounded up to WINDOW_QUANTUM ticks. The renderer processes events in blocks of 64 samples and
    a tick is 50 samples at 48 kHz, so on windows of 32 ticks (1600 samples) every part renders as it does
    alone, up to the rounding of the renderer's 16-bit output (its voices are summed in another order: at
    most a few steps of 2^-15; tested)."""
    ticks = (seconds + WINDOW_GAP_SECONDS) * TICKS_PER_SECOND
    return int(math.ceil(ticks / WINDOW_QUANTUM) * WINDOW_QUANTUM)


def midi_file(parts: list[list[tuple]], seconds: float) -> bytes:
    """One standard MIDI file (bytes) playing `parts` (from `part_events`) one after the other."""
    import mido

    window = window_ticks(seconds)
    events = [(tick + number * window, order, message)
              for number, part in enumerate(parts) for tick, order, message in part]
    # The file lasts whole windows (the renderer stops at the last event): the last part keeps its last sample.
    channel = parts[-1][0][2].channel if parts else 0
    events.append((len(parts) * window, 4, mido.Message("control_change", channel=channel, control=121, value=0)))
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=MIDI_TEMPO_US, time=0))
    now = 0
    for tick, _, message in sorted(events, key=lambda event: (event[0], event[1])):
        track.append(message.copy(time=tick - now))
        now = tick
    midi = mido.MidiFile(ticks_per_beat=TICKS_PER_BEAT)
    midi.tracks.append(track)
    buffer = io.BytesIO()
    midi.save(file=buffer)
    return buffer.getvalue()


def part_midi(family: Family, rng: np.random.Generator, seconds: float, tempo_bpm: float) -> bytes:
    """A standard MIDI file (bytes) of one part of `family` (see `part_events`)."""
    return midi_file([part_events(family, rng, seconds, tempo_bpm)], seconds)


def render_midi(midi: bytes) -> np.ndarray:
    """(frames, 2) float64 at RENDER_RATE: the whole file as midirenderer plays it."""
    import midirenderer
    import soundfile

    wave, rate = soundfile.read(io.BytesIO(midirenderer.render_wave_from(soundfont_bytes(), midi)),
                                dtype="float64", always_2d=True)
    if rate != RENDER_RATE:
        raise SslamError(f"midirenderer wrote {rate} Hz audio; the instrument corpus expects {RENDER_RATE} Hz "
                         f"(install the pinned midirenderer from constraints.txt)")
    return wave


def render_parts(parts: list[list[tuple]], seconds: float) -> list[np.ndarray]:
    """Each part (from `part_events`) as (frames, 2) float64 at RENDER_RATE, exactly `seconds` long, rendered
    RENDER_BATCH at a time in one file each (the renderer reads the 6 MB soundfont on every call)."""
    frames, window = int(round(seconds * RENDER_RATE)), window_ticks(seconds) * RENDER_RATE / TICKS_PER_SECOND
    waves = []
    for first in range(0, len(parts), RENDER_BATCH):
        batch = parts[first:first + RENDER_BATCH]
        wave = render_midi(midi_file(batch, seconds))
        for number in range(len(batch)):
            start = int(round(number * window))
            piece = wave[start:start + frames]
            waves.append(np.pad(piece, ((0, frames - piece.shape[0]), (0, 0))) if piece.shape[0] < frames else piece)
    return waves


def render_part(family: Family, rng: np.random.Generator, seconds: float, tempo_bpm: float) -> np.ndarray:
    """One part of `family` rendered alone, (frames, 2) at RENDER_RATE with peak 1, or an error when every one
    of PART_ATTEMPTS phrases drawn from `rng` renders silent."""
    for _ in range(PART_ATTEMPTS):
        wave = render_parts([part_events(family, rng, seconds, tempo_bpm)], seconds)[0]
        if np.abs(wave).max() > SILENT_PART_PEAK:
            return wave / np.abs(wave).max()
    raise SslamError(f"instrument corpus: {PART_ATTEMPTS} phrases of family {family.label_id!r} rendered silent "
                     f"from {soundfont_path()}")


@dataclass
class ClipDraw:
    """What a clip's generator decided before rendering: its parts' families, events and levels, the floor."""

    families: list[int]
    tempo: float
    parts: list[list[tuple]]
    levels_dbfs: list[float]
    noise: np.ndarray                       # (frames,) at RENDER_RATE


def draw_clip(class_indices, rng: np.random.Generator, config) -> ClipDraw:
    frames = int(round(config.clip_seconds * RENDER_RATE))
    tempo = rng.uniform(70.0, 160.0)                    # shared by the clip's parts
    noise = rng.standard_normal(frames) * 10 ** (config.background_dbfs / 20)
    families, parts, levels = [int(c) for c in class_indices], [], []
    for family in families:
        parts.append(part_events(FAMILIES[family], rng, config.clip_seconds, tempo))
        levels.append(float(rng.uniform(*config.event_level_dbfs)))
    return ClipDraw(families, tempo, parts, levels, noise)


def mix_clip(draw: ClipDraw, waves: list[np.ndarray], retry_seed: list[int], seconds: float) -> np.ndarray:
    """The clip's mix (frames, 2) at RENDER_RATE: each part peak-normalised and placed at its level, over the
    noise floor (the same on both channels), scaled down only if it would clip. A part that rendered silent
    (its notes fell where the program has no sample) is drawn again from its own generator, rendered alone."""
    mix = np.repeat(draw.noise[:, None], 2, axis=1)
    for number, (family, wave, level) in enumerate(zip(draw.families, waves, draw.levels_dbfs)):
        peak = np.abs(wave).max()
        if peak <= SILENT_PART_PEAK:
            wave = render_part(FAMILIES[family], np.random.default_rng([*retry_seed, number]), seconds, draw.tempo)
            peak = 1.0
        mix += wave / peak * 10 ** (level / 20)
    peak = np.abs(mix).max()
    return mix * (0.95 / peak) if peak > 0.95 else mix    # keep 16-bit wav unclipped


def resample(wave: np.ndarray, rate: int, mono: bool) -> np.ndarray:
    """(frames, 2) at RENDER_RATE -> float32 at `rate`: (frames,) averaged first when `mono` (the front end's
    order), else (frames, 2) with each channel resampled."""
    import torch
    import torchaudio

    channels = wave.mean(axis=1, keepdims=True) if mono else wave
    tensor = torch.from_numpy(np.ascontiguousarray(channels.T, dtype=np.float32))
    if rate != RENDER_RATE:
        tensor = torchaudio.functional.resample(tensor, RENDER_RATE, rate)
    out = tensor.numpy().T
    return out[:, 0] if mono else out


# ---------------------------------------------------------------------------------------------
# Sets: the same rows as the tones corpus (sslam.data.synthetic._set_plan), with the families of a clip drawn
# without replacement (a mixture's label count is its number of parts).

def check_config(config) -> None:
    """Limits the instrument corpus adds to SyntheticConfig's own checks."""
    for name in ("pretrain_events", "poly_events"):
        if getattr(config, name)[1] > len(FAMILIES):
            raise ConfigError(f"synthetic.{name}: at most {len(FAMILIES)} parts per clip with corpus instruments "
                              f"(one per family), got {list(getattr(config, name))}")


def set_plan(name: str, config, rng: np.random.Generator) -> list[tuple[str, int, list[int], dict]]:
    """Per clip of set `name`: (split, fold, family indices of its parts, extra columns)."""
    count = len(FAMILIES)

    def families(k: int) -> list[int]:
        return [int(i) for i in rng.choice(count, int(k), replace=False)]

    if name == "pretrain":
        low, high = config.pretrain_events
        return [("unlabeled", -1, families(k), {}) for k in rng.integers(low, high + 1, config.pretrain_clips)]
    if name == "mono":
        return [("train", (i // count) % config.mono_folds + 1, [i % count], {})
                for i in range(config.mono_clips_per_class * count)]
    if name == "poly":
        low, high = config.poly_events
        splits = ["train"] * config.poly_train_clips + ["test"] * config.poly_test_clips
        if config.poly_test_by_polyphony:
            splits = ["train"] * config.poly_train_clips
        plan = [(split, -1, families(k), {}) for split, k in zip(splits, rng.integers(low, high + 1, len(splits)))]
        if not config.poly_test_by_polyphony:
            return plan
        bins = np.arange(config.poly_test_clips) % config.polyphony_max_events + 1
        plan += [("test", -1, families(k), {}) for k in bins]
        return [(split, fold, classes, {"polyphony": len(classes)}) for split, fold, classes, _ in plan]
    if name == "polyphony":
        bins = np.arange(config.polyphony_clips) % config.polyphony_max_events + 1
        return [("test", -1, families(k), {"polyphony": int(k)}) for k in bins]
    raise ConfigError(f"unknown synthetic set {name!r}")


def set_audio(plan, config, set_index: int, file_format: Callable[[int], tuple[int, int]]):
    """Yield (samples, sample rate) of every clip of `plan` in order, rendering CLIPS_PER_RENDER clips' parts at a
    time. Clip k draws from `default_rng([seed, set_index, k])` exactly as the tones corpus does, so a clip does
    not depend on the others. `file_format(k)` is the tones corpus's (rate, channels) rule; an odd rate means
    the renderer's own 48 kHz stereo."""
    for first in range(0, len(plan), CLIPS_PER_RENDER):
        indices = range(first, min(first + CLIPS_PER_RENDER, len(plan)))
        draws = [draw_clip(plan[k][2], np.random.default_rng([config.seed, set_index, k]), config) for k in indices]
        waves = iter(render_parts([part for draw in draws for part in draw.parts], config.clip_seconds))
        for k, draw in zip(indices, draws):
            mix = mix_clip(draw, [next(waves) for _ in draw.parts], [config.seed, set_index, k, PART_ATTEMPTS],
                           config.clip_seconds)
            rate, channels = file_format(k)
            if rate != config.sample_rate:
                yield mix.astype(np.float32), RENDER_RATE
            else:
                yield resample(mix, rate, mono=channels == 1), rate


def write_source_description(out_dir: str | Path) -> Path:
    path = Path(out_dir) / "instruments.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(source_description(), indent=2) + "\n")
    return path
