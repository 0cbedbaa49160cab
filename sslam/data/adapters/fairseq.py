"""fairseq manifests (the format of the official SSLAM/EAT code) <-> the canonical manifest.

On-disk layout of one fairseq data folder:

    <dir>/{split}.tsv             line 1: audio root folder; then `relative/path.wav<TAB>num_samples`
    <dir>/{split}.lbl             optional; one `name<TAB>id1,id2,...` line per tsv row, same order
    <dir>/label_descriptors.csv   optional; `index,label_id,name` rows without a header

Rows whose `num_samples` is below 10000 are dropped, exactly as the official loader does
(min_sample_size, spec §1); the label file is aligned by line number, so the same rows are
dropped from it. The `name` column of the lbl file becomes the clip id (AudioSet: `Y<YTID>`,
SPASS: `Market_audio_files/market00001`); without a lbl file the clip id is the relative path
without its extension.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pandas as pd
import soundfile

from sslam.data.adapters.common import finish, join_labels, read_lines, require_dir, require_file
from sslam.data.config import OFFICIAL_MIN_SAMPLES
from sslam.data.manifest import LABEL_SEPARATOR, Manifest
from sslam.runtime.errors import ManifestError

MIN_SAMPLE_SIZE = OFFICIAL_MIN_SAMPLES  # official `min_sample_size`: shorter rows are dropped at load time
FAIRSEQ_LABEL_SEPARATOR = ","
LABEL_DESCRIPTORS = "label_descriptors.csv"


def read_label_descriptors(path: Path) -> tuple[list[str], list[str]]:
    """`index,label_id,name` rows (no header) -> (label ids, names) in index order."""
    path = require_file(path, "class list")
    try:
        frame = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise ManifestError(f"{path}: malformed label descriptors: {error}") from error
    if frame.shape[1] < 2:
        raise ManifestError(f"{path}: expected rows `index,label_id,name`, got {frame.shape[1]} column(s)")
    try:
        indices = frame[0].astype(int).tolist()
    except ValueError as error:
        raise ManifestError(f"{path}: the first column must be the class index ({error})") from error
    if sorted(indices) != list(range(len(indices))):
        raise ManifestError(f"{path}: class indices must be 0..{len(indices) - 1}, each once")
    frame = frame.assign(order=indices).sort_values("order")
    ids = frame[1].tolist()
    names = frame[2].tolist() if frame.shape[1] > 2 else list(ids)
    return ids, names


def _read_tsv(path: Path) -> tuple[Path, list[tuple[str, int]]]:
    lines = read_lines(path, "fairseq manifest")
    if not lines:
        raise ManifestError(f"{path}: empty file (line 1 must be the audio root folder)")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not fields[1].strip().lstrip("-").isdigit():
            raise ManifestError(f"{path}:{number}: expected `relative_path<TAB>num_samples`, got {line!r}")
        rows.append((fields[0], int(fields[1])))
    return Path(lines[0].strip()), rows


def _read_lbl(path: Path) -> list[tuple[str, list[str]]]:
    rows = []
    for number, line in enumerate(read_lines(path, "fairseq label file"), start=1):
        if not line.strip():
            continue
        # The official files use a tab; the loader itself splits on any whitespace.
        fields = line.split("\t") if "\t" in line else line.split(None, 1)
        if len(fields) != 2:
            raise ManifestError(f"{path}:{number}: expected `name<TAB>id1,id2,...`, got {line!r}")
        rows.append((fields[0], [label for label in fields[1].strip().split(FAIRSEQ_LABEL_SEPARATOR) if label]))
    return rows


def read_fairseq_split(directory: Path, split: str, audio_root: Path | None = None) -> pd.DataFrame:
    """One `{split}.tsv` (+ `{split}.lbl`) as canonical rows with absolute paths."""
    tsv = require_file(directory / f"{split}.tsv", f"fairseq split {split!r}")
    tsv_root, entries = _read_tsv(tsv)
    root = audio_root if audio_root is not None else tsv_root
    if not root.is_absolute():
        root = (directory / root).resolve()  # fairseq would use the working directory; the tsv's folder is stabler
    lbl = directory / f"{split}.lbl"
    labelled = lbl.is_file()
    if labelled:
        label_rows = _read_lbl(lbl)
        if len(label_rows) != len(entries):
            raise ManifestError(f"{lbl}: {len(label_rows)} label rows but {tsv} lists {len(entries)} clips")
    records = []
    for index, (relative, num_samples) in enumerate(entries):
        if num_samples < MIN_SAMPLE_SIZE:
            continue  # dropped together with its label row, keeping the rest aligned
        name, labels = label_rows[index] if labelled else (os.path.splitext(relative)[0], [])
        records.append({
            "clip_id": name,
            "path": str(root / relative),
            "split": split,
            "labels": join_labels(labels),
            "num_samples": num_samples,
        })
    columns = ["clip_id", "path", "split", "labels", "num_samples"]
    return pd.DataFrame.from_records(records, columns=columns)


def build_fairseq(root: Path, splits: list[str] | None = None, audio_root: str | None = None) -> Manifest:
    """Import every `{split}.tsv` in `root` (or the listed splits) into one canonical manifest.

    `audio_root` replaces the tsv's first line (the official files carry the authors' own paths).
    """
    root = require_dir(Path(root), "fairseq manifest folder")
    if splits is None:
        splits = sorted(path.stem for path in root.glob("*.tsv"))
        if not splits:
            raise ManifestError(f"{root}: no {{split}}.tsv file found")
    override = Path(audio_root) if audio_root is not None else None
    table = pd.concat([read_fairseq_split(root, split, override) for split in splits], ignore_index=True)
    descriptors = root / LABEL_DESCRIPTORS
    if descriptors.is_file():
        classes, names = read_label_descriptors(descriptors)
    elif table["labels"].str.len().sum() > 0:
        raise ManifestError(f"{root}: .lbl files found but no {LABEL_DESCRIPTORS} giving the class order")
    else:
        classes, names = [], []
    return finish(table, classes, names)


def _num_samples(row: dict, path: Path) -> int:
    """The tsv size column: the recorded count, else duration x rate, else the file header."""
    if int(row.get("num_samples") or 0) > 0:
        return int(row["num_samples"])
    if row["duration"] > 0 and row["sample_rate"] > 0:
        return int(round(row["duration"] * row["sample_rate"]))
    try:
        return int(soundfile.info(str(path)).frames)
    except Exception as error:
        raise ManifestError(f"cannot tell the sample count of {path} for the fairseq tsv: {error}") from error


def export_fairseq(manifest: Manifest, out_dir: str | Path, split: str, root: str | Path | None = None) -> dict[str, Path]:
    """Write `{split}.tsv`, `{split}.lbl` and `label_descriptors.csv` for the rows of `split`.

    `root` becomes the tsv's first line; by default the deepest folder that holds every file.
    A clip shorter than 10000 samples raises: the official loader would silently drop it.
    """
    out_dir = Path(out_dir)
    # Plain records, not per-cell DataFrame access: AS-2M exports have two million rows.
    rows = manifest.table[manifest.table["split"] == split].to_dict("records")
    if not rows:
        raise ManifestError(f"manifest has no rows in split {split!r}")
    base = manifest.root if manifest.root is not None else Path.cwd()
    paths = [Path(row["path"]) if Path(row["path"]).is_absolute() else base / row["path"] for row in rows]
    root = Path(root) if root is not None else Path(os.path.commonpath([str(path.parent) for path in paths]))
    tsv_lines, lbl_lines = [f"{root}/"], []
    for row, path in zip(rows, paths):
        num_samples = _num_samples(row, path)
        if num_samples < MIN_SAMPLE_SIZE:
            raise ManifestError(f"clip {row['clip_id']!r} has {num_samples} samples (< {MIN_SAMPLE_SIZE}); fairseq would drop it")
        labels = [label for label in row["labels"].split(LABEL_SEPARATOR) if label]
        if any(FAIRSEQ_LABEL_SEPARATOR in label or "\t" in label for label in labels) or "\t" in row["clip_id"]:
            raise ManifestError(f"clip {row['clip_id']!r}: ids with tabs or commas cannot be written to a .lbl file")
        tsv_lines.append(f"{os.path.relpath(path, root)}\t{num_samples}")
        lbl_lines.append(f"{row['clip_id']}\t{FAIRSEQ_LABEL_SEPARATOR.join(labels)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"tsv": out_dir / f"{split}.tsv", "lbl": out_dir / f"{split}.lbl", "classes": out_dir / LABEL_DESCRIPTORS}
    written["tsv"].write_text("\n".join(tsv_lines) + "\n")
    written["lbl"].write_text("\n".join(lbl_lines) + "\n")
    with written["classes"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        for index, (label_id, name) in enumerate(zip(manifest.classes, manifest.class_names)):
            writer.writerow([index, label_id, name])
    return written
