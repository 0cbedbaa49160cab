"""Speech Commands v1 (`ks1`, 12 classes) and v2 (`ks2`, 35 words).

Layout (as extracted from the official archives): `<root>/<word>/<speaker>_nohash_<n>.wav`,
`<root>/_background_noise_/*.wav`, `<root>/validation_list.txt`, `<root>/testing_list.txt`
(paths relative to root). Listed files go to `valid` / `test`; every other word file is `train`.

KS1 follows the usual 12-class recipe (TensorFlow `input_data.py`, SUPERB): the ten keywords,
`_unknown_` for every other word (all of them kept; no subsampling), and `_silence_` cut from
`_background_noise_`: each noise file is cut into consecutive non-overlapping windows of
`silence_seconds` (1 s, the clip length), and the windows of each file are split IN TIME ORDER
80/10/10 into train/valid/test, so no stretch of noise appears in two splits (the six v0.01
noise files, about 400 s in all, give about 400 windows). The windows are written once as wav
files to `silence_dir` (default `<root>/_silence_windows_`), because every later stage reads
whole files; `noise_file`/`noise_offset_seconds` record where each window came from. With
`test_set` (the separately released speech_commands_test_set_v0.01 folder,
`<word or _silence_ or _unknown_>/*.wav`), the test split is that set instead, as SUPERB does.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import soundfile

from sslam.data.adapters.common import add_audio_info, finish, read_lines, require_dir
from sslam.data.manifest import Manifest
from sslam.runtime.errors import ManifestError

KS1_KEYWORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
SILENCE = "_silence_"
UNKNOWN = "_unknown_"
BACKGROUND = "_background_noise_"
SILENCE_FOLDER = "_silence_windows_"
KS2_NUM_WORDS = 35
SILENCE_SPLIT_FRACTIONS = (("train", 0.8), ("valid", 0.1), ("test", 0.1))


def _read_list(path: Path) -> set[str]:
    return {line.strip() for line in read_lines(path, "Speech Commands split list") if line.strip()}


def _word_files(root: Path) -> pd.DataFrame:
    """Every `<word>/*.wav`, with the split from the official lists. Folders starting with `_`
    (background noise, our silence windows) are not words."""
    validation, testing = _read_list(root / "validation_list.txt"), _read_list(root / "testing_list.txt")
    relative = sorted(
        path.relative_to(root).as_posix() for path in root.glob("*/*.wav") if not path.parent.name.startswith("_")
    )
    if not relative:
        raise ManifestError(f"{root}: no `<word>/*.wav` files found")
    missing = (validation | testing) - set(relative)
    if missing:
        raise ManifestError(f"{root}: {len(missing)} file(s) named in the split lists are missing, e.g. {sorted(missing)[0]}")
    split = ["valid" if name in validation else "test" if name in testing else "train" for name in relative]
    return pd.DataFrame({
        "clip_id": [name.rsplit(".", 1)[0] for name in relative],
        "path": [str(root / name) for name in relative],
        "split": split,
        "word": [name.split("/", 1)[0] for name in relative],
    })


def _split_of_window(window: int, count: int) -> str:
    """First split whose cumulative share of the file's `count` windows lies past `window`."""
    cumulative = 0.0
    for name, fraction in SILENCE_SPLIT_FRACTIONS:
        cumulative += fraction
        if window < cumulative * count:
            return name
    return SILENCE_SPLIT_FRACTIONS[-1][0]


def silence_windows(noise_dir: Path, out_dir: Path, window_seconds: float = 1.0) -> pd.DataFrame:
    """Cut every noise file into non-overlapping windows written to `out_dir` (kept when already
    there with the right length); each file's windows are split 80/10/10 in time order."""
    files = sorted(noise_dir.glob("*.wav"))
    if not files:
        raise ManifestError(f"{noise_dir}: no background noise wav files to cut silence clips from")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in files:
        try:
            samples, rate = soundfile.read(str(path), dtype="float32")
        except Exception as error:  # LibsndfileError / RuntimeError depending on the soundfile version
            raise ManifestError(f"cannot read background noise file {path}: {error}") from error
        window_samples = int(round(window_seconds * rate))
        count = len(samples) // window_samples
        for window in range(count):
            target = out_dir / f"{path.stem}_{window:04d}.wav"
            if not target.is_file() or soundfile.info(str(target)).frames != window_samples:
                piece = samples[window * window_samples:(window + 1) * window_samples]
                soundfile.write(str(target), piece, rate, subtype="PCM_16")
            rows.append({
                "clip_id": f"{SILENCE}/{target.stem}",
                "path": str(target.resolve()),
                "split": _split_of_window(window, count),
                "labels": SILENCE,
                "sample_rate": rate,
                "duration": window_samples / rate,
                "noise_file": path.name,
                "noise_offset_seconds": window * window_samples / rate,
            })
    return pd.DataFrame(rows)


def _released_test_set(test_set: Path) -> pd.DataFrame:
    test_set = require_dir(test_set, "Speech Commands v0.01 test set")
    files = sorted(test_set.glob("*/*.wav"))
    if not files:
        raise ManifestError(f"{test_set}: no `<label>/*.wav` files found")
    return pd.DataFrame({
        "clip_id": ["testset/" + path.relative_to(test_set).as_posix().rsplit(".", 1)[0] for path in files],
        "path": [str(path.resolve()) for path in files],
        "split": "test",
        "labels": [path.parent.name for path in files],
    })


def build_ks1(
    root: Path, probe: bool = True, silence_seconds: float = 1.0, silence_dir: str | None = None,
    test_set: str | None = None,
) -> Manifest:
    root = require_dir(Path(root), "Speech Commands v1 root")
    words = _word_files(root)
    absent = [word for word in KS1_KEYWORDS if word not in set(words["word"])]
    if absent:
        raise ManifestError(f"{root}: keyword folder(s) {absent} missing; is this Speech Commands?")
    words["labels"] = words["word"].where(words["word"].isin(KS1_KEYWORDS), UNKNOWN)
    noise = require_dir(root / BACKGROUND, "Speech Commands background noise")
    silence = silence_windows(noise, Path(silence_dir) if silence_dir else root / SILENCE_FOLDER, silence_seconds)
    if test_set is not None:
        words, silence = words[words["split"] != "test"], silence[silence["split"] != "test"]
    parts = [add_audio_info(words.drop(columns="word"), probe), silence]
    if test_set is not None:
        released = _released_test_set(Path(test_set))
        unexpected = set(released["labels"]) - set(KS1_KEYWORDS + [SILENCE, UNKNOWN])
        if unexpected:
            raise ManifestError(f"{test_set}: unexpected label folder(s) {sorted(unexpected)}")
        parts.append(add_audio_info(released, probe))
    return finish(pd.concat(parts, ignore_index=True), KS1_KEYWORDS + [SILENCE, UNKNOWN])


def build_ks2(root: Path, probe: bool = True, expected_words: int = KS2_NUM_WORDS) -> Manifest:
    """All word folders are classes (35 in v0.02), sorted by name; no silence/unknown classes."""
    root = require_dir(Path(root), "Speech Commands v2 root")
    words = _word_files(root)
    classes = sorted(set(words["word"]))
    if len(classes) != expected_words:
        raise ManifestError(f"{root}: found {len(classes)} word folders, expected {expected_words} (set expected_words)")
    table = words.rename(columns={"word": "labels"})
    return finish(add_audio_info(table, probe), classes)
