"""ESC-50: `meta/esc50.csv` + `audio/*.wav`, 2000 five-second clips, 50 classes, folds 1-5.

Every clip is in split `train` with its official fold; the evaluation protocol holds one fold out
(5-fold cross-validation, paper Appendix B.0.1). Labels are the category names; the class order
is the official `target` index, so target vectors match the usual ESC-50 class numbering.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from sslam.data.adapters.common import add_audio_info, finish, require_dir, require_file
from sslam.data.manifest import Manifest
from sslam.runtime.errors import ManifestError

META_COLUMNS = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
NUM_FOLDS = 5


def build_esc50(root: Path, probe: bool = True, esc10_only: bool = False) -> Manifest:
    """`esc10_only` keeps the ESC-10 subset (the `esc10` column), with its own 10-class list."""
    root = require_dir(Path(root), "ESC-50 root")
    meta_path = require_file(root / "meta" / "esc50.csv", "ESC-50 metadata")
    audio = require_dir(root / "audio", "ESC-50 audio folder")
    meta = pd.read_csv(meta_path, dtype={"filename": str, "category": str})
    missing = [c for c in META_COLUMNS if c not in meta.columns]
    if missing:
        raise ManifestError(f"{meta_path}: missing column(s) {missing}; expected {META_COLUMNS}")
    folds = pd.to_numeric(meta["fold"], errors="coerce")  # a non-number becomes NaN, caught below
    bad_folds = meta[~folds.between(1, NUM_FOLDS)]
    if len(bad_folds):
        # +2: one header line, and line numbers count from 1
        raise ManifestError(f"{meta_path}:{bad_folds.index[0] + 2}: fold {bad_folds['fold'].iloc[0]} is not in 1..{NUM_FOLDS}")
    if esc10_only:
        meta = meta[meta["esc10"].astype(str).str.lower() == "true"].reset_index(drop=True)
    names_by_target = meta.drop_duplicates("target").set_index("target")["category"]
    conflicting = meta.groupby("target")["category"].nunique()
    if (conflicting > 1).any():
        raise ManifestError(f"{meta_path}: target {conflicting.idxmax()} maps to several categories")
    classes = [names_by_target[target] for target in sorted(names_by_target.index)]
    paths = [audio / name for name in meta["filename"]]
    absent = [path for path in paths if not path.is_file()]
    if absent:
        raise ManifestError(f"{meta_path} lists {len(absent)} file(s) missing from {audio}, e.g. {absent[0].name}")
    table = pd.DataFrame({
        "clip_id": meta["filename"].str.rsplit(".", n=1).str[0],
        "path": [str(path) for path in paths],
        "split": "train",
        "fold": meta["fold"].astype(int),
        "labels": meta["category"],
        "target": meta["target"].astype(int),
        "src_file": meta["src_file"].astype(str),
    })
    return finish(add_audio_info(table, probe), classes)
