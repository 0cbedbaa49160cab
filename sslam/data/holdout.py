"""Held-out validation rows carved from a dataset's training split (`datasets.<name>.holdout`).

Most benchmarks of the paper have no validation split, and every official fine-tuning run selects its model on
the test set. A fixed share of the training clips is moved to split `valid` instead, so that a run can select
on rows it never trained on (`best_on_valid`, sslam.evaluation.selection). The rows are marked in the manifest
(`split` = valid and `held_out` = 1), so a table can say which clips a selection used, and the training rows
of every evaluation job exclude them (BenchmarkConfig.train_splits).

The choice is deterministic from the clip ids alone (no random state, no file order):

* label-stratified: each clip belongs to the group of its rarest label (counted over the training rows; ties
  go to the class listed first), which keeps rare classes represented in a multi-label set such as AudioSet
  without an iterative search; clips without labels form one group; with folds (ESC-50) a group never
  crosses a fold, so the validation rows of a cross-validation round come from its training folds;
* within a group the clips are ranked by the SHA-256 of their id and every 1/fraction-th clip of that ranking
  is held out, from a phase that the group's name fixes: a group of n clips gives floor or ceil of
  n × fraction, and the whole set very close to fraction × the training clips.
"""
from __future__ import annotations

import hashlib
import math
from collections import Counter

import pandas as pd

from sslam.data.manifest import Manifest
from sslam.runtime.errors import ConfigError

HOLDOUT_SPLIT = "valid"
SOURCE_SPLIT = "train"
HELD_OUT_COLUMN = "held_out"


def _unit(text: str) -> float:
    """A number in [0, 1) fixed by `text` (the first 8 bytes of its SHA-256)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def _rank_key(clip_id: str) -> bytes:
    return hashlib.sha256(clip_id.encode()).digest()


def _rarest_label(labels: list[str], counts: Counter, order: dict[str, int]) -> str:
    if not labels:
        return ""
    return min(labels, key=lambda label: (counts[label], order.get(label, len(order))))


def holdout_groups(manifest: Manifest, rows: pd.Index) -> pd.Series:
    """The stratification group of each of `rows`: its rarest label, within its fold when the dataset has folds."""
    labels = {row: manifest.labels_of(row) for row in rows}
    counts = Counter(label for row_labels in labels.values() for label in row_labels)
    order = {label: index for index, label in enumerate(manifest.classes)}
    folds = manifest.table.loc[rows, "fold"]
    return pd.Series([f"{fold}/{_rarest_label(labels[row], counts, order)}" if fold >= 0
                      else _rarest_label(labels[row], counts, order) for row, fold in zip(rows, folds)], index=rows)


def held_out_rows(manifest: Manifest, fraction: float) -> list[int]:
    """The training rows that `fraction` holds out (see the module docstring for the rule)."""
    rows = manifest.table.index[manifest.table["split"] == SOURCE_SPLIT]
    groups = holdout_groups(manifest, rows)
    chosen = []
    for group, members in groups.groupby(groups, sort=True):
        ranked = sorted(members.index, key=lambda row: _rank_key(manifest.table.at[row, "clip_id"]))
        phase = _unit("sslam-holdout/" + group)
        chosen += [row for rank, row in enumerate(ranked)
                   if math.floor((rank + 1) * fraction + phase) > math.floor(rank * fraction + phase)]
    return sorted(chosen)


def hold_out(manifest: Manifest, fraction: float, where: str = "dataset") -> Manifest:
    """`manifest` with `fraction` of its training rows moved to split `valid` and marked in `held_out`.

    A dataset that already has validation rows (Speech Commands' official list, URBAN-SED's `validate` folder)
    keeps them: asking for a hold-out there is a config error, not a second validation split."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"{where}.holdout must be in [0, 1), got {fraction}")
    table = manifest.table.copy()
    if fraction == 0.0:
        return manifest
    official = int((table["split"] == HOLDOUT_SPLIT).sum())
    if official:
        raise ConfigError(f"{where}.holdout: the dataset already has {official} `valid` rows (its own validation "
                          "split); set holdout: 0 to use them")
    rows = held_out_rows(manifest, fraction)
    table[HELD_OUT_COLUMN] = 0
    table.loc[rows, "split"] = HOLDOUT_SPLIT
    table.loc[rows, HELD_OUT_COLUMN] = 1
    return Manifest(table, list(manifest.classes), list(manifest.class_names), manifest.root)
