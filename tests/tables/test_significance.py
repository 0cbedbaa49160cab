"""The paired bootstrap on constructed predictions with known answers."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score
from tables_helpers import multilabel, noisy_scores, one_hot, write_run

from sslam.runtime.errors import ConfigError
from sslam.tables.aggregate import read_result
from sslam.tables.significance import (Bootstrap, SignificanceConfig, load_predictions, PredictionsError,
                                       resampling_counts, weighted_accuracy, weighted_map)


def sklearn_map(positives: np.ndarray, scores: np.ndarray) -> float:
    return float(np.mean([average_precision_score(positives[:, c], scores[:, c])
                          for c in range(positives.shape[1]) if positives[:, c].any()]))


def test_weighted_map_is_the_map_of_the_resampled_clips():
    rng = np.random.default_rng(0)
    positives = rng.random((120, 9)) < 0.25
    positives[:, 4] = False            # a class without positives: left out, as in the evaluation
    positives[:, 5] = False
    positives[7, 5] = True             # a class with one positive: some resamples lose it
    scores = np.round(rng.standard_normal((120, 9)) + positives, 1)   # many tied scores
    counts = resampling_counts(np.zeros(120), 40, rng)
    weights = np.hstack([np.ones((120, 1), np.float32), counts])
    ours = weighted_map(positives, scores, weights)
    assert ours[0] == pytest.approx(sklearn_map(positives, scores), abs=1e-12)
    lost = 0
    for r in range(1, weights.shape[1]):
        repeated = np.repeat(np.arange(120), weights[:, r].astype(int))
        lost += not positives[repeated, 5].any()
        assert ours[r] == pytest.approx(sklearn_map(positives[repeated], scores[repeated]), abs=1e-12)
    assert lost > 0  # the case "a class loses all its positives in a resample" was exercised
    # Fractional weights take the float32 path (the counts above the exact int16 one): same AP.
    assert np.allclose(weighted_map(positives, scores, weights * 0.5), ours, atol=1e-6)
    fractional = rng.random(120) + 0.1
    expected = np.mean([average_precision_score(positives[:, c], scores[:, c], sample_weight=fractional)
                        for c in range(9) if positives[:, c].any()])
    assert weighted_map(positives, scores, fractional[:, None])[0] == pytest.approx(expected, abs=1e-6)


def test_weighted_accuracy_and_no_positive_at_all():
    rng = np.random.default_rng(1)
    labels, predicted = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    counts = resampling_counts(np.zeros(50), 5, rng)
    ours = weighted_accuracy(one_hot(labels, 4), one_hot(predicted, 4), counts)
    for r in range(5):
        repeated = np.repeat(np.arange(50), counts[:, r].astype(int))
        assert ours[r] == pytest.approx(np.mean(labels[repeated] == predicted[repeated]))
    assert np.isnan(weighted_map(np.zeros((5, 3), bool), rng.random((5, 3)), np.ones((5, 2)))).all()


def test_resampling_keeps_each_stratum_and_is_seeded():
    strata = np.array(["a"] * 7 + ["b"] * 3 + ["c"] * 1)
    counts = resampling_counts(strata, 130, np.random.default_rng(5))
    for stratum, size in [("a", 7), ("b", 3), ("c", 1)]:
        assert (counts[strata == stratum].sum(axis=0) == size).all()
    assert np.array_equal(counts, resampling_counts(strata, 130, np.random.default_rng(5)))
    assert counts[strata == "a"].std() > 0


def bootstrap_of(paths, replicates=400, **options) -> Bootstrap:
    bootstrap = Bootstrap(SignificanceConfig(replicates=replicates, **options), scale=1.0)
    runs = [read_result(path) for path in paths]
    for key in sorted({(r.benchmark, r.regime) for r in runs}):
        bootstrap.add(*key, [r for r in runs if (r.benchmark, r.regime) == key])
    return bootstrap


def test_identical_predictions_give_zero(tmp_path):
    rng = np.random.default_rng(2)
    targets = multilabel(rng, 60, 5)
    scores = noisy_scores(rng, targets, 1.0)
    paths = [write_run(tmp_path, "b", "linear", model, 0, targets, scores) for model in ("stage1", "SSLAM")]
    delta = bootstrap_of(paths).compare("b", "linear", "overall", "SSLAM", "stage1")
    assert delta.delta == 0 and delta.low <= 0 <= delta.high and not delta.significant
    assert delta.seeds == (0,) and delta.clips == 60 and delta.replicates == 400


def test_better_on_every_clip_is_significant(tmp_path):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, 200)
    wrong = (labels + 1) % 5
    weak = np.where(rng.random(200) < 0.6, labels, wrong)
    paths = [write_run(tmp_path, "b", "finetune", "stage1", 0, one_hot(labels, 5), one_hot(weak, 5), "accuracy"),
             write_run(tmp_path, "b", "finetune", "SSLAM", 0, one_hot(labels, 5), one_hot(labels, 5), "accuracy")]
    bootstrap = bootstrap_of(paths)
    delta = bootstrap.compare("b", "finetune", "overall", "SSLAM", "stage1")
    assert delta.low > 0 and delta.significant
    assert delta.delta == pytest.approx(1.0 - np.mean(weak == labels))
    reverse = bootstrap.compare("b", "finetune", "overall", "stage1", "SSLAM")
    assert reverse.high < 0 and reverse.delta == pytest.approx(-delta.delta)


def test_known_difference_and_its_standard_error(tmp_path):
    """Accuracy with paired per-clip differences d: Δ = mean(d), half-width ≈ 1.96 sd(d) / sqrt(n)."""
    rng = np.random.default_rng(4)
    clips = 3000
    labels = rng.integers(0, 10, clips)
    wrong = (labels + 3) % 10
    right_a, right_b = rng.random(clips) < 0.7, rng.random(clips) < 0.6
    predicted_a, predicted_b = np.where(right_a, labels, wrong), np.where(right_b, labels, wrong)
    paths = [write_run(tmp_path, "b", "linear", model, 0, one_hot(labels, 10), one_hot(p, 10), "accuracy")
             for model, p in (("SSLAM", predicted_a), ("stage1", predicted_b))]
    delta = bootstrap_of(paths, replicates=2000).compare("b", "linear", "overall", "SSLAM", "stage1")
    differences = right_a.astype(float) - right_b
    assert delta.delta == pytest.approx(differences.mean(), abs=1e-12)
    expected = 1.96 * differences.std(ddof=1) / np.sqrt(clips)
    assert (delta.high - delta.low) / 2 == pytest.approx(expected, rel=0.12)
    assert (delta.low + delta.high) / 2 == pytest.approx(differences.mean(), abs=0.2 * expected)


def test_clips_are_resampled_jointly(tmp_path):
    """Shared clip difficulty cancels in a joint resampling; resampling each model on its own would not."""
    rng = np.random.default_rng(6)
    targets = multilabel(rng, 400, 6, rate=0.2)
    difficulty = rng.standard_normal((400, 1)) * 2.0 * targets   # some clips' positives are hard for everyone
    base = (1.5 * targets + difficulty + 0.5 * rng.standard_normal(targets.shape)).astype(np.float32)
    better = (base + 0.4 * targets).astype(np.float32)
    paths = [write_run(tmp_path, "b", "linear", "stage1", 0, targets, base),
             write_run(tmp_path, "b", "linear", "SSLAM", 0, targets, better)]
    delta = bootstrap_of(paths, replicates=500).compare("b", "linear", "overall", "SSLAM", "stage1")
    positives = targets >= 0.5
    independent = (weighted_map(positives, better, resampling_counts(np.zeros(400), 500, np.random.default_rng(1)))
                   - weighted_map(positives, base, resampling_counts(np.zeros(400), 500, np.random.default_rng(2))))
    low, high = np.quantile(independent, [0.025, 0.975])
    assert delta.significant and delta.low > 0
    assert delta.high - delta.low < 0.5 * (high - low)


def test_seeds_pair_by_number(tmp_path):
    """Seed 1 is worse than seed 0 for both models by the same amount: paired, the difference is constant."""
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 4, 300)
    wrong = (labels + 1) % 4
    right = rng.random(300)
    paths = []
    for seed, share in [(0, 0.9), (1, 0.5), (2, 0.7)]:
        for model, extra in [("SSLAM", 0.05), ("stage1", 0.0)]:
            predicted = np.where(right < share + extra, labels, wrong)
            paths.append(write_run(tmp_path, "b", "linear", model, seed, one_hot(labels, 4), one_hot(predicted, 4),
                                   "accuracy"))
    paths.append(write_run(tmp_path, "b", "linear", "SSLAM", 3, one_hot(labels, 4), one_hot(labels, 4), "accuracy"))
    delta = bootstrap_of(paths, replicates=500).compare("b", "linear", "overall", "SSLAM", "stage1")
    assert delta.seeds == (0, 1, 2)   # seed 3 has no partner
    per_seed = [np.mean(right < share + 0.05) - np.mean(right < share) for share in (0.9, 0.5, 0.7)]
    assert delta.delta == pytest.approx(np.mean(per_seed))
    # Unpaired, seed 0 against seed 1 alone would differ by ~0.4; paired, the interval stays near 0.05.
    assert delta.low > 0 and delta.high < 0.1


def test_folds_and_bins_reproduce_the_reported_numbers(tmp_path):
    rng = np.random.default_rng(8)
    targets = multilabel(rng, 90, 4)
    rounds = np.array(["fold1"] * 30 + ["fold2"] * 60)
    bins = np.array(["{2,3}", "{4,5}", "{14+}"] * 30)
    paths = [write_run(tmp_path, "p", "finetune", model, 0, targets, noisy_scores(rng, targets, signal), "map",
                       rounds=rounds, bins=bins) for model, signal in (("stage1", 0.5), ("SSLAM", 3.0))]
    bootstrap = bootstrap_of(paths)
    assert bootstrap.problems() == []   # the recomputed overall (mean over folds) and bins match metrics.json
    for column in ("overall", "{2,3}", "{4,5}", "{14+}"):
        delta = bootstrap.compare("p", "finetune", column, "SSLAM", "stage1")
        reported = [read_result(p) for p in paths]
        values = [r.value if column == "overall" else r.per_bin[column] for r in reported]
        assert delta.delta == pytest.approx(values[1] - values[0], abs=1e-9)


def test_deterministic_and_independent_of_input_order(tmp_path):
    rng = np.random.default_rng(9)
    targets = multilabel(rng, 50, 4)
    paths = [write_run(tmp_path, "b", "linear", model, seed, targets, noisy_scores(rng, targets, 1.0))
             for model in ("stage1", "SSLAM") for seed in (0, 1)]
    first = bootstrap_of(paths).compare("b", "linear", "overall", "SSLAM", "stage1")
    again = bootstrap_of(list(reversed(paths))).compare("b", "linear", "overall", "SSLAM", "stage1")
    assert first == again
    other_seed = bootstrap_of(paths, seed=1).compare("b", "linear", "overall", "SSLAM", "stage1")
    assert other_seed.delta == first.delta and (other_seed.low, other_seed.high) != (first.low, first.high)


def test_unusable_predictions_are_noted_not_fatal(tmp_path):
    rng = np.random.default_rng(10)
    targets = multilabel(rng, 40, 3)
    scores = noisy_scores(rng, targets, 1.0)
    good = write_run(tmp_path, "b", "linear", "stage1", 0, targets, scores)
    missing = write_run(tmp_path, "b", "linear", "SSLAM", 0, targets, scores, predictions=False)
    corrupt = write_run(tmp_path, "b", "linear", "MB-UA", 0, targets, scores)
    (corrupt.parent / "predictions.npz").write_bytes(b"not a zip file")
    other_clips = write_run(tmp_path, "b", "linear", "MB-PMA", 0, targets, scores,
                            clip_ids=[f"x{i}" for i in range(40)])
    lying = write_run(tmp_path, "b", "linear", "random", 0, targets, scores, value=0.01)
    bootstrap = bootstrap_of([good, missing, corrupt, other_clips, lying])
    problems = "\n".join(bootstrap.problems())
    assert "SSLAM on b/linear seed 0: no predictions file" in problems
    assert "MB-UA on b/linear seed 0: predictions.npz unreadable" in problems
    assert "MB-PMA on b/linear seed 0: its test clips differ" in problems
    assert "random on b/linear seed 0: its predictions give overall" in problems
    for model in ("SSLAM", "MB-UA", "MB-PMA", "random"):
        assert bootstrap.compare("b", "linear", "overall", model, "stage1") is None


def test_predictions_file_checks(tmp_path):
    path = tmp_path / "predictions.npz"
    np.savez(path, clip_id=np.array(["a", "b"]), targets=np.zeros((2, 3)), scores=np.zeros((2, 4)))
    with pytest.raises(PredictionsError, match="same non-empty"):
        load_predictions(path)
    np.savez(path, clip_id=np.array(["a", "b"], dtype=object), targets=np.zeros((2, 3)), scores=np.zeros((2, 3)))
    with pytest.raises(PredictionsError, match="unreadable"):   # object arrays would need pickle: refused
        load_predictions(path)
    np.savez(path, clip_id=np.array([b"a", b"b"]), targets=np.zeros((2, 3)), scores=np.full((2, 3), np.nan))
    with pytest.raises(PredictionsError, match="non-finite"):
        load_predictions(path)
    np.savez(path, clip_id=np.array([b"a", b"b"]), targets=np.eye(2, 3), scores=np.eye(2, 3), bin=np.array([2, 4]))
    loaded = load_predictions(path)
    assert loaded.clip_id.tolist() == ["a", "b"] and loaded.bins.tolist() == ["2", "4"]
    assert loaded.rounds.tolist() == ["main", "main"]


@pytest.mark.parametrize("options, key", [({"replicates": 5}, "replicates"), ({"level": 1.0}, "level"),
                                          ({"pairs": [["SSLAM"]]}, "pairs"), ({"seed": -1}, "seed")])
def test_config_ranges(options, key):
    with pytest.raises(ConfigError, match=key):
        SignificanceConfig(**options)
