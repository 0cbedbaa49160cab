"""What a complete cache shard is, and every check of one: `sslam cache verify`, and the settings check that
pretraining and evaluation run on their shards before the first step.

Integrity: every numeric dataset of a shard, the fbank above all, is written with HDF5's Fletcher-32 filter:
a checksum per chunk (one chunk = one clip), which HDF5 verifies on every read. We chose it over stored
digests because it needs no code of ours to stay correct, costs one pass over bytes that are being read
anyway, and guards every reader (training, evaluation, verify), not only `verify`. A flipped byte makes
the read of that clip fail; `verify_shard` reads every chunk (`quick=True`: the first and the last only)
and reports the rows whose checksum fails, the rows holding NaN/inf, and, given the manifest, the rows
whose clip id, split, fold or labels no longer match it.

Settings: `check_shard_settings` compares what a shard records (front-end parameters, target length, shard
count, the shard set's own consistency) with the config of the job about to read it, and raises one
CacheError naming the first attribute that differs.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import h5py
import numpy as np

from sslam.audio.config import FrontEndConfig
from sslam.runtime.errors import CacheError
from sslam.runtime.io import missing_file
from sslam.runtime.limits import MAX_MEL_BINS, MAX_TARGET_LENGTH

if TYPE_CHECKING:  # the manifest module loads pandas, which a training or evaluation job never needs
    from sslam.data.manifest import Manifest

BASE_DATASETS = ("fbank", "num_frames", "clip_id", "split", "fold", "labels")
SCAN_BLOCK = 64         # clips read at once by a full scan (64 × 1024 × 128 float16 = 16 MiB)
EXAMPLES = 5            # rows named per problem


def shard_rows(num_rows: int, shard_index: int, num_shards: int) -> range:
    """Rows i, i+N, i+2N...: deterministic and balanced, and neighbouring rows land in different shards."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise CacheError(f"shard index {shard_index} is not in 0..{num_shards - 1}")
    return range(shard_index, num_rows, num_shards)


def front_end_json(config: FrontEndConfig) -> str:
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


def create_checked_dataset(group: h5py.Group, name: str, data: np.ndarray, **options: Any) -> h5py.Dataset:
    """A dataset with a Fletcher-32 checksum per chunk (variable-length strings cannot carry filters)."""
    is_string = options.get("dtype") is not None and h5py.check_string_dtype(np.dtype(options["dtype"]))
    return group.create_dataset(name, data=data, fletcher32=not is_string, **options)


# --------------------------------------------------------------------------------------------- layout
def layout_problem(shard: h5py.File) -> str | None:
    """What is wrong with the sizes a shard declares, from its metadata alone (None = consistent).

    An HDF5 dataset may declare any number of rows without storing them (unwritten chunks cost nothing on
    disk and read back as zeros), so a 2-MB file can claim 10^9 clips and make a reader allocate per row.
    Before any reader allocates per row, this compares every declared size with what the file stores and
    with its attributes: the fbank's rows must each be one stored chunk (the cache writes every clip as
    one), its clip shape must be the recorded target length × mel bins (each within its named limit), every
    per-clip column must have exactly the fbank's rows, labels one column per recorded class, and the rows
    plus the recorded skips must be the manifest rows this shard index takes."""
    missing = [name for name in BASE_DATASETS if name not in shard]
    if missing:
        return f"missing dataset(s) {missing}"
    attrs, fbank = shard.attrs, shard["fbank"]
    if fbank.ndim != 3:
        return f"fbank has {fbank.ndim} dimensions, not 3 (clips, frames, mel bins)"
    rows, frames, bins = fbank.shape
    target_length, num_mel_bins = attrs.get("target_length"), attrs.get("num_mel_bins", bins)
    if (frames, bins) != (target_length, num_mel_bins):
        return (f"fbank clips are {frames} × {bins} but the shard records target_length {target_length} and "
                f"num_mel_bins {num_mel_bins}")
    if frames > MAX_TARGET_LENGTH or bins > MAX_MEL_BINS:
        return (f"fbank clips of {frames} frames × {bins} mel bins exceed the limits ({MAX_TARGET_LENGTH} frames, "
                f"{MAX_MEL_BINS} mel bins)")
    if fbank.chunks != (1, frames, bins):
        return f"fbank is not stored one clip per chunk (chunks {fbank.chunks}): not written by `sslam cache build`"
    stored = fbank.id.get_num_chunks()
    if stored != rows:
        return f"fbank declares {rows} clips but stores {stored}: damaged or crafted file"
    try:
        classes = json.loads(attrs.get("classes", "[]"))
    except (TypeError, ValueError):
        return f"the classes attribute is not a JSON list: {str(attrs.get('classes'))[:80]!r}"
    shapes = {name: shard[name].shape for name in BASE_DATASETS[1:]}
    extra = shard.get("extra", {})
    shapes.update({f"extra/{name}": extra[name].shape for name in extra})
    expected = {name: (rows, len(classes)) if name == "labels" else (rows,) for name in shapes}
    uneven = {name: shape[0] if shape else 0 for name, shape in shapes.items() if shape[:1] != (rows,)}
    if uneven:
        return f"row counts differ between datasets: fbank has {rows} rows, " + \
            ", ".join(f"{name} {count}" for name, count in uneven.items())
    wrong = {name: shape for name, shape in shapes.items() if shape != expected[name]}
    if wrong:
        name = next(iter(wrong))
        return f"{name} has shape {wrong[name]}, not {expected[name]} ({rows} clips, {len(classes)} recorded classes)"
    if "manifest_rows" in attrs:
        try:
            planned = len(shard_rows(int(attrs["manifest_rows"]), int(attrs.get("shard_index", 0)),
                                     int(attrs.get("num_shards", 1))))
        except (CacheError, TypeError, ValueError):
            return "shard_index / num_shards / manifest_rows attributes are inconsistent"
        if rows + int(attrs.get("num_skipped", 0)) != planned:
            return (f"{rows} clips + {attrs.get('num_skipped', 0)} skipped != the {planned} manifest rows of this "
                    f"shard ({attrs['manifest_rows']} rows, shard {attrs.get('shard_index')} of {attrs.get('num_shards')})")
    return None


def check_layout(shard: h5py.File, path: str | Path) -> int:
    """The shard's number of clips, after `layout_problem` found nothing; CacheError (one line) otherwise."""
    problem = layout_problem(shard)
    if problem:
        raise CacheError(f"{path}: {problem}; run `sslam cache verify` or rebuild the shard")
    return len(shard["fbank"])


# --------------------------------------------------------------------------------------------- settings
def settings_problems(attrs: Any, front_end: FrontEndConfig | None, target_length: int | None,
                      fbank_shape: tuple[int, ...] | None = None) -> list[str]:
    """Differences between a shard's recorded build settings and the expected ones, each naming the attribute."""
    problems = []
    if front_end is not None:
        expected = dataclasses.asdict(front_end)
        try:
            recorded = json.loads(attrs.get("front_end", ""))
        except (TypeError, ValueError):
            recorded = None
        if not isinstance(recorded, dict):
            problems.append(f"front_end is not recorded in the shard (got {attrs.get('front_end')!r})")
        else:
            for key in sorted(set(expected) | set(recorded)):
                if recorded.get(key, "<absent>") != expected.get(key, "<absent>"):
                    problems.append(f"front_end.{key} is {recorded.get(key, '<absent>')!r} in the shard but "
                                    f"{expected.get(key, '<absent>')!r} in the config")
        if fbank_shape is not None and fbank_shape[2] != front_end.num_mel_bins:
            problems.append(f"fbank has {fbank_shape[2]} mel bins, the config's front end {front_end.num_mel_bins}")
    if target_length is not None:
        if attrs.get("target_length") != target_length:
            problems.append(f"target_length is {attrs.get('target_length')} in the shard but {target_length} in the config")
        elif fbank_shape is not None and fbank_shape[1] != target_length:
            problems.append(f"fbank holds {fbank_shape[1]} frames per clip but target_length is {target_length}")
    return problems


def check_shard_settings(paths: Sequence[str | Path], front_end: FrontEndConfig | None = None,
                         target_length: int | None = None, num_shards: int | None = None) -> None:
    """Raise CacheError (one line, naming the attribute) when a shard was built with other settings than the
    config of the job about to read it, or the shards do not form one complete set. Reads attributes only."""
    paths = [Path(path) for path in paths]
    for path in paths:
        if not path.is_file():
            raise CacheError(missing_file(path, "cache shard"))
        try:
            with h5py.File(path, "r") as shard:
                attrs = dict(shard.attrs)
                shape = shard["fbank"].shape if "fbank" in shard else None
        except OSError as error:
            raise CacheError(f"{path}: not a readable HDF5 shard (truncated or corrupt?): {error}") from error
        problems = settings_problems(attrs, front_end, target_length, shape)
        if num_shards is not None and int(attrs.get("num_shards", 1)) != num_shards:
            problems.append(f"num_shards is {attrs.get('num_shards')} in the shard but {num_shards} in the config")
        if problems:
            more = f" (and {len(problems) - 1} more difference(s))" if len(problems) > 1 else ""
            raise CacheError(f"{path} was built with other settings than this job's config: {problems[0]}{more}; "
                             "rebuild the cache")
    problems = verify_shard_set(paths) if len(paths) > 1 else []
    if problems:
        raise CacheError(f"the shards do not form one set: {problems[0]}")


# --------------------------------------------------------------------------------------------- verify
def _rows_text(rows: list[int], clip_ids: np.ndarray) -> str:
    named = ", ".join(f"{row} ({clip_ids[row]})" for row in rows[:EXAMPLES])
    return named + (f" and {len(rows) - EXAMPLES} more" if len(rows) > EXAMPLES else "")


def _scan_fbank(fbank: h5py.Dataset, clip_ids: np.ndarray, quick: bool) -> list[str]:
    """Read the chunks (all, or the first and last) and report checksum failures and non-finite values."""
    rows = len(fbank)
    blocks = [(0, 1), (rows - 1, rows)] if quick else [(start, min(start + SCAN_BLOCK, rows))
                                                      for start in range(0, rows, SCAN_BLOCK)]
    unreadable, nonfinite = [], []
    for start, stop in blocks if rows else []:
        try:
            data = fbank[start:stop]
        except OSError:  # a checksum failure or a damaged chunk: find which clips
            data = None
        for offset in range(stop - start):
            row = start + offset
            if data is None:
                try:
                    values = fbank[row]
                except OSError:
                    unreadable.append(row)
                    continue
            else:
                values = data[offset]
            if not np.isfinite(values).all():
                nonfinite.append(row)
    problems = []
    if unreadable:
        problems.append(f"unreadable data: {len(unreadable)} clip(s) fail their checksum or cannot be decoded "
                        f"(flipped bytes?), rows {_rows_text(sorted(set(unreadable)), clip_ids)}")
    if nonfinite:
        problems.append(f"NaN/inf values in {len(nonfinite)} clip(s), rows {_rows_text(sorted(set(nonfinite)), clip_ids)}")
    if not fbank.fletcher32:
        problems.append("fbank carries no per-clip checksums (built by an older sslam): flipped bytes cannot be "
                        "detected; rebuild it")
    return problems


def _manifest_row_problems(shard: h5py.File, manifest: Manifest, clip_ids: np.ndarray) -> list[str]:
    """Rows whose clip is no longer in the manifest, belongs to another shard, or has another split/fold/labels."""
    from sslam.data.manifest import LABEL_SEPARATOR

    attrs = shard.attrs
    index, num_shards = int(attrs.get("shard_index", 0)), int(attrs.get("num_shards", 1))
    position_of = {clip: row for row, clip in enumerate(manifest.table["clip_id"])}
    classes = json.loads(attrs.get("classes", "[]"))
    splits, folds, labels = shard["split"].asstr()[()], shard["fold"][()], shard["labels"][()]
    mismatched: list[tuple[int, str]] = []
    for row, clip in enumerate(clip_ids):
        where = position_of.get(clip)
        if where is None:
            mismatched.append((row, "not in the manifest"))
            continue
        if where % num_shards != index:
            mismatched.append((row, f"the manifest puts it in shard {where % num_shards}"))
            continue
        entry = manifest.table.iloc[where]
        cached_labels = sorted(classes[i] for i in np.flatnonzero(labels[row]) if i < len(classes))
        manifest_labels = sorted(label for label in str(entry["labels"]).split(LABEL_SEPARATOR) if label)
        for name, cached, listed in (("split", splits[row], entry["split"]), ("fold", int(folds[row]), int(entry["fold"])),
                                     ("labels", cached_labels, manifest_labels)):
            if cached != listed:
                mismatched.append((row, f"{name} {cached!r} in the shard, {listed!r} in the manifest"))
                break
    if not mismatched:
        return []
    examples = "; ".join(f"row {row} ({clip_ids[row]}): {why}" for row, why in mismatched[:EXAMPLES])
    return [f"{len(mismatched)} row(s) no longer match the manifest, e.g. {examples}"]


def _problems_in(shard: h5py.File, manifest: Manifest | None, front_end: FrontEndConfig | None,
                 target_length: int | None, quick: bool) -> list[str]:
    attrs = shard.attrs
    if not attrs.get("complete", False):
        return ["no `complete` flag: the build did not finish"]
    problems = []
    try:
        problem = layout_problem(shard)     # declared sizes first: nothing below may allocate per declared row
    except Exception as error:  # h5py raises OSError/KeyError/RuntimeError for damaged files
        return [f"unreadable data: {error}"]
    if problem:
        return [problem]
    try:
        rows = len(shard["fbank"])
        for name in BASE_DATASETS[1:]:
            shard[name][()]                                 # reading everything small catches corrupt blocks
        for name in shard.get("extra", {}):
            shard["extra"][name][()]
        clip_ids = shard["clip_id"].asstr()[()]
    except Exception as error:  # h5py raises OSError/KeyError/RuntimeError for damaged files
        return [f"unreadable data: {error}"]
    problems += _scan_fbank(shard["fbank"], clip_ids, quick)
    if shard["labels"].shape[1] != attrs.get("num_classes"):
        problems.append(f"labels has {shard['labels'].shape[1]} columns but num_classes is {attrs.get('num_classes')}")
    problems += settings_problems(attrs, front_end, target_length, shard["fbank"].shape)
    if manifest is not None:
        if attrs.get("manifest_hash") != manifest.content_hash():
            problems.append(f"manifest hash {attrs.get('manifest_hash')} != {manifest.content_hash()}: the manifest changed")
        if attrs.get("num_classes") != manifest.num_classes or json.loads(attrs.get("classes", "[]")) != manifest.classes:
            problems.append(f"class list differs from the manifest's ({attrs.get('num_classes')} vs {manifest.num_classes} classes)")
        expected = len(shard_rows(len(manifest), int(attrs.get("shard_index", 0)), int(attrs.get("num_shards", 1))))
        if rows + int(attrs.get("num_skipped", 0)) != expected:
            problems.append(f"{rows} rows + {attrs.get('num_skipped')} skipped != {expected} manifest rows for this shard")
        problems += _manifest_row_problems(shard, manifest, clip_ids)
    return problems


def verify_shard(path: str | Path, manifest: Manifest | None = None, front_end: FrontEndConfig | None = None,
                 target_length: int | None = None, quick: bool = False) -> list[str]:
    """Every problem found in one shard, one message each (empty list = good). Reads every fbank chunk
    unless `quick` (then the first and the last: catches a truncated file, not a flipped byte)."""
    path = Path(path)
    if not path.is_file():
        return ["a folder, not a shard file" if path.is_dir() else "file not found"]
    try:
        with h5py.File(path, "r") as shard:
            return _problems_in(shard, manifest, front_end, target_length, quick)
    except OSError as error:
        return [f"not a readable HDF5 file (truncated or corrupt?): {error}"]


def verify_shard_set(paths: Sequence[str | Path]) -> list[str]:
    """Problems between the shards of one dataset: same build settings, distinct shard indices and,
    when several shards are given, no index of 0..num_shards−1 missing (a lost shard silently drops
    1/N of the data otherwise)."""
    keys = ("num_shards", "manifest_hash", "target_length", "front_end")
    seen: dict[int, str] = {}
    reference, problems = None, []
    for path in paths:
        try:
            with h5py.File(path, "r") as shard:
                attrs = {key: shard.attrs.get(key) for key in keys + ("shard_index",)}
        except OSError:
            continue                                    # already reported by verify_shard
        settings = tuple(str(attrs[key]) for key in keys)
        reference = reference or (settings, path)
        if settings != reference[0]:
            differing = [key for key, mine, theirs in zip(keys, settings, reference[0]) if mine != theirs]
            problems.append(f"{path}: built with other settings ({', '.join(differing)}) than {reference[1]}")
        index = int(attrs["shard_index"] or 0)
        if index in seen:
            problems.append(f"{path}: shard index {index} also in {seen[index]}")
        seen[index] = str(path)
    if len(paths) > 1 and reference is not None:
        num_shards = int(float(reference[0][0]))
        missing = sorted(set(range(num_shards)) - set(seen))
        if missing:
            problems.append(f"shard set incomplete: index(es) {missing} of {num_shards} not among the files given")
    return problems
