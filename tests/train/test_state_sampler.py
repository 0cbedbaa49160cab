"""Atomic snapshots with fallback to the previous one, weights_only reading (a planted object is refused),
random-state capture, the resumable data order."""
import itertools
import pickle
import random

import numpy as np
import pytest
import torch

from sslam.runtime.snapshots import SnapshotError, job_mismatch
from sslam.train.distributed import EpochBatchSampler
from sslam.train.state import (capture_rng_state, load_training_state, restore_rng_state, save_training_state,
                               state_paths)


def _snapshot(step):
    return {"format": "sslam", "version": 1, "step": step, "optimizer": {}, "weights": torch.full((3,), step)}


def test_save_keeps_previous_and_load_returns_newest(tmp_path):
    assert load_training_state(tmp_path) is None
    save_training_state(tmp_path, _snapshot(1))
    save_training_state(tmp_path, _snapshot(2))
    last, previous = state_paths(tmp_path)
    assert torch.load(previous, weights_only=False)["step"] == 1
    assert load_training_state(tmp_path)["step"] == 2
    assert not [p for p in last.parent.iterdir() if p.name.endswith(".tmp")]  # no temporary file left behind


def test_truncated_last_falls_back_to_previous(tmp_path, caplog):
    save_training_state(tmp_path, _snapshot(1))
    save_training_state(tmp_path, _snapshot(2))
    last, previous = state_paths(tmp_path)
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # half-written file
    snapshot = load_training_state(tmp_path)
    assert snapshot["step"] == 1 and torch.equal(snapshot["weights"], torch.full((3,), 1))
    assert "unreadable" in caplog.text and "previous snapshot" in caplog.text
    previous.write_bytes(b"garbage")
    with pytest.raises(SnapshotError, match="no usable snapshot"):
        load_training_state(tmp_path)


def test_foreign_file_is_rejected(tmp_path):
    last, _ = state_paths(tmp_path)
    last.parent.mkdir(parents=True)
    torch.save({"model": {}}, last)
    with pytest.raises(SnapshotError, match="not an sslam training snapshot"):
        load_training_state(tmp_path)


CALLS = []


def record_call(*args):
    CALLS.append(args)


class RunsCode:
    """What a planted snapshot would carry: unpickling it calls a function (here a harmless recorder)."""

    def __reduce__(self):
        return (record_call, ("planted",))


def test_planted_code_running_snapshot_is_refused_naming_file_and_object(tmp_path):
    save_training_state(tmp_path, _snapshot(1))
    last, _ = state_paths(tmp_path)
    torch.save({**_snapshot(2), "payload": RunsCode()}, last)
    with pytest.raises(SnapshotError) as refused:
        load_training_state(tmp_path)
    message = str(refused.value)
    assert str(last) in message and "record_call" in message and "code-running" in message
    assert "\n" not in message and not CALLS  # one line; nothing ran, and no silent fallback to last.prev.pt
    last.write_bytes(pickle.dumps({"format": "sslam", "payload": RunsCode()}))  # a bare pickle, not torch's zip
    with pytest.raises(SnapshotError, match="code-running object .*record_call"):
        load_training_state(tmp_path)
    assert not CALLS


def test_snapshots_hold_only_weights_only_data(tmp_path):
    # Every random stream, numpy's and python's included, survives torch.load(weights_only=True).
    state = capture_rng_state({"extra": torch.Generator().manual_seed(3).get_state()})
    save_training_state(tmp_path, {**_snapshot(1), "rng": [state]})
    loaded = torch.load(state_paths(tmp_path)[0], weights_only=True)["rng"][0]
    expected = (random.random(), np.random.rand(), np.random.randn(), torch.rand(2))
    restore_rng_state(loaded)
    again = (random.random(), np.random.rand(), np.random.randn(), torch.rand(2))
    assert expected[:3] == again[:3] and torch.equal(expected[3], again[3])


def test_job_mismatch_names_what_changed():
    job = {"fingerprint": "abc", "settings": {"pretrain": {"steps": 10, "betas": (0.9, 0.95)}, "stage": 1}}
    assert job_mismatch(job, {"fingerprint": "abc", "settings": {"pretrain": {"steps": 10, "betas": [0.9, 0.95]},
                                                                 "stage": 1}}) is None
    assert "fingerprint abc -> def" in job_mismatch(job, {**job, "fingerprint": "def"})
    changed = job_mismatch(job, {"fingerprint": "abc", "settings": {"pretrain": {"steps": 12, "betas": (0.9, 0.95)},
                                                                    "stage": 1}})
    assert "pretrain.steps 10 -> 12" in changed
    assert "older sslam" in job_mismatch(None, job)


def test_rng_state_round_trip():
    state = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(2))
    restore_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(2))
    assert expected[:2] == again[:2] and torch.equal(expected[2], again[2])


def test_sampler_ranks_are_disjoint_full_batches_and_cover_an_epoch():
    num_items, batch, world = 23, 2, 3
    per_rank = [list(itertools.islice(iter(EpochBatchSampler(num_items, batch, seed=5, rank=r, world_size=world)),
                                      3)) for r in range(world)]
    assert all(len(b) == batch for batches in per_rank for b in batches)
    seen = [i for batches in per_rank for b in batches for i in b]
    assert len(seen) == len(set(seen)) == world * 3 * batch  # one epoch: 3 batches per rank, no overlap


def test_sampler_resumes_the_same_stream_and_reshuffles_each_epoch():
    sampler = EpochBatchSampler(10, 3, seed=1)
    assert sampler.batches_per_epoch == 3
    full = list(itertools.islice(iter(sampler), 8))
    resumed = list(itertools.islice(iter(EpochBatchSampler(10, 3, seed=1, start_batch=4)), 4))
    assert resumed == full[4:]
    assert full[:3] != full[3:6]  # a new permutation each epoch
    with pytest.raises(ValueError, match="cannot fill one batch"):
        EpochBatchSampler(3, 2, seed=1, world_size=2)
