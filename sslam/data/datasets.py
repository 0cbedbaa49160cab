"""Torch datasets over the HDF5 cache (`FbankDataset`) and over raw audio (`OnTheFlyDataset`).

Both return the model input of spec §1: the raw log-mel padded/truncated to the target length,
then normalised as (x − mean) / (2·std); with `labelled=True` also the multi-hot target.
`FbankDataset` only reads a float16 block per item; `OnTheFlyDataset` decodes, resamples and runs
the Kaldi fbank per item as the official loader does (slow, but needs no cache).

h5py file handles must not cross a fork: a handle opened in the parent and used in DataLoader
workers corrupts reads. So the constructor reads the small per-clip columns and closes the files,
and every process opens its own handles the first time it reads an item.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from sslam.audio.front_end import DEFAULT_FRONT_END, FrontEndConfig, fit_length, load_raw_fbank, normalise
from sslam.data.config import study_shard_paths  # noqa: F401  (re-exported: the path rule lives there)
from sslam.data.shards import check_layout, check_shard_settings
from sslam.runtime.errors import CacheError
from sslam.runtime.io import missing_file

if TYPE_CHECKING:  # the manifest module loads pandas; only the audio dataset reads a manifest
    from sslam.data.manifest import Manifest


def _open_complete(path: Path) -> h5py.File:
    if not path.is_file():
        raise CacheError(missing_file(path, "cache shard"))
    try:
        shard = h5py.File(path, "r")
    except OSError as error:
        raise CacheError(f"{path}: not a readable HDF5 shard (truncated or corrupt?): {error}") from error
    if not shard.attrs.get("complete", False):
        shard.close()
        raise CacheError(f"{path}: shard is incomplete (no `complete` flag); rebuild it with `sslam cache build`")
    return shard


def normalisation_stats(shard_paths: Sequence[str | Path]) -> tuple[float, float]:
    """Dataset mean and std of the raw log-mel over the un-padded frames of the train/unlabeled
    rows of all shards, from the sums each shard stored at build time."""
    total = total_sq = count = 0.0
    for path in shard_paths:
        with _open_complete(Path(path)) as shard:
            try:
                total += float(shard.attrs["stat_sum"])
                total_sq += float(shard.attrs["stat_sumsq"])
                count += float(shard.attrs["stat_count"])
            except (KeyError, TypeError, ValueError) as error:
                raise CacheError(f"{path}: no normalisation sums (stat_sum, stat_sumsq, stat_count) in the shard: "
                                 f"{error}; rebuild it or give norm_mean and norm_std") from error
    if count == 0:
        raise CacheError(f"no train/unlabeled frames in {len(shard_paths)} shard(s): cannot compute mean/std")
    mean = total / count
    return mean, math.sqrt(max(total_sq / count - mean * mean, 0.0))


class FbankDataset(Dataset):
    """Items of the cached shards, optionally filtered by split and fold, in (shard, row) order.

    Given the job's `front_end` and `target_length`, shards built with other settings are refused before
    anything is read (CacheError naming the attribute: a changed frame shift, another target length...).
    """

    def __init__(
        self,
        shard_paths: Sequence[str | Path],
        norm_mean: float | None,
        norm_std: float | None,
        labelled: bool,
        splits: Sequence[str] | None = None,
        folds: Sequence[int] | None = None,
        exclude_folds: Sequence[int] | None = None,
        front_end: FrontEndConfig | None = None,
        target_length: int | None = None,
    ) -> None:
        if isinstance(shard_paths, (str, Path)):
            shard_paths = [shard_paths]
        if not shard_paths:
            raise CacheError("FbankDataset needs at least one shard")
        self.shard_paths = [Path(path) for path in shard_paths]
        if front_end is not None or target_length is not None:
            check_shard_settings(self.shard_paths, front_end, target_length)
        if norm_mean is None or norm_std is None:
            norm_mean, norm_std = normalisation_stats(self.shard_paths)
        if norm_std <= 0:
            raise CacheError(f"norm_std must be positive, got {norm_std}")
        self.norm_mean, self.norm_std, self.labelled = float(norm_mean), float(norm_std), labelled

        index_parts, columns = [], {}
        for shard_number, path in enumerate(self.shard_paths):
            with _open_complete(path) as shard:
                # Declared sizes are checked against what the file stores before anything is allocated per row.
                num_rows = check_layout(shard, path)
                self._check_compatible(path, shard, first=shard_number == 0)
                keep = np.ones(num_rows, dtype=bool)
                split = shard["split"].asstr()[()]
                fold = shard["fold"][()]
                if splits is not None:
                    keep &= np.isin(split, list(splits))
                if folds is not None:
                    keep &= np.isin(fold, list(folds))
                if exclude_folds is not None:
                    keep &= ~np.isin(fold, list(exclude_folds))
                rows = np.flatnonzero(keep)
                index_parts.append(np.stack([np.full(len(rows), shard_number), rows], axis=1))
                shard_columns = {"clip_id": shard["clip_id"].asstr()[()], "split": split, "fold": fold,
                                 "num_frames": shard["num_frames"][()], "labels": shard["labels"][()]}
                for name, dataset in shard["extra"].items():
                    shard_columns[name] = dataset.asstr()[()] if h5py.check_string_dtype(dataset.dtype) else dataset[()]
                for name, values in shard_columns.items():
                    columns.setdefault(name, []).append(values[rows])
        self._index = np.concatenate(index_parts).astype(np.int64)      # item -> (shard number, row)
        self._columns = {name: np.concatenate(parts) for name, parts in columns.items()}
        self._handles: dict[int, h5py.File] = {}
        self._fbanks: dict[int, h5py.Dataset] = {}
        self._owner_pid = os.getpid()

    def _check_compatible(self, path: Path, shard: h5py.File, first: bool) -> None:
        """All shards of one dataset must agree on shape, classes and front end."""
        signature = (tuple(shard["fbank"].shape[1:]), shard.attrs.get("classes", "[]"), shard.attrs.get("front_end"))
        if first:
            self._signature = signature
            self.target_length, self.num_mel_bins = signature[0]
            self.classes: list[str] = json.loads(signature[1])
        elif signature != self._signature:
            raise CacheError(f"{path} does not match {self.shard_paths[0]} (shape, classes or front end differ)")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def clip_ids(self) -> list[str]:
        return list(self._columns["clip_id"])

    def column(self, name: str) -> np.ndarray:
        """Per-item values of a cached column: clip_id, split, fold, num_frames, labels or an extra (e.g. polyphony)."""
        if name not in self._columns:
            raise KeyError(f"no column {name!r} in the cache; available: {sorted(self._columns)}")
        return self._columns[name]

    def __len__(self) -> int:
        return len(self._index)

    def _fbank(self, shard_number: int) -> h5py.Dataset:
        """This process's handle on a shard's `fbank` (looked up once: h5py name lookups are slow)."""
        if self._owner_pid != os.getpid():      # we are a freshly forked worker: never reuse the parent's handles
            self._handles, self._fbanks, self._owner_pid = {}, {}, os.getpid()
        if shard_number not in self._fbanks:
            self._handles[shard_number] = h5py.File(self.shard_paths[shard_number], "r")
            self._fbanks[shard_number] = self._handles[shard_number]["fbank"]
        return self._fbanks[shard_number]

    def __getitem__(self, item: int):
        shard_number, row = self._index[item]
        try:
            raw = torch.from_numpy(self._fbank(int(shard_number))[row])
        except OSError as error:  # Fletcher-32 mismatch or a damaged chunk
            raise CacheError(f"{self.shard_paths[shard_number]}: clip {self._columns['clip_id'][item]!r} (row {row}) is "
                             f"unreadable (checksum failure: flipped bytes?); run `sslam cache verify`: {error}") from error
        fbank = normalise(raw.float(), self.norm_mean, self.norm_std)
        if not self.labelled:
            return fbank
        return fbank, torch.from_numpy(self._columns["labels"][item].astype(np.float32))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"], state["_fbanks"] = {}, {}   # handles cannot be pickled (spawned workers open their own)
        return state

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles, self._fbanks = {}, {}


class OnTheFlyDataset(Dataset):
    """Decode + fbank per item through sslam.audio.front_end, the official loader's way. Items as FbankDataset's."""

    def __init__(self, manifest: Manifest | str | Path, target_length: int, mean: float, std: float,
                 labelled: bool = False, front_end: FrontEndConfig = DEFAULT_FRONT_END) -> None:
        from sslam.data.manifest import Manifest, read_manifest

        self.manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
        self.target_length, self.mean, self.std = target_length, mean, std
        self.labelled, self.front_end = labelled, front_end
        self.classes = list(self.manifest.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, item: int):
        raw = load_raw_fbank(self.manifest.audio_path(item), self.front_end, max_frames=self.target_length)
        fbank = normalise(fit_length(raw, self.target_length), self.mean, self.std).float()
        if not self.labelled:
            return fbank
        target = torch.zeros(self.num_classes)
        target[self.manifest.label_indices(item)] = 1.0
        return fbank, target
