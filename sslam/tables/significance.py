"""Is a difference between two models real? A paired bootstrap over test clips and seeds.

For two models A and B evaluated on the same benchmark and regime, the statistic is the table's own
difference: the mean over seeds of metric(A, seed) − metric(B, seed), each metric recomputed from the
per-clip predictions (predictions.npz beside every metrics.json) exactly as the evaluation computed
it: mAP over the classes that have a positive clip (scikit-learn's average precision, ties included),
or top-1 accuracy; the mean over cross-validation folds for fold benchmarks, the pooled clips of a
bin for polyphony bins.

One replicate resamples both sources of variation:

* **clips**: the test clips are drawn with replacement inside each stratum (fold × polyphony bin, so
  every fold and bin keeps its size). The same draw is used for every model and every seed of the
  replicate: the clips are resampled *jointly*, so a clip that is hard for every model is hard for
  both sides of the difference and cancels, as it does in the observed difference.
* **seeds**: the seeds both models share are drawn with replacement. Seeds pair by number (seed s of
  A with seed s of B): an evaluation seed fixes the head's initialisation and the batch order for
  every model alike. Seeds that only one model has are left out of the comparison.

`replicates` replicates (default 1000) give the 95 % percentile interval; a difference is
significant when the interval excludes 0. With a single shared seed the interval covers the test
clips only. Every random draw comes from a generator seeded by `seed` and the benchmark, regime and
seed set, so the tables are bit-identical on a re-run and do not depend on the order of the inputs.

Cost: AP needs, per class, the weighted counts of clips and of positives above each positive's
score. The clips above each distinct positive score form one row of a sparse (groups × clips)
matrix; one sparse × dense product with the (clips × replicates) draw counts gives those counts for
all classes and replicates at once, in blocks of 64 replicates that stay in cache. That is
O(clips × classes × replicates) multiply-adds, computed once per model and seed (every comparison
reuses it); see benchmarks/tables_significance.py for the measured time at AudioSet size.
"""
from __future__ import annotations

import hashlib
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sslam.runtime.errors import ConfigError, SslamError
from sslam.tables.models import STAGE1

OVERALL = "overall"      # the column of a run's headline number (the bins use their label)
MAIN_ROUND = "main"      # the `round` of a train/test benchmark's predictions
BLOCK = 64               # replicates per sparse product
TOLERANCE = 5e-4         # |recomputed − metrics.json| (fraction) above which the predictions are not trusted


@dataclass
class SignificanceConfig:
    """YAML `study.tables.significance`."""

    enabled: bool = True
    replicates: int = 1000        # bootstrap replicates per comparison
    level: float = 0.95           # coverage of the interval
    seed: int = 0                 # seeds the bootstrap draws (the tables are deterministic)
    reference: str = STAGE1       # "Δ vs <reference>" table and the cell markers
    pairs: list[list[str]] = field(default_factory=lambda: [["SSLAM", "MB-UA"]])  # extra [model, reference]
    marker: str = "†"             # appended to a cell that differs significantly from the reference

    def __post_init__(self) -> None:
        if not 10 <= self.replicates <= 100_000:
            raise ConfigError(f"study.tables.significance.replicates must be in [10, 100000], got {self.replicates}")
        if not 0.5 <= self.level < 1.0:
            raise ConfigError(f"study.tables.significance.level must be in [0.5, 1), got {self.level}")
        if self.seed < 0:
            raise ConfigError(f"study.tables.significance.seed must be >= 0, got {self.seed}")
        for i, pair in enumerate(self.pairs):
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ConfigError(f"study.tables.significance.pairs[{i}] must be [model, reference] (two "
                                  f"different model ids), got {pair}")
        if not self.marker or len(self.marker) > 3:
            raise ConfigError(f"study.tables.significance.marker must be 1-3 characters, got {self.marker!r}")


class PredictionsError(SslamError):
    """A predictions.npz is missing, unreadable or inconsistent (its cells get no significance)."""


@dataclass(frozen=True)
class Predictions:
    """One evaluation job's per-clip predictions (see docs/tables.md for the file format)."""

    clip_id: np.ndarray    # (N,) str
    rounds: np.ndarray     # (N,) str: the fold of each clip for cross-validation, "main" otherwise
    targets: np.ndarray    # (N, C) float32
    scores: np.ndarray     # (N, C) float32
    bins: np.ndarray | None  # (N,) str (the per_bin labels of metrics.json), or None

    def __len__(self) -> int:
        return int(self.clip_id.shape[0])

    def take(self, order: np.ndarray) -> Predictions:
        return Predictions(self.clip_id[order], self.rounds[order], self.targets[order], self.scores[order],
                           None if self.bins is None else self.bins[order])


def _labels(array: np.ndarray) -> np.ndarray:
    """Clip ids, rounds and bins as str (bins may be stored as integers, text as bytes)."""
    if array.dtype.kind == "U":
        return array
    if array.dtype.kind == "S":
        return np.char.decode(array, "utf-8")
    return np.asarray([str(v) for v in array.tolist()], dtype=str)


def _arrays(path: Path, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise PredictionsError(f"{path.name} not found")
    if not zipfile.is_zipfile(path):
        raise PredictionsError(f"{path.name} unreadable (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files if names is None or name in names}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
        raise PredictionsError(f"{path.name} unreadable ({str(error).splitlines()[0]})") from error


def clip_set(path: str | Path) -> str:
    """A fingerprint of the (round, clip id) pairs of a predictions.npz, read without its scores."""
    arrays = _arrays(Path(path), ("clip_id", "round"))
    if "clip_id" not in arrays:
        raise PredictionsError(f"{Path(path).name} lacks clip_id")
    clip_id = _labels(arrays["clip_id"])
    rounds = _labels(arrays["round"]) if "round" in arrays else np.full(clip_id.shape, MAIN_ROUND)
    if rounds.shape != clip_id.shape:
        raise PredictionsError(f"{Path(path).name}: `round` and `clip_id` differ in length")
    order = np.lexsort((clip_id, rounds))
    digest = hashlib.sha256()
    for column in (rounds[order], clip_id[order]):
        digest.update("\x1f".join(column.tolist()).encode())
        digest.update(b"\x1e")
    return f"{clip_id.shape[0]}:{digest.hexdigest()}"


def load_predictions(path: str | Path) -> Predictions:
    """Read and check a predictions.npz; PredictionsError (one line) when it cannot be used."""
    path = Path(path)
    arrays = _arrays(path)
    missing = [name for name in ("clip_id", "targets", "scores") if name not in arrays]
    if missing:
        raise PredictionsError(f"{path.name} lacks {', '.join(missing)}")
    targets = np.asarray(arrays["targets"], dtype=np.float32)
    scores = np.asarray(arrays["scores"], dtype=np.float32)
    clips = targets.shape[0] if targets.ndim == 2 else -1
    if targets.ndim != 2 or scores.shape != targets.shape or clips == 0:
        raise PredictionsError(f"{path.name}: targets {targets.shape} and scores {scores.shape} must be the "
                               f"same non-empty (clips, classes)")
    if not (np.isfinite(scores).all() and np.isfinite(targets).all()):
        raise PredictionsError(f"{path.name}: non-finite scores or targets")
    columns = {"clip_id": arrays["clip_id"], "round": arrays.get("round", np.full(clips, MAIN_ROUND))}
    if "bin" in arrays:
        columns["bin"] = arrays["bin"]
    for name, column in columns.items():
        if column.shape != (clips,):
            raise PredictionsError(f"{path.name}: `{name}` has shape {column.shape}, expected ({clips},)")
    bins = _labels(columns["bin"]) if "bin" in columns else None
    return Predictions(_labels(columns["clip_id"]), _labels(columns["round"]), targets, scores, bins)


# --- the metrics under resampling weights ------------------------------------------------------------


@dataclass(frozen=True)
class _Ranking:
    """For every class with a positive: one group per distinct positive score (descending); group g
    holds the clips whose score lies in [u_g, u_{g-1}). Weighted AP needs only the group sums."""

    clips: Any        # scipy.sparse.csr_matrix (groups, N): every clip of each group
    positives: Any    # scipy.sparse.csr_matrix (groups, N): the positive clips of each group
    starts: np.ndarray            # (classes,) first group of each class
    sizes: np.ndarray             # (classes,) groups per class


def _ranking(positives: np.ndarray, scores: np.ndarray) -> _Ranking | None:
    from scipy import sparse  # here: the workflow imports this package's config at parse time

    keep = positives.any(axis=0)
    if not keep.any():
        return None
    # One row per class (contiguous), clips by descending score.
    positives = np.ascontiguousarray(positives[:, keep].T)
    negated = np.ascontiguousarray(-scores[:, keep].T)
    order = np.argsort(negated, axis=1)
    ranked_score = np.take_along_axis(negated, order, axis=1)
    ranked_positive = np.take_along_axis(positives, order, axis=1)
    classes, clips = positives.shape
    # Tied scores form one block; a block holding a positive is one of scikit-learn's thresholds.
    new_block = np.ones_like(ranked_positive)
    new_block[:, 1:] = ranked_score[:, 1:] != ranked_score[:, :-1]
    index = np.int32 if positives.size < 2**31 else np.int64
    block = np.cumsum(new_block, axis=1, dtype=index) - 1
    blocks_per_class = block[:, -1] + 1
    block += np.concatenate([[0], np.cumsum(blocks_per_class)[:-1]])[:, None]   # global block ids
    has_positive = np.bincount(block[ranked_positive], minlength=int(blocks_per_class.sum())) > 0
    before = np.cumsum(has_positive, dtype=index) - has_positive      # positive blocks before each block, all classes
    # A clip's group: the number of positive blocks (distinct positive scores) above its own block.
    group = before[block] - before[block[:, :1]]
    sizes = has_positive.reshape(-1)[block[:, -1:]].ravel() + group[:, -1]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(index)
    inside = group < sizes[:, None]                     # clips below the lowest positive never count
    # Class-major and ascending within a class: already in CSR order.
    rows = group[inside] + np.repeat(starts, inside.sum(axis=1))
    columns = order[inside].astype(index)
    is_positive = ranked_positive[inside]
    total = int(sizes.sum())

    def csr(rows: np.ndarray, columns: np.ndarray):
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=total))]).astype(index)
        return sparse.csr_matrix((np.ones(rows.shape[0], np.int16), columns, indptr), shape=(total, clips))

    return _Ranking(csr(rows, columns), csr(rows[is_positive], columns[is_positive]), starts, sizes)


def _segment_cumsum(values: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    running = np.cumsum(values, axis=0, dtype=np.float64)
    before = np.zeros((len(starts), values.shape[1]))
    before[1:] = running[starts[1:] - 1]
    return running - np.repeat(before, sizes, axis=0)


def weighted_map(positives: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """mAP over the classes with a positive (of positive weight), for every column of `weights`.

    positives (N, C) bool, scores (N, C), weights (N, R) non-negative clip counts; returns (R,) float64
    (NaN where no class has a positive). weights = ones reproduces evaluation.metrics' mAP; integer
    counts give the mAP of the data set with each clip repeated that often.
    """
    ranking = _ranking(np.asarray(positives, dtype=bool), np.asarray(scores, dtype=np.float32))
    return _ranked_map(ranking, np.asarray(weights, dtype=np.float32))


def _ranked_map(ranking: _Ranking | None, weights: np.ndarray) -> np.ndarray:
    result = np.full(weights.shape[1], np.nan)
    if ranking is None:
        return result
    # Integer counts whose sums cannot pass 2**15 - 1 (no group holds more than all the clips' weight) are
    # summed exactly in int16 from int8 counts, a quarter of float32's memory traffic; else float32.
    exact = (weights.sum(axis=0).max(initial=0) <= np.iinfo(np.int16).max
             and weights.max(initial=0) <= np.iinfo(np.int8).max and bool((weights == np.floor(weights)).all()))
    matrix_type, weight_type = (np.int16, np.int8) if exact else (np.float32, np.float32)
    clip_matrix = ranking.clips.astype(matrix_type, copy=False)
    positive_matrix = ranking.positives.astype(matrix_type, copy=False)
    for first in range(0, weights.shape[1], BLOCK):
        block = np.ascontiguousarray(weights[:, first:first + BLOCK], dtype=weight_type)
        clips = np.asarray(clip_matrix @ block)
        hits = np.asarray(positive_matrix @ block)
        cumulative_hits = _segment_cumsum(hits, ranking.starts, ranking.sizes)
        cumulative_clips = _segment_cumsum(clips, ranking.starts, ranking.sizes)
        precision = np.divide(cumulative_hits, cumulative_clips, out=np.zeros_like(cumulative_hits),
                              where=cumulative_clips > 0)
        numerator = np.add.reduceat(hits * precision, ranking.starts, axis=0)
        positives = np.add.reduceat(hits.astype(np.float64), ranking.starts, axis=0)
        scored = positives > 0
        ap = np.divide(numerator, positives, out=np.zeros_like(numerator), where=scored)
        counted = scored.sum(axis=0)
        result[first:first + BLOCK] = np.where(counted > 0, ap.sum(axis=0) / np.maximum(counted, 1), np.nan)
    return result


def weighted_accuracy(targets: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Top-1 accuracy (argmax of scores vs argmax of targets) for every column of `weights`."""
    correct = (np.asarray(targets).argmax(axis=1) == np.asarray(scores).argmax(axis=1)).astype(np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    total = weights.sum(axis=0)
    return np.divide(correct @ weights, total, out=np.full(weights.shape[1], np.nan), where=total > 0)


def weighted_metric(metric: str, targets: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    if metric == "map":
        return weighted_map(np.asarray(targets) >= 0.5, scores, weights)
    if metric == "accuracy":
        return weighted_accuracy(targets, scores, weights)
    raise SslamError(f"unknown metric {metric!r}; expected map or accuracy")


def resampling_counts(strata: np.ndarray, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """(N, replicates) float32: how often each clip is drawn, drawing with replacement inside each stratum
    (each stratum keeps its size)."""
    strata = np.asarray(strata)
    counts = np.zeros((strata.shape[0], replicates), dtype=np.float32)
    for stratum in np.unique(strata):
        rows = np.flatnonzero(strata == stratum)
        size = rows.shape[0]
        for first in range(0, replicates, BLOCK):
            block = min(BLOCK, replicates - first)
            draws = rng.integers(0, size, size=(block, size)) + (np.arange(block) * size)[:, None]
            drawn = np.bincount(draws.ravel(), minlength=block * size).reshape(block, size)
            counts[rows, first:first + block] = drawn.T
    return counts


def column_scores(metric: str, predictions: Predictions, weights: np.ndarray) -> dict[str, np.ndarray]:
    """The table's numbers of one job under each column of `weights`: 'overall' (the mean over rounds of
    the per-round metric, as the evaluation reports it) and one entry per bin (the bin's pooled clips)."""
    def metric_of(rows: np.ndarray) -> np.ndarray:
        return weighted_metric(metric, predictions.targets[rows], predictions.scores[rows], weights[rows])

    rounds = np.unique(predictions.rounds)
    if rounds.shape[0] == 1:
        everything = np.arange(len(predictions))
        result = {OVERALL: metric_of(everything)}
    else:
        result = {OVERALL: np.mean([metric_of(np.flatnonzero(predictions.rounds == r)) for r in rounds], axis=0)}
    if predictions.bins is not None:
        for label in np.unique(predictions.bins):
            result[str(label)] = metric_of(np.flatnonzero(predictions.bins == label))
    return result


# --- comparisons --------------------------------------------------------------------------------------


class Run(Protocol):
    """What the bootstrap reads of an evaluation result (sslam.tables.aggregate.RunResult)."""

    model: str
    seed: int
    metric: str
    value: float
    per_bin: dict[str, float]
    predictions: str | None


@dataclass(frozen=True)
class Delta:
    """model − reference, in table units (percent points when the tables print percent)."""

    delta: float
    low: float
    high: float
    seeds: tuple[int, ...]
    clips: int
    replicates: int

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0


def _rng(seed: int, *key: Any) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32("|".join(map(str, key)).encode())])


class Bootstrap:
    """Per-job replicate scores for each (benchmark, regime), then any paired comparison from them."""

    def __init__(self, config: SignificanceConfig, scale: float = 1.0) -> None:
        self.config = config
        self.scale = scale
        self._problems: list[str] = []
        self._scores: dict[tuple[str, str], dict[str, dict[int, dict[str, np.ndarray]]]] = {}
        self._clips: dict[tuple[str, str], int] = {}

    def add(self, benchmark: str, regime: str, runs: list[Run]) -> None:
        """Score every job of one (benchmark, regime) under the same clip draws. The test clips most jobs
        share are the reference; a job whose predictions are missing or differ from it is noted and left out."""
        group: dict[str, dict[int, dict[str, np.ndarray]]] = {}
        self._scores[(benchmark, regime)] = group
        runs = sorted(runs, key=lambda r: (r.model, r.seed))
        clip_sets: dict[int, str] = {}
        for i, run in enumerate(runs):
            try:
                if run.predictions is None:
                    raise PredictionsError("no predictions file")
                clip_sets[i] = clip_set(run.predictions)
            except PredictionsError as error:
                self._problems.append(f"{run.model} on {benchmark}/{regime} seed {run.seed}: {error}")
        if not clip_sets:
            return
        shared = Counter(clip_sets.values()).most_common(1)[0][0]
        reference: Predictions | None = None
        counts = None
        for i, fingerprint in clip_sets.items():
            run = runs[i]
            founding = reference is None
            try:
                if fingerprint != shared:
                    raise PredictionsError(f"its test clips differ from the other models' ({fingerprint.split(':')[0]}"
                                           f" vs {shared.split(':')[0]} clips, or other clip ids)")
                predictions = _sorted(load_predictions(run.predictions))
                if reference is None:
                    reference = predictions
                    strata = reference.rounds if reference.bins is None else np.char.add(
                        np.char.add(reference.rounds, "\x1f"), reference.bins)
                    draws = resampling_counts(strata, self.config.replicates,
                                              _rng(self.config.seed, "clips", benchmark, regime))
                    counts = np.hstack([np.ones((len(reference), 1), np.float32), draws])
                    self._clips[(benchmark, regime)] = len(reference)
                else:
                    _check_same_clips(predictions, reference, run.metric)
                scores = column_scores(run.metric, predictions, counts)
                _check_reproduces(run, scores)
            except PredictionsError as error:
                self._problems.append(f"{run.model} on {benchmark}/{regime} seed {run.seed}: {error}")
                if founding:  # the next usable job becomes the reference
                    reference = counts = None
                continue
            group.setdefault(run.model, {})[run.seed] = scores

    def problems(self) -> list[str]:
        """One line per job left out of the tests, and why."""
        return list(self._problems)

    def compare(self, benchmark: str, regime: str, column: str, model: str, reference: str) -> Delta | None:
        group = self._scores.get((benchmark, regime), {})
        ours, theirs = group.get(model, {}), group.get(reference, {})
        seeds = tuple(s for s in sorted(set(ours) & set(theirs)) if column in ours[s] and column in theirs[s])
        if not seeds:
            return None
        difference = np.stack([ours[s][column] - theirs[s][column] for s in seeds])   # (seeds, 1 + R)
        observed, replicates = difference[:, 0], difference[:, 1:]
        count = replicates.shape[1]
        seed_draws = _rng(self.config.seed, "seeds", benchmark, regime, seeds)
        picks = seed_draws.integers(0, len(seeds), size=(count, len(seeds)))
        resampled = replicates[picks, np.arange(count)[:, None]].mean(axis=1)
        resampled = resampled[np.isfinite(resampled)]
        if not np.isfinite(observed).all() or resampled.shape[0] == 0:
            return None
        tail = (1.0 - self.config.level) / 2
        low, high = np.quantile(resampled, [tail, 1.0 - tail])
        return Delta(float(observed.mean()) * self.scale, float(low) * self.scale, float(high) * self.scale,
                     seeds, self._clips[(benchmark, regime)], int(resampled.shape[0]))


def _sorted(predictions: Predictions) -> Predictions:
    order = np.lexsort((predictions.clip_id, predictions.rounds))
    ranked = predictions.take(order)
    same = (ranked.rounds[1:] == ranked.rounds[:-1]) & (ranked.clip_id[1:] == ranked.clip_id[:-1])
    if same.any():
        index = int(np.flatnonzero(same)[0])
        raise PredictionsError(f"clip {ranked.clip_id[index]!r} appears twice in round {ranked.rounds[index]!r}")
    return ranked


def _check_same_clips(predictions: Predictions, reference: Predictions, metric: str) -> None:
    if len(predictions) != len(reference) or not (np.array_equal(predictions.clip_id, reference.clip_id)
                                                  and np.array_equal(predictions.rounds, reference.rounds)):
        raise PredictionsError(f"its test clips differ from the other models' ({len(predictions)} vs "
                               f"{len(reference)} clips)")
    if predictions.targets.shape != reference.targets.shape:
        raise PredictionsError(f"{predictions.targets.shape[1]} classes vs {reference.targets.shape[1]}")
    if metric == "map":
        same_targets = np.array_equal(predictions.targets >= 0.5, reference.targets >= 0.5)
    else:
        same_targets = np.array_equal(predictions.targets.argmax(1), reference.targets.argmax(1))
    if not same_targets:
        raise PredictionsError("its targets differ from the other models' for the same clips")
    if (predictions.bins is None) != (reference.bins is None) or (
            predictions.bins is not None and not np.array_equal(predictions.bins, reference.bins)):
        raise PredictionsError("its polyphony bins differ from the other models'")


def _check_reproduces(run: Run, scores: dict[str, np.ndarray]) -> None:
    expected = {OVERALL: run.value, **run.per_bin}
    for column, value in expected.items():
        if column in scores and not abs(scores[column][0] - value) <= TOLERANCE:
            raise PredictionsError(f"its predictions give {column} = {scores[column][0]:.4f}, metrics.json "
                                   f"says {value:.4f}")
