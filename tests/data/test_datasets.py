"""FbankDataset / normalisation_stats over cache shards, DataLoader workers, and OnTheFlyDataset."""
from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sslam.audio.front_end import fit_length, load_raw_fbank
from sslam.data.cache import build_shard
from sslam.data.datasets import FbankDataset, OnTheFlyDataset, normalisation_stats
from sslam.data.manifest import read_manifest
from sslam.runtime.errors import CacheError

TARGET = 120   # longer than the tiny corpus's 98-frame clips: items end in padding


@pytest.fixture(scope="module")
def shards(tiny_corpus, tmp_path_factory):
    """{set name: [two shard paths]} for the mono and polyphony sets."""
    folder = tmp_path_factory.mktemp("cache")
    return {name: [build_shard(tiny_corpus[name], folder / f"{name}-{i}.h5", i, 2, TARGET).path for i in range(2)]
            for name in ("mono", "polyphony")}


def test_items_are_the_normalised_cached_fbank_with_targets(tiny_corpus, shards):
    manifest = read_manifest(tiny_corpus["mono"])
    dataset = FbankDataset(shards["mono"], -5.0, 3.0, labelled=True)
    assert len(dataset) == len(manifest) and dataset.num_classes == manifest.num_classes == len(dataset.classes)
    assert sorted(dataset.clip_ids) == sorted(manifest.table["clip_id"])
    assert dataset.clip_ids[:2] == list(manifest.table["clip_id"].iloc[[0, 2]])    # shard 0 first, in row order
    fbank, target = dataset[1]
    assert fbank.dtype == torch.float32 and fbank.shape == (TARGET, 128)
    row = manifest.table.index[manifest.table["clip_id"] == dataset.clip_ids[1]][0]
    expected = (fit_length(load_raw_fbank(manifest.audio_path(row)), TARGET) + 5.0) / 6.0
    torch.testing.assert_close(fbank, expected, atol=0.01, rtol=1e-3)
    assert torch.all(fbank[98:] == 5.0 / 6.0)              # the raw zero padding after normalisation
    assert target.dtype == torch.float32 and target.shape == (dataset.num_classes,)
    assert torch.nonzero(target).flatten().tolist() == manifest.label_indices(row)
    unlabelled = FbankDataset(shards["mono"], -5.0, 3.0, labelled=False)
    torch.testing.assert_close(unlabelled[1], fbank)


def test_filters_by_split_and_fold(shards):
    every = FbankDataset(shards["mono"], 0.0, 1.0, labelled=True)
    folds = every.column("fold")
    held_out = FbankDataset(shards["mono"], 0.0, 1.0, labelled=True, folds=[2])
    rest = FbankDataset(shards["mono"], 0.0, 1.0, labelled=True, exclude_folds=[2])
    assert len(held_out) == (folds == 2).sum() > 0 and set(held_out.column("fold")) == {2}
    assert len(rest) + len(held_out) == len(every) and 2 not in set(rest.column("fold"))
    assert len(FbankDataset(shards["mono"], 0.0, 1.0, labelled=True, splits=["test"])) == 0
    polyphony = FbankDataset(shards["polyphony"], 0.0, 1.0, labelled=True, splits=["test"])
    np.testing.assert_array_equal(polyphony.column("polyphony"), polyphony.column("labels").sum(1))
    with pytest.raises(KeyError, match="polyphony"):
        every.column("polyphony")


def test_normalisation_stats_match_the_train_audio(tiny_corpus, shards):
    manifest = read_manifest(tiny_corpus["mono"])
    frames = torch.cat([load_raw_fbank(manifest.audio_path(row)).double() for row in range(len(manifest))])
    mean, std = normalisation_stats(shards["mono"])
    assert np.isclose(mean, frames.mean().item(), rtol=1e-6) and np.isclose(std, frames.std().item(), rtol=1e-3)
    computed = FbankDataset(shards["mono"], None, None, labelled=False)
    assert (computed.norm_mean, computed.norm_std) == (mean, std)
    with pytest.raises(CacheError, match="train/unlabeled"):
        normalisation_stats(shards["polyphony"])           # test clips never feed the statistics


def test_dataloader_workers_read_the_same_items(shards):
    dataset = FbankDataset(shards["mono"] + shards["polyphony"], -5.0, 3.0, labelled=False)
    dataset[0]                                             # the parent now holds a handle that workers must not reuse
    serial = torch.cat(list(DataLoader(dataset, batch_size=7)))
    parallel = torch.cat(list(DataLoader(dataset, batch_size=7, num_workers=2)))
    assert torch.equal(serial, parallel) and len(serial) == len(dataset)
    clone = pickle.loads(pickle.dumps(dataset))            # spawn-style workers pickle the dataset
    assert torch.equal(clone[3], dataset[3])
    dataset.close()


def test_on_the_fly_dataset_matches_the_cache(tiny_corpus, shards):
    manifest = read_manifest(tiny_corpus["polyphony"])
    on_the_fly = OnTheFlyDataset(manifest, TARGET, -5.0, 3.0, labelled=True)
    cached = FbankDataset(shards["polyphony"], -5.0, 3.0, labelled=True)
    assert len(on_the_fly) == len(cached) and on_the_fly.num_classes == cached.num_classes
    item = cached.clip_ids.index(manifest.table.at[3, "clip_id"])
    (live, live_target), (stored, stored_target) = on_the_fly[3], cached[item]
    torch.testing.assert_close(live, stored, atol=0.01, rtol=1e-3)
    assert torch.equal(live_target, stored_target)
    assert OnTheFlyDataset(tiny_corpus["pretrain"], TARGET, 0.0, 1.0)[0].shape == (TARGET, 128)


def test_incomplete_missing_or_mismatched_shards_are_refused(tiny_corpus, shards, tmp_path):
    with pytest.raises(CacheError, match="not found"):
        FbankDataset([tmp_path / "none.h5"], 0.0, 1.0, labelled=False)
    unfinished = tmp_path / "unfinished.h5"
    unfinished.write_bytes(shards["mono"][0].read_bytes())
    with h5py.File(unfinished, "r+") as shard:
        del shard.attrs["complete"]
    with pytest.raises(CacheError, match="incomplete"):
        FbankDataset([unfinished], 0.0, 1.0, labelled=False)
    shorter = build_shard(tiny_corpus["mono"], tmp_path / "short.h5", 0, 2, TARGET // 2).path
    with pytest.raises(CacheError, match="does not match"):
        FbankDataset([shards["mono"][0], shorter], 0.0, 1.0, labelled=False)
    with pytest.raises(CacheError, match="at least one"):
        FbankDataset([], 0.0, 1.0, labelled=False)
