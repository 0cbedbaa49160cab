"""IDMT-DESED-FL: Scaper soundscapes made from DESED material, with DESED-style strong labels.

ASSUMED layout (the dataset's own documentation was not available to us; see docs/manifest.md):

    <root>/audio/<split>/**/*.wav                      split in `splits` (default train, test)
    <root>/metadata/<split>.tsv   or   <root>/metadata/<split>/**/*.tsv

Each tsv has the DESED header `filename<TAB>onset<TAB>offset<TAB>event_label`, one row per event;
`filename` is matched to the audio by base name. Clip labels are the distinct event labels
(multi-label, like the paper's mAP evaluation); a clip without event rows gets no labels.
The class list is DESED's ten domestic classes unless `classes` names others.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from sslam.data.adapters.common import add_audio_info, finish, join_labels, require_dir
from sslam.data.manifest import Manifest
from sslam.runtime.errors import ManifestError

DESED_CLASSES = [
    "Alarm_bell_ringing", "Blender", "Cat", "Dishes", "Dog",
    "Electric_shaver_toothbrush", "Frying", "Running_water", "Speech", "Vacuum_cleaner",
]
STRONG_COLUMNS = ["filename", "onset", "offset", "event_label"]


def _annotation_files(root: Path, split: str) -> list[Path]:
    single, folder = root / "metadata" / f"{split}.tsv", root / "metadata" / split
    files = ([single] if single.is_file() else []) + (sorted(folder.rglob("*.tsv")) if folder.is_dir() else [])
    if not files:
        raise ManifestError(f"no annotations for split {split!r}: expected {single} or {folder}/*.tsv")
    return files


def read_strong_labels(path: Path, classes: list[str]) -> pd.DataFrame:
    """Rows (filename, event_label) of one DESED-style tsv; rows without an event label are kept
    as clips without events."""
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    missing = [c for c in STRONG_COLUMNS if c not in frame.columns]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {missing}; expected header {STRONG_COLUMNS}")
    unknown = frame[(frame["event_label"] != "") & ~frame["event_label"].isin(classes)]
    if len(unknown):
        raise ManifestError(
            f"{path}:{unknown.index[0] + 2}: unknown event label {unknown['event_label'].iloc[0]!r} (set the `classes` option)"
        )
    return frame.assign(filename=frame["filename"].map(lambda name: Path(name).name))[["filename", "event_label"]]


def build_desed_fl(
    root: Path, splits: list[str] | None = None, classes: list[str] | None = None, probe: bool = True
) -> Manifest:
    root = require_dir(Path(root), "IDMT-DESED-FL root")
    classes = list(classes or DESED_CLASSES)
    rows = []
    for split in splits or ["train", "test"]:
        audio = {path.name: path for path in sorted(require_dir(root / "audio" / split, f"{split} audio").rglob("*.wav"))}
        events = pd.concat([read_strong_labels(path, classes) for path in _annotation_files(root, split)], ignore_index=True)
        orphans = sorted(set(events["filename"]) - set(audio))
        if orphans:
            raise ManifestError(f"{split}: {len(orphans)} annotated file(s) without audio, e.g. {orphans[0]}")
        labelled = events[events["event_label"] != ""].groupby("filename")["event_label"].agg(set)
        for name, path in audio.items():
            distinct = sorted(labelled.get(name, set()), key=classes.index)
            rows.append({"clip_id": f"{split}/{path.stem}", "path": str(path), "split": split,
                         "labels": join_labels(distinct), "polyphony": len(distinct)})
    if not rows:
        raise ManifestError(f"{root}: no audio files found")
    return finish(add_audio_info(pd.DataFrame(rows), probe), classes)
