"""Held-out validation rows (sslam.data.holdout): deterministic from clip ids, label-stratified, recorded in the
manifest, folds kept apart; checked on the real AS-20K training list (shared/data) and on small tables."""
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from sslam.data.adapters.fairseq import build_fairseq
from sslam.data.holdout import HELD_OUT_COLUMN, hold_out
from sslam.data.manifest import Manifest
from sslam.runtime.errors import ConfigError

AS20K = Path("/work/shared/data/sslam_manifests/as20k")


def small(rows, classes=("a", "b", "c")):
    table = pd.DataFrame(rows, columns=["clip_id", "path", "split", "fold", "labels"])
    return Manifest(table, list(classes))


@pytest.mark.skipif(not (AS20K / "train.tsv").is_file(), reason="shared AS-20K manifests not present")
def test_as20k_holdout_is_five_percent_covers_every_class_and_ignores_row_order():
    manifest = build_fairseq(AS20K, splits=["train"])
    held = hold_out(manifest, 0.05)
    valid = held.table[held.table.split == "valid"]
    assert abs(len(valid) / len(manifest) - 0.05) < 0.002
    assert (valid[HELD_OUT_COLUMN] == 1).all() and (held.table[held.table.split == "train"][HELD_OUT_COLUMN] == 0).all()
    positives = Counter(label for row in valid.index for label in held.labels_of(row))
    assert len(positives) == manifest.num_classes                  # label-stratified: every class is validated
    shuffled = Manifest(manifest.table.sample(frac=1.0, random_state=0).reset_index(drop=True), manifest.classes)
    again = hold_out(shuffled, 0.05).table
    assert set(again[again.split == "valid"].clip_id) == set(valid.clip_id)


def test_folds_get_their_own_validation_rows_and_other_splits_are_untouched():
    rows = [(f"{c}{f}{i}", "x.wav", "train", f, c) for c in "abc" for f in (1, 2) for i in range(8)]
    rows.append(("e0", "x.wav", "test", -1, "a"))
    held = hold_out(small(rows), 0.125).table
    valid = held[held.split == "valid"]
    assert valid.groupby(["fold", "labels"]).size().tolist() == [1] * 6   # one clip per class per fold
    assert held.loc[held.clip_id == "e0", "split"].item() == "test"


def test_no_holdout_and_bad_requests():
    manifest = small([("a1", "x.wav", "train", -1, "a"), ("a2", "x.wav", "valid", -1, "a")])
    assert hold_out(manifest, 0.0) is manifest
    with pytest.raises(ConfigError, match="already has 1 `valid` rows"):
        hold_out(manifest, 0.1, "datasets.ks2")
    with pytest.raises(ConfigError, match="holdout must be in"):
        hold_out(manifest, 1.0)


@pytest.mark.skipif(not (AS20K / "train.tsv").is_file(), reason="shared AS-20K manifests not present")
def test_every_adapter_gets_the_holdout_of_its_dataset_config():
    from sslam.data.commands import build_manifest
    from sslam.data.config import DatasetConfig

    config = DatasetConfig(adapter="fairseq", root=str(AS20K), options={"splits": ["train", "eval"]}, holdout=0.05)
    table = build_manifest(config).table
    assert (table.split == "valid").sum() == hold_out(build_fairseq(AS20K, splits=["train"]), 0.05).table.held_out.sum()
    assert (table.split == "eval").sum() > 0 and not table[table.split == "eval"].held_out.any()
