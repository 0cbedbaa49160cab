"""The canonical manifest: one table per dataset that every later stage reads.

A manifest is a tab-separated file `<name>.tsv` with a header and these columns:

| column        | type  | meaning |
|---------------|-------|---------|
| `clip_id`     | str   | unique id of the clip inside the dataset (AudioSet: the YTID) |
| `path`        | str   | audio file; absolute, or relative to the manifest's own folder |
| `split`       | str   | `train`, `valid`, `test`/`eval`, or `unlabeled` |
| `fold`        | int   | cross-validation fold (ESC-50: 1–5), or -1 where the dataset has none |
| `labels`      | str   | label ids separated by `;` (empty for unlabeled clips); each id is in the class list |
| `sample_rate` | int   | native sample rate of the file in Hz, 0 if not known yet |
| `duration`    | float | seconds, 0 if not known yet |

Extra columns are allowed and preserved (e.g. `start_seconds`, `end_seconds`, `weight`, `polyphony`).
The class list lives beside it in `<name>.classes.tsv` (columns `index`, `label_id`, `name`): the
index is the position of the class in every target vector, so it is fixed once per dataset.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sslam.runtime.errors import ManifestError
from sslam.runtime.io import atomic_path, missing_file

COLUMNS = ["clip_id", "path", "split", "fold", "labels", "sample_rate", "duration"]
LABEL_SEPARATOR = ";"


@dataclass
class Manifest:
    table: pd.DataFrame
    classes: list[str] = field(default_factory=list)          # label ids, in target-vector order
    class_names: list[str] = field(default_factory=list)      # human-readable names, same order
    root: Path | None = None                                  # folder that relative paths hang off

    def __post_init__(self) -> None:
        for column in COLUMNS:
            if column not in self.table.columns:
                defaults = {"split": "train", "fold": -1, "labels": "", "sample_rate": 0, "duration": 0.0}
                if column not in defaults:
                    raise ManifestError(f"manifest is missing the required column {column!r}")
                self.table[column] = defaults[column]
        self.table = self.table[COLUMNS + [c for c in self.table.columns if c not in COLUMNS]].reset_index(drop=True)
        self.table["clip_id"] = self.table["clip_id"].astype(str)
        self.table["path"] = self.table["path"].astype(str)
        self.table["split"] = self.table["split"].astype(str)
        self.table["labels"] = self.table["labels"].fillna("").astype(str)
        self.table["fold"] = self.table["fold"].fillna(-1).astype(int)
        self.table["sample_rate"] = self.table["sample_rate"].fillna(0).astype(int)
        self.table["duration"] = self.table["duration"].fillna(0.0).astype(float)
        if not self.class_names:
            self.class_names = list(self.classes)
        if len(self.class_names) != len(self.classes):
            raise ManifestError("class_names and classes differ in length")

    def __len__(self) -> int:
        return len(self.table)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def labels_of(self, row: int) -> list[str]:
        text = self.table.at[row, "labels"]
        return [label for label in text.split(LABEL_SEPARATOR) if label] if text else []

    def class_index(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.classes)}

    def label_indices(self, row: int) -> list[int]:
        index = self.class_index()
        return [index[label] for label in self.labels_of(row)]

    def audio_path(self, row: int) -> Path:
        path = Path(self.table.at[row, "path"])
        if not path.is_absolute() and self.root is not None:
            path = self.root / path
        return path

    def subset(self, mask) -> "Manifest":
        return Manifest(self.table[mask].reset_index(drop=True).copy(), list(self.classes), list(self.class_names), self.root)

    def validate(self) -> None:
        """Raise ManifestError on duplicate clip ids or label ids outside the class list."""
        duplicated = self.table["clip_id"][self.table["clip_id"].duplicated()]
        if len(duplicated):
            raise ManifestError(f"duplicate clip ids, e.g. {duplicated.iloc[0]!r} ({len(duplicated)} in all)")
        # Vectorised: AS-2M has ~2M rows, and a per-row Python loop costs minutes there.
        exploded = self.table["labels"].str.split(LABEL_SEPARATOR).explode()
        exploded = exploded[exploded.notna() & (exploded != "")]
        unknown = exploded[~exploded.isin(set(self.classes))]
        if len(unknown):
            row = unknown.index[0]
            raise ManifestError(
                f"row {row} (clip {self.table.at[row, 'clip_id']!r}): unknown label id {unknown.iloc[0]!r}"
                f" ({len(unknown)} unknown label occurrences in all)"
            )

    def content_hash(self) -> str:
        """Stable hash of the table and class list: what the cache records to detect a stale shard."""
        digest = hashlib.sha256()
        digest.update(self.table.to_csv(sep="\t", index=False).encode())
        digest.update("\n".join(self.classes).encode())
        return digest.hexdigest()[:16]


def classes_path(manifest_path: str | Path) -> Path:
    manifest_path = Path(manifest_path)
    return manifest_path.with_name(manifest_path.stem + ".classes.tsv")


def write_manifest(manifest: Manifest, path: str | Path) -> Path:
    """Write `<path>` and its class list, each atomically (sslam.runtime.io.atomic_path)."""
    manifest.validate()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    classes = pd.DataFrame({"index": range(manifest.num_classes), "label_id": manifest.classes, "name": manifest.class_names})
    for target, frame in ((classes_path(path), classes), (path, manifest.table)):
        with atomic_path(target) as temporary:
            frame.to_csv(temporary, sep="\t", index=False)
    return path


def read_class_list(path: Path) -> tuple[list[str], list[str]]:
    """(label ids, names) of a `<name>.classes.tsv`, in index order; ManifestError when malformed."""
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: malformed class list: {error}") from error
    missing = [column for column in ("index", "label_id", "name") if column not in frame.columns]
    if missing:
        raise ManifestError(f"{path}: class list without column(s) {missing}; expected index, label_id, name")
    try:
        order = frame["index"].astype(int)
    except ValueError as error:
        raise ManifestError(f"{path}: class list index is not an integer column: {error}") from error
    if sorted(order) != list(range(len(frame))):
        raise ManifestError(f"{path}: class list indices must be 0..{len(frame) - 1}, each once")
    frame = frame.iloc[order.argsort()]
    return frame["label_id"].tolist(), frame["name"].tolist()


def read_manifest(path: str | Path) -> Manifest:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(missing_file(path, "manifest"))
    if path.stat().st_size == 0:
        raise ManifestError(f"{path}: empty file (0 bytes), not a manifest: rebuild it with `sslam manifest`")
    try:
        table = pd.read_csv(path, sep="\t", dtype={"clip_id": str, "labels": str, "path": str, "split": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: malformed manifest: {error}") from error
    missing = [c for c in ("clip_id", "path") if c not in table.columns]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {missing}; expected {COLUMNS}")
    classes, names = [], []
    sidecar = classes_path(path)
    if sidecar.is_file():
        classes, names = read_class_list(sidecar)
    elif "labels" in table.columns and (table["labels"].astype(str) != "").any():
        example = table.loc[table["labels"].astype(str) != "", "labels"].iloc[0]
        raise ManifestError(f"{path}: its class list {sidecar} is missing, but rows carry labels (e.g. {example!r}); "
                            "the class list fixes each label's position in the targets: rebuild both with `sslam manifest`")
    try:
        manifest = Manifest(table, classes, names, root=path.parent.resolve())
    except (ValueError, TypeError) as error:  # e.g. a fold or sample_rate that is not a number
        raise ManifestError(f"{path}: malformed manifest: {error}") from error
    manifest.validate()
    return manifest
