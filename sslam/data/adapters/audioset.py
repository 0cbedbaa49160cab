"""AudioSet: segment CSVs + ontology -> download manifest, availability scan, sampling weights.

AudioSet ships no audio, only YouTube ids, so the adapter has two modes:
* without `audio_dir`: the DOWNLOAD manifest, one row per segment of the chosen set, naming the
  file each segment should be saved as (`Y<YTID>.wav`, the official manifests' naming);
* with `audio_dir`: an AVAILABILITY scan of a download folder, giving the canonical manifest of
  the clips that exist and a report of what is missing per segment file.

Unknown label ids (not in the class list) raise ManifestError naming the CSV file and line: the
label set is fixed by the class list, and a silent skip would change every target vector.
"""
from __future__ import annotations

import csv
import json
import logging
import shlex
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sslam.data.adapters.common import AUDIO_SUFFIXES, finish, join_labels, read_lines, require_dir, require_file
from sslam.data.adapters.fairseq import read_label_descriptors
from sslam.data.manifest import Manifest
from sslam.runtime.errors import ManifestError

LOG = logging.getLogger(__name__)
SEGMENT_FILES = {
    "balanced_train": "balanced_train_segments.csv",
    "unbalanced_train": "unbalanced_train_segments.csv",
    "eval": "eval_segments.csv",
}
# Named sets as the paper uses them (Appendix B.0.1): AS-20K = balanced, AS-2M = balanced + unbalanced.
SETS = {
    "as20k": ("balanced_train",),
    "as2m": ("balanced_train", "unbalanced_train"),
    "eval": ("eval",),
    "all": ("balanced_train", "unbalanced_train", "eval"),
}
CANONICAL_SPLIT = {"balanced_train": "train", "unbalanced_train": "train", "eval": "eval"}
YOUTUBE_URL = "https://www.youtube.com/watch?v={}"
# Per-clip sampling weights for AS-2M fine-tuning, AST/PSLA recipe (YuanGongND/psla
# src/gen_weight_file.py): weight(clip) = sum over the clip's labels of SCALE / (count(label) + EPS).
# The official SSLAM/EAT code only reads a ready-made weights file (one float per tsv row,
# `weights_file=...merged_unbal_bal_train_weka_weight.csv`) whose generator is not released;
# this is the public recipe such files are usually made with. SCALE only keeps the numbers readable (torch.multinomial normalises);
# EPS avoids dividing by zero.
WEIGHT_SCALE = 1000.0
WEIGHT_EPS = 0.01


@dataclass(frozen=True)
class OntologyNode:
    id: str
    name: str
    child_ids: tuple[str, ...]
    restrictions: tuple[str, ...]  # "abstract" (never a label) and/or "blacklist" (not rated)


def read_ontology(path: str | Path) -> dict[str, OntologyNode]:
    """ontology.json (a list of {id, name, child_ids, restrictions, ...}) -> id -> node."""
    path = require_file(Path(path), "AudioSet ontology")
    try:
        entries = json.loads("\n".join(read_lines(path, "AudioSet ontology")))
    except json.JSONDecodeError as error:
        raise ManifestError(f"{path}: not valid JSON: {error}") from error
    if not isinstance(entries, list):
        raise ManifestError(f"{path}: expected a JSON list of ontology entries, got {type(entries).__name__}")
    nodes = {}
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict) or "id" not in entry or "name" not in entry:
            raise ManifestError(f"{path}: entry {position} lacks an 'id' or 'name'")
        nodes[entry["id"]] = OntologyNode(
            entry["id"], entry["name"], tuple(entry.get("child_ids", ())), tuple(entry.get("restrictions", ()))
        )
    for node in nodes.values():
        for child in node.child_ids:
            if child not in nodes:
                raise ManifestError(f"{path}: {node.id} lists an unknown child id {child!r}")
    return nodes


def read_segments(path: str | Path) -> pd.DataFrame:
    """A segment CSV -> columns ytid, start_seconds, end_seconds, labels (list), line.

    Format: '#' comment lines, then `YTID, start, end, "id,id,..."` (spaces after the commas,
    the label list quoted). Any other line raises ManifestError with its line number.
    """
    path = require_file(Path(path), "AudioSet segment CSV")
    records = []
    lines = read_lines(path, "AudioSet segment CSV")       # a binary file is one line, not a traceback
    for number, fields in enumerate(csv.reader(lines, skipinitialspace=True), start=1):
        if not fields or fields[0].startswith("#"):
            continue
        try:
            ytid, start, end, labels = fields
            start_seconds, end_seconds = float(start), float(end)
        except ValueError:
            raise ManifestError(f"{path}:{number}: expected `YTID, start, end, \"labels\"`, got {fields}") from None
        label_list = [label.strip() for label in labels.split(",") if label.strip()]
        if not ytid or not label_list or end_seconds <= start_seconds:
            raise ManifestError(f"{path}:{number}: empty id, empty label list or end <= start: {fields}")
        records.append((ytid, start_seconds, end_seconds, label_list, number))
    return pd.DataFrame.from_records(records, columns=["ytid", "start_seconds", "end_seconds", "labels", "line"])


def read_class_list(path: str | Path) -> tuple[list[str], list[str]]:
    """Either AudioSet's `class_labels_indices.csv` (header `index,mid,display_name`) or a
    fairseq `label_descriptors.csv` (`index,label_id,name`, no header)."""
    path = require_file(Path(path), "class list")
    with path.open() as handle:
        first_line = handle.readline().strip().lower()
    if first_line.startswith("index,mid"):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        order = frame["index"].astype(int)
        if sorted(order) != list(range(len(frame))):
            raise ManifestError(f"{path}: class indices must be 0..{len(frame) - 1}, each once")
        frame = frame.assign(order=order).sort_values("order")
        return frame["mid"].tolist(), frame["display_name"].tolist()
    return read_label_descriptors(path)


def segments_of_set(root: Path, set_name: str) -> pd.DataFrame:
    """Concatenated segment rows of a named set, with a `subset` column (the CSV they came from)."""
    if set_name not in SETS:
        raise ManifestError(f"unknown AudioSet set {set_name!r}; expected one of {sorted(SETS)}")
    frames = []
    for subset in SETS[set_name]:
        csv_path = root / SEGMENT_FILES[subset]
        if set_name == "all" and not csv_path.is_file():
            continue  # "all" means every segment file present; a named set needs all of its files
        frame = read_segments(csv_path)
        frames.append(frame.assign(subset=subset, source=str(csv_path)))
    if not frames:
        raise ManifestError(f"{root}: none of {sorted(SEGMENT_FILES.values())} found")
    return pd.concat(frames, ignore_index=True)


def resolve_classes(segments: pd.DataFrame, ontology: dict[str, OntologyNode], class_list: Path | None) -> tuple[list[str], list[str]]:
    """The class list file when given; otherwise the ontology ids that occur in the CSVs, sorted
    by id (NOT first-appearance order, which would depend on which CSVs were read)."""
    if class_list is not None:
        classes, names = read_class_list(class_list)
    else:
        classes = sorted({label for labels in segments["labels"] for label in labels})
        names = [ontology[label].name if label in ontology else "" for label in classes]
        LOG.warning("no class_list given: using the %d ontology ids found in the segment CSVs, sorted by id "
                    "(pass class_labels_indices.csv for the official 527-class order)", len(classes))
    known = set(classes) & set(ontology) if class_list is None else set(classes)
    for labels, source, line in zip(segments["labels"], segments["source"], segments["line"]):
        for label in labels:
            if label not in known:
                raise ManifestError(f"{source}:{line}: label id {label!r} is not in the class list / ontology")
    return classes, names


def sampling_weights(label_lists: list[list[str]], scale: float = WEIGHT_SCALE, eps: float = WEIGHT_EPS) -> np.ndarray:
    """weight(clip) = sum over its labels of scale / (count(label) + eps), counts over these clips."""
    counts = Counter(label for labels in label_lists for label in labels)
    label_weight = {label: scale / (count + eps) for label, count in counts.items()}
    return np.array([sum(label_weight[label] for label in labels) for labels in label_lists], dtype=np.float64)


def download_command(row: pd.Series, out_dir: str | Path, sample_rate: int = 16000) -> str:
    """The shell command that fetches one segment: yt-dlp resolves the audio stream, ffmpeg cuts
    [start, end) and writes mono `Y<YTID>.wav` at `sample_rate`. Rendered only; never executed here."""
    target = Path(out_dir) / row["file_name"]
    stream = f"$(yt-dlp --quiet --no-warnings --format bestaudio --get-url {shlex.quote(row['url'])})"
    duration = float(row["end_seconds"]) - float(row["start_seconds"])
    return (
        f"ffmpeg -nostdin -loglevel error -ss {float(row['start_seconds']):.3f} -t {duration:.3f} "
        f"-i \"{stream}\" -vn -ac 1 -ar {sample_rate} -y {shlex.quote(str(target))}"
    )


@dataclass
class AvailabilityReport:
    set_name: str
    audio_dir: str
    expected: dict[str, int] = field(default_factory=dict)   # per segment file
    found: dict[str, int] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)
    missing_ids: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _index_audio_files(audio_dir: Path) -> dict[str, Path]:
    """Y<YTID> stem -> file, searched recursively; .wav wins over .flac over .ogg for one id."""
    found: dict[str, Path] = {}
    for suffix in reversed(AUDIO_SUFFIXES):
        for path in sorted(audio_dir.rglob(f"Y*{suffix}")):
            found[path.stem] = path.resolve()
    return found


def scan_availability(segments: pd.DataFrame, audio_dir: Path, set_name: str) -> tuple[pd.DataFrame, AvailabilityReport]:
    files = _index_audio_files(audio_dir)
    paths = segments["file_name"].map(lambda name: files.get(Path(name).stem))
    report = AvailabilityReport(set_name, str(audio_dir))
    for subset, rows in segments.groupby("subset", sort=False):
        exists = paths[rows.index].notna()
        report.expected[subset] = int(len(rows))
        report.found[subset] = int(exists.sum())
        report.missing[subset] = int((~exists).sum())
        report.missing_ids[subset] = rows.loc[~exists, "ytid"].tolist()
    available = segments[paths.notna()].assign(path=paths[paths.notna()].astype(str))
    return available, report


def build_audioset(
    root: Path,
    set: str = "all",  # named like the YAML/CLI option key; shadows the builtin in this function only
    class_list: str | None = None,
    ontology: str = "ontology.json",
    audio_dir: str | None = None,
    report: str | None = None,
    weights: bool = True,
) -> Manifest:
    """Download manifest (no `audio_dir`) or availability-scanned canonical manifest (`audio_dir`).

    `report` (scan mode) is a JSON path for the AvailabilityReport. `weights` adds the AS-2M
    fine-tuning `weight` column, computed over the returned rows of each canonical split.
    """
    root = require_dir(Path(root), "AudioSet metadata folder")
    nodes = read_ontology(root / ontology if not Path(ontology).is_absolute() else Path(ontology))
    segments = segments_of_set(root, set)
    duplicated = segments["ytid"].duplicated()
    if duplicated.any():
        first = segments[duplicated].iloc[0]
        raise ManifestError(f"{first['source']}:{first['line']}: YTID {first['ytid']!r} appears twice in set {set!r}")
    classes, names = resolve_classes(segments, nodes, Path(class_list) if class_list else None)
    segments = segments.assign(
        clip_id=segments["ytid"],
        file_name="Y" + segments["ytid"] + ".wav",
        url=segments["ytid"].map(YOUTUBE_URL.format),
        duration=segments["end_seconds"] - segments["start_seconds"],
    )
    if audio_dir is None:
        if report is not None:
            raise ManifestError("the `report` option needs `audio_dir` (it reports an availability scan)")
        # Planned location relative to the download folder, where this manifest is meant to live.
        table = segments.assign(path=segments["subset"] + "/" + segments["file_name"], split=segments["subset"])
    else:
        table, availability = scan_availability(segments, require_dir(Path(audio_dir), "AudioSet audio folder"), set)
        # The found files hold just the segment, so the YouTube offsets must not read as offsets
        # into the file (what `start_seconds`/`end_seconds` mean in a canonical manifest).
        table = table.assign(split=table["subset"].map(CANONICAL_SPLIT)).rename(
            columns={"start_seconds": "youtube_start_seconds", "end_seconds": "youtube_end_seconds"})
        if report is not None:
            Path(report).parent.mkdir(parents=True, exist_ok=True)
            Path(report).write_text(json.dumps(availability.to_dict(), indent=1))
    if weights:
        # Label counts are taken within each canonical split, so eval clips never shape the
        # training weights (AST computes them over its training list only).
        weight = pd.Series(0.0, index=table.index)
        for _, rows in table.groupby(table["subset"].map(CANONICAL_SPLIT)):
            weight[rows.index] = sampling_weights(rows["labels"].tolist())
        table = table.assign(weight=weight)
    table = table.assign(labels=table["labels"].map(join_labels))
    offsets = [column for column in table.columns if column.endswith(("start_seconds", "end_seconds"))]
    keep = ["clip_id", "path", "split", "labels", "duration", "subset", "ytid", "url", *offsets, "file_name"]
    keep += ["weight"] if weights else []
    return finish(table[keep].reset_index(drop=True), classes, names)
