"""HDF5 spectrogram cache: one shard file holds the raw log-mel of every N-th clip of a manifest.

Decoding, resampling and the Kaldi fbank cost tens of milliseconds per 10-s clip; reading a cached
(T, F) float16 block costs well under one. So the front end runs once per clip here, and training
reads shards through `sslam.data.datasets.FbankDataset`.

Shard layout (docs/architecture.md): datasets `fbank` float16 (N, T, F) in chunks of one clip, each with a
Fletcher-32 checksum (`sslam.data.shards` says why), holding the RAW log-mel padded/truncated to
`target_length` (normalisation happens at read time, so one cache serves any mean/std); `num_frames` int32; `clip_id`, `split` str; `fold` int16; `labels` uint8
multi-hot (N, C); manifest extra columns under the group `extra/`. Attributes record everything the
content depends on (front-end parameters, target length, manifest hash, classes, shard index) plus
the normalisation sums, and `complete = True` is written last.

A shard is written to `SHARD.h5.tmp` and renamed only when complete, so a killed job never leaves
a file that looks finished and a rebuild never destroys a good shard before its successor exists.
Clips the front end rejects (missing, undecodable, oversize, empty, silent, too short, NaN/inf) are listed
in `SHARD.skips.tsv`; the build fails only when their fraction exceeds `max_failure_fraction`. Clips shorter than
`min_samples` (datasets.<name>.min_samples, default the official 10,000 samples at 16 kHz) are dropped as the
official loader drops them, whatever the dataset's adapter: listed there too, with reason `short`, and not
counted as failures. Only the
audio the target length needs is decoded, so memory follows the target length, not the file.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

from sslam import __version__
from sslam.audio.front_end import (DEFAULT_FRONT_END, FrontEndConfig, clip_num_frames, clip_num_samples, fit_length,
                                   load_raw_fbank)
from sslam.runtime.configuration import cli_number, from_dict, load_yaml, section
from sslam.data.config import OFFICIAL_MIN_SAMPLES, CacheConfig
from sslam.data.manifest import COLUMNS, Manifest, read_manifest
from sslam.data.shards import (  # noqa: F401  (verify_shard, verify_shard_set, BASE_DATASETS: re-exported)
    BASE_DATASETS, create_checked_dataset, front_end_json, shard_rows, verify_shard, verify_shard_set,
)
from sslam.runtime.errors import AudioError, CacheError, DiskFullError
from sslam.runtime.io import atomic_path
from sslam.runtime.limits import MAX_TARGET_LENGTH
from sslam.runtime.progress import Progress

# Splits whose frames feed the normalisation statistics: never evaluation data.
STATISTICS_SPLITS = ("train", "unlabeled")
# HDF5 does not survive a write that fails for lack of space (its close then crashes the process), so
# the build checks the free space before it starts and every so many clips while it runs.
SPACE_CHECK_EVERY = 64
SPACE_MARGIN_BYTES = 4 * 2**20


def ensure_free_space(out_path: Path, needed: int) -> None:
    """DiskFullError (one line, nothing written) when the shard's remaining clips cannot fit beside `out_path`."""
    free = shutil.disk_usage(out_path.parent).free
    if needed + SPACE_MARGIN_BYTES > free:
        raise DiskFullError(errno.ENOSPC, f"no space left on the device for {out_path}: its clips need about "
                            f"{(needed + SPACE_MARGIN_BYTES) / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free; "
                            f"{'the previous version was kept' if out_path.exists() else 'nothing was written'}")


@dataclass
class ShardReport:
    path: Path
    skips_path: Path
    total: int
    written: int
    skipped: int
    seconds: float
    short: int = 0          # dropped for having fewer than min_samples samples (not failures)


def _extra_columns(manifest: Manifest) -> list[str]:
    return [column for column in manifest.table.columns if column not in COLUMNS]


def _extra_array(values: pd.Series) -> np.ndarray:
    """Integers as int16 when they fit (e.g. polyphony), other numbers float32, the rest str."""
    if pd.api.types.is_integer_dtype(values):
        fits = values.empty or (values.min() >= np.iinfo(np.int16).min and values.max() <= np.iinfo(np.int16).max)
        return values.to_numpy(np.int16 if fits else np.int64)
    if pd.api.types.is_numeric_dtype(values):
        return values.to_numpy(np.float32)
    return values.astype(str).to_numpy(dtype=object)


def _write_skips(path: Path, skips: list[tuple[str, str, str]]) -> None:
    with atomic_path(path) as temporary:
        pd.DataFrame(skips, columns=["clip_id", "path", "reason"]).to_csv(temporary, sep="\t", index=False)


def build_shard(
    manifest_path: str | Path,
    out_path: str | Path,
    shard_index: int = 0,
    num_shards: int = 1,
    target_length: int = 1024,
    front_end: FrontEndConfig = DEFAULT_FRONT_END,
    config: CacheConfig | None = None,
    min_samples: int = OFFICIAL_MIN_SAMPLES,
) -> ShardReport:
    """Cache rows shard_index, shard_index + num_shards, ... of the manifest into `out_path`.

    Runs on one core: the per-clip tensors are too small for intra-op threads to pay off (on a busy
    machine they make the fbank 10-100x slower); parallelism comes from building shards side by side.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _build_shard(manifest_path, Path(out_path), shard_index, num_shards, target_length, front_end,
                            config or CacheConfig(), min_samples)
    finally:
        torch.set_num_threads(previous_threads)


def _build_shard(manifest_path, out_path: Path, shard_index: int, num_shards: int, target_length: int,
                 front_end: FrontEndConfig, config: CacheConfig, min_samples: int) -> ShardReport:
    if not 1 <= target_length <= MAX_TARGET_LENGTH:
        raise CacheError(f"target_length must be in [1, {MAX_TARGET_LENGTH}], got {target_length}")
    started = time.perf_counter()
    manifest = read_manifest(manifest_path)
    rows = shard_rows(len(manifest), shard_index, num_shards)
    skips_path = out_path.with_name(out_path.name.removesuffix(".h5") + ".skips.tsv")
    num_bins = front_end.num_mel_bins
    kept: list[int] = []
    skips: list[tuple[str, str, str]] = []
    short = 0
    stat_sum = stat_sumsq = 0.0
    stat_count = 0

    # Written beside the target and renamed only when complete: a killed or failed build leaves any
    # existing shard untouched.
    with atomic_path(out_path) as tmp_path:
        with h5py.File(tmp_path, "w") as shard:
            # Room for every row of the shard; shrunk to the clips that decoded once the loop is done.
            fbank = shard.create_dataset("fbank", shape=(len(rows), target_length, num_bins),
                                         maxshape=(None, target_length, num_bins), dtype=np.float16,
                                         chunks=(1, target_length, num_bins), compression=config.compression,
                                         fletcher32=True)  # a checksum per clip, verified on every read
            num_frames = []
            clip_bytes = target_length * num_bins * np.dtype(np.float16).itemsize
            progress = Progress(len(rows), f"cache {out_path.name}", unit="clip")
            for position, row in enumerate(rows):
                progress.update(1, skipped=len(skips))
                if position % SPACE_CHECK_EVERY == 0 and config.compression is None:
                    ensure_free_space(out_path, (len(rows) - position) * clip_bytes)
                clip_id = manifest.table.at[row, "clip_id"]
                path = manifest.audio_path(row)
                try:
                    samples = clip_num_samples(path, front_end) if min_samples else 0
                    if samples < min_samples:
                        skips.append((clip_id, str(path), f"short: {samples} samples < min_samples {min_samples}"))
                        short += 1
                        continue
                    # Only what the target length needs is decoded: memory follows target_length, not the file.
                    raw = load_raw_fbank(path, front_end, max_frames=target_length)
                    clip_frames = clip_num_frames(path, front_end) if len(raw) == target_length else len(raw)
                except AudioError as error:
                    skips.append((clip_id, str(path), str(error)))
                    continue
                fitted = fit_length(raw, target_length).numpy()
                fbank[len(kept)] = fitted.astype(np.float16)
                if manifest.table.at[row, "split"] in STATISTICS_SPLITS:
                    real = fitted[:min(raw.shape[0], target_length)].astype(np.float64)   # padding would bias them
                    stat_sum += real.sum()
                    stat_sumsq += np.square(real).sum()
                    stat_count += real.size
                num_frames.append(clip_frames)
                kept.append(row)
            progress.values["skipped"] = len(skips)
            progress.close()
            fbank.resize(len(kept), axis=0)

            failures = len(skips) - short
            too_many_failures = len(rows) > short and failures / (len(rows) - short) > config.max_failure_fraction
            if not too_many_failures:
                _write_columns(shard, manifest, kept, num_frames)
                shard.attrs.update({
                    "front_end": front_end_json(front_end), "target_length": target_length, "num_mel_bins": num_bins,
                    "manifest_hash": manifest.content_hash(), "manifest_rows": len(manifest),
                    "sslam_version": __version__, "classes": json.dumps(manifest.classes),
                    "class_names": json.dumps(manifest.class_names), "num_classes": manifest.num_classes,
                    "shard_index": shard_index, "num_shards": num_shards, "num_skipped": len(skips),
                    "num_short": short, "min_samples": min_samples,
                    "stat_sum": stat_sum, "stat_sumsq": stat_sumsq, "stat_count": stat_count,
                })
                shard.flush()
                shard.attrs["complete"] = True     # last: a shard without it is unfinished, whatever else it holds
        _write_skips(skips_path, skips)
        if too_many_failures:
            raise CacheError(
                f"{failures} of {len(rows) - short} clips failed ({failures / (len(rows) - short):.1%} > "
                f"max_failure_fraction {config.max_failure_fraction}); see {skips_path}; {out_path} was left untouched"
            )
    return ShardReport(out_path, skips_path, len(rows), len(kept), len(skips), time.perf_counter() - started, short)


def _write_columns(shard: h5py.File, manifest: Manifest, kept: list[int], num_frames: list[int]) -> None:
    """Per-clip metadata of the cached rows, in fbank order."""
    string = h5py.string_dtype()
    table = manifest.table.iloc[kept]
    class_index = manifest.class_index()
    labels = np.zeros((len(kept), manifest.num_classes), dtype=np.uint8)
    for position, row in enumerate(kept):
        labels[position, [class_index[label] for label in manifest.labels_of(row)]] = 1
    create_checked_dataset(shard, "num_frames", np.asarray(num_frames, dtype=np.int32))
    create_checked_dataset(shard, "clip_id", table["clip_id"].to_numpy(dtype=object), dtype=string)
    create_checked_dataset(shard, "split", table["split"].to_numpy(dtype=object), dtype=string)
    create_checked_dataset(shard, "fold", table["fold"].to_numpy(np.int16))
    create_checked_dataset(shard, "labels", labels)
    extra_group = shard.create_group("extra")
    for column in _extra_columns(manifest):
        values = _extra_array(table[column])
        create_checked_dataset(extra_group, column, values, dtype=string if values.dtype == object else values.dtype)


# ---------------------------------------------------------------------------------------------
# `sslam cache build|verify`

def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="cache one shard of a manifest")
    build.add_argument("--manifest", required=True, help="canonical manifest.tsv")
    build.add_argument("--out", required=True, help="shard file to write, e.g. shard-000-of-004.h5")
    build.add_argument("--shard", type=cli_number(">= 0"), default=0, help="shard index i (takes rows i, i+N, ...)")
    build.add_argument("--num-shards", type=cli_number(">= 1"), default=1, help="number of shards N (default: %(default)s)")
    build.add_argument("--target-length", type=cli_number(f"[1, {MAX_TARGET_LENGTH}]"), required=True,
                       help="frames per clip after pad/truncate")
    build.add_argument("--config", help="study YAML (its front_end and cache sections)")
    build.add_argument("--min-samples", type=cli_number(">= 0"), default=OFFICIAL_MIN_SAMPLES,
                       help="drop clips with fewer samples at the front end's rate (default: %(default)s, the official "
                            "min_sample_size; 0 keeps all)")
    build.add_argument("--max-failure-fraction", type=cli_number("[0, 1]", float),
                       help="overrides cache.max_failure_fraction")
    verify = actions.add_parser("verify", help="check shards (every chunk's checksum, NaN/inf, manifest rows); "
                                "exit 1 when anything is wrong")
    verify.add_argument("shards", nargs="+", help="shard files")
    verify.add_argument("--manifest", help="the manifest the shards were built from")
    verify.add_argument("--config", help="study YAML: check the front-end parameters against it")
    verify.add_argument("--target-length", type=cli_number(">= 1"), help="expected target length")
    verify.add_argument("--quick", action="store_true",
                        help="read only the first and last chunk of each shard (catches truncation, not flipped bytes)")


def _configs(config_path: str | None) -> tuple[FrontEndConfig, CacheConfig]:
    data = load_yaml(config_path) if config_path else {}
    return (from_dict(FrontEndConfig, section(data, "front_end"), where="front_end"),
            from_dict(CacheConfig, section(data, "cache"), where="cache"))


def run(args: argparse.Namespace) -> int:
    front_end, cache_config = _configs(args.config)
    if args.action == "build":
        if args.max_failure_fraction is not None:
            cache_config = dataclasses.replace(cache_config, max_failure_fraction=args.max_failure_fraction)
        report = build_shard(args.manifest, args.out, args.shard, args.num_shards, args.target_length, front_end,
                             cache_config, args.min_samples)
        print(f"{report.path}: {report.written} clips cached, {report.skipped} skipped ({report.short} short; see "
              f"{report.skips_path}), "
              f"{report.seconds:.1f} s")
        return 0
    manifest = read_manifest(args.manifest) if args.manifest else None
    failed = False
    for shard in args.shards:
        problems = verify_shard(shard, manifest, front_end if args.config else None, args.target_length, args.quick)
        for problem in problems:
            print(f"{shard}: {problem}")
        print(f"{shard}: {'BAD' if problems else 'ok'}")
        failed |= bool(problems)
    for problem in verify_shard_set(args.shards) if len(args.shards) > 1 else []:
        print(problem)
        failed = True
    return 1 if failed else 0
