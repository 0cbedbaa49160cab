"""Protocol planning: folds never leak between training and test, split rounds, leak detection."""
import pytest

from sslam.data.datasets import FbankDataset
from sslam.runtime.errors import ConfigError
from sslam.evaluation.config import BenchmarkConfig
from sslam.evaluation.protocols import DataLeakError, check_no_leak, plan_rounds


def test_fold_rounds_on_the_cache_never_share_a_clip_and_cover_every_clip_once(cache_dir):
    shards = [cache_dir / "cache" / "mono" / "shard-000-of-001.h5"]
    everything = FbankDataset(shards, -5.0, 4.0, labelled=True)
    folds_in_data = sorted(set(everything.column("fold").tolist()))
    assert len(folds_in_data) >= 3
    benchmark = BenchmarkConfig(dataset="mono", task="multiclass", metric="accuracy", protocol="folds")
    rounds = plan_rounds(benchmark, folds_in_data)
    assert [r.fold for r in rounds] == folds_in_data
    tested = []
    for round_ in rounds:
        train = FbankDataset(shards, -5.0, 4.0, labelled=True, splits=round_.train.splits, folds=round_.train.folds)
        test = FbankDataset(shards, -5.0, 4.0, labelled=True, splits=round_.test.splits, folds=round_.test.folds)
        assert set(test.column("fold").tolist()) == {round_.fold}
        assert round_.fold not in set(train.column("fold").tolist())
        assert not set(train.clip_ids) & set(test.clip_ids)
        assert len(train) + len(test) == len(everything)
        check_no_leak(train.clip_ids, test.clip_ids, round_.name)
        tested += test.clip_ids
    assert sorted(tested) == sorted(everything.clip_ids)


def test_listed_folds_restrict_training_to_those_folds():
    benchmark = BenchmarkConfig(dataset="esc", task="multiclass", metric="accuracy", protocol="folds", folds=[1, 2, 3])
    rounds = plan_rounds(benchmark, [1, 2, 3, 4, 5])
    assert [(r.train.folds, r.test.folds) for r in rounds] == [((2, 3), (1,)), ((1, 3), (2,)), ((1, 2), (3,))]
    with pytest.raises(ConfigError, match="no cached clip"):
        plan_rounds(BenchmarkConfig(dataset="esc", task="multiclass", metric="accuracy", protocol="folds",
                                    folds=[1, 9]), [1, 2])
    with pytest.raises(ConfigError, match="at least 2 folds"):
        plan_rounds(BenchmarkConfig(dataset="esc", task="multiclass", metric="accuracy", protocol="folds"), [-1])


def test_split_round_uses_valid_only_when_it_exists_and_may_train_elsewhere():
    benchmark = BenchmarkConfig(dataset="polyphony", train_dataset="poly", eval_split="test")
    (round_,) = plan_rounds(benchmark, splits_in_training_data=["train", "test"])
    assert round_.train.dataset == "poly" and round_.train.splits == ("train",)
    assert round_.test.dataset == "polyphony" and round_.test.splits == ("test",)
    assert round_.valid is None
    (with_valid,) = plan_rounds(benchmark, splits_in_training_data=["train", "valid"])
    assert with_valid.valid.splits == ("valid",)


def test_check_no_leak_names_the_shared_clips():
    check_no_leak(["a", "b"], ["c"], "r")
    with pytest.raises(DataLeakError, match="1 clip"):
        check_no_leak(["a", "b"], ["b", "c"], "r")
