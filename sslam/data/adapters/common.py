"""Small helpers that several dataset adapters share: folder checks, audio probing, label joins."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import soundfile

from sslam.data.manifest import LABEL_SEPARATOR, Manifest
from sslam.runtime.errors import ManifestError
from sslam.runtime.io import read_text

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def require_dir(path: Path, what: str) -> Path:
    """Return `path` resolved, or raise a ManifestError that says which part of the layout is missing."""
    if not path.is_dir():
        raise ManifestError(f"{what}: folder not found: {path}")
    return path.resolve()


def require_file(path: Path, what: str) -> Path:
    if path.is_dir():
        raise ManifestError(f"{what}: {path} is a folder, not a file")
    if not path.is_file():
        raise ManifestError(f"{what}: file not found: {path}")
    return path.resolve()


def read_lines(path: Path, what: str) -> list[str]:
    """The lines of a text file of a dataset's layout; a folder, a missing or a binary file is one ManifestError."""
    return read_text(path, what, ManifestError).splitlines()


def join_labels(labels: Iterable[str]) -> str:
    return LABEL_SEPARATOR.join(labels)


def probe_audio(paths: Iterable[Path]) -> tuple[list[int], list[float]]:
    """Native sample rate and duration of each file, read from the header only (no decoding).

    A file that cannot be read is a broken dataset copy, not something to skip silently.
    """
    rates, durations = [], []
    for path in paths:
        try:
            info = soundfile.info(str(path))
        except Exception as error:  # soundfile raises LibsndfileError / RuntimeError depending on version
            raise ManifestError(f"cannot read audio header of {path}: {error}") from error
        rates.append(int(info.samplerate))
        durations.append(float(info.frames) / info.samplerate if info.samplerate else 0.0)
    return rates, durations


def add_audio_info(table: pd.DataFrame, probe: bool) -> pd.DataFrame:
    """Fill `sample_rate`/`duration` from the files when `probe`, else leave them as 'unknown' (0)."""
    if probe and len(table):
        table["sample_rate"], table["duration"] = probe_audio(Path(p) for p in table["path"])
    else:
        table["sample_rate"], table["duration"] = 0, 0.0
    return table


def distinct_label_count(labels_text: str) -> int:
    return len({label for label in labels_text.split(LABEL_SEPARATOR) if label})


def finish(table: pd.DataFrame, classes: list[str], class_names: list[str] | None = None) -> Manifest:
    """Build and validate the manifest: every adapter ends here, so every adapter output is checked."""
    manifest = Manifest(table, list(classes), list(class_names or classes))
    manifest.validate()
    return manifest
