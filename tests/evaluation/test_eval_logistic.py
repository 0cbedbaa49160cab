"""The converged linear probe (`linear: {solver: lbfgs}`, sslam.evaluation.logistic): the fit reaches its
stated criterion, equals scikit-learn's logistic regression, is deterministic, picks its penalty by
cross-validation, and runs as `sslam probe` with the metrics.json / predictions.npz contract and resume."""
import json
import signal

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from sslam.cli import main
from sslam.runtime.configuration import from_dict
from sslam.runtime.errors import ConfigError
from sslam.evaluation.config import BenchmarkConfig, LinearProbeConfig
from sslam.evaluation.heads import pool_features
from sslam.evaluation.logistic import BIAS_L2, choose_l2, cv_folds, fit_logistic

from eval_helpers import read_metrics
from test_eval_preemption import BOOKKEEPING, assert_same_results, run_to_the_end, signal_at, sslam

LBFGS = {"solver": "lbfgs", "mixup": 0.0, "specaug_freq": 0.0, "specaug_time": 0.0, "roll": False,
         "linear_mode": "paper", "feature_norm": "batch", "batch_size": 8}
# scikit-learn and this probe minimise the same objective (C = 1 / (l2 · N), the bias unpenalised there and
# penalised by BIAS_L2 here); fitted to max |gradient| <= 1e-7 (sklearn: tol 1e-12), their probabilities agree to:
SKLEARN_TOLERANCE = 1e-5


def blobs(seed: int, classes: int = 3, per_class: int = 20, dims: int = 5, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dims)) * 3.0
    labels = np.repeat(np.arange(classes), per_class)
    features = centres[labels] + spread * rng.standard_normal((len(labels), dims))
    return features, np.eye(classes)[labels]


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_converges_on_separable_data_and_separates_it(task):
    features, targets = blobs(0, spread=0.3)
    if task == "multilabel":
        targets = np.concatenate([targets, targets[:, :1]], axis=1)    # a class that co-occurs with another
    fitted = fit_logistic(features, targets, task, l2=1e-3, tolerance=1e-6)
    assert fitted.converged and fitted.gradient_max <= 1e-6 and 0 < fitted.iterations < 5000
    scores = fitted.scores(features)
    if task == "multiclass":
        np.testing.assert_allclose(scores.sum(axis=1), 1.0)
        assert (scores.argmax(axis=1) == targets.argmax(axis=1)).all()
    else:
        assert ((scores > 0.5) == (targets > 0.5)).all()


def test_an_iteration_budget_too_small_is_reported_unconverged():
    features, targets = blobs(1, spread=0.3)
    fitted = fit_logistic(features, targets, "multiclass", l2=1e-4, max_iter=2, tolerance=1e-8)
    assert not fitted.converged and fitted.iterations <= 2 and fitted.gradient_max > 1e-8


@pytest.mark.parametrize("l2", [1e-2, 1.0])
def test_multiclass_equals_scikit_learn(l2):
    features, targets = blobs(2, classes=4, spread=2.0)
    ours = fit_logistic(features, targets, "multiclass", l2, tolerance=1e-7)
    reference = LogisticRegression(C=1.0 / (l2 * len(features)), tol=1e-12, max_iter=100_000).fit(
        features, targets.argmax(axis=1))
    assert ours.converged
    np.testing.assert_allclose(ours.scores(features), reference.predict_proba(features), atol=SKLEARN_TOLERANCE)


def test_multilabel_equals_one_scikit_learn_regression_per_class():
    features, _ = blobs(3, classes=3, spread=2.0)
    targets = (np.random.default_rng(3).random((len(features), 3)) < 0.4).astype(float)
    ours = fit_logistic(features, targets, "multilabel", 0.1, tolerance=1e-7)
    for column in range(targets.shape[1]):
        reference = LogisticRegression(C=1.0 / (0.1 * len(features)), tol=1e-12, max_iter=100_000).fit(
            features, targets[:, column])
        np.testing.assert_allclose(ours.scores(features)[:, column], reference.predict_proba(features)[:, 1],
                                   atol=SKLEARN_TOLERANCE)


def test_a_class_without_positive_training_clips_has_a_finite_optimum():
    features, targets = blobs(4, spread=0.5)
    targets = np.concatenate([targets, np.zeros((len(targets), 1))], axis=1)   # never present
    fitted = fit_logistic(features, targets, "multilabel", 0.1)
    assert fitted.converged and np.isfinite(fitted.bias).all()
    assert fitted.bias[-1] < np.log(BIAS_L2) + 5 and fitted.scores(features)[:, -1].max() < 1e-6


def test_same_data_same_numbers_whatever_the_starting_point():
    features, targets = blobs(5, spread=1.5)
    first = fit_logistic(features, targets, "multiclass", 0.05, tolerance=1e-6)
    again = fit_logistic(features, targets, "multiclass", 0.05, tolerance=1e-6)
    np.testing.assert_array_equal(first.weights, again.weights)
    np.testing.assert_array_equal(first.bias, again.bias)
    warm = fit_logistic(features, targets, "multiclass", 0.05, tolerance=1e-9,
                        start=fit_logistic(features, targets, "multiclass", 1.0))
    np.testing.assert_allclose(warm.scores(features), first.scores(features), atol=1e-4)   # one optimum


def test_cross_validation_folds_are_seeded_and_stratified():
    _, targets = blobs(6, classes=4, per_class=9)
    folds = cv_folds(targets, "multiclass", 3, seed=0)
    np.testing.assert_array_equal(folds, cv_folds(targets, "multiclass", 3, seed=0))
    assert not np.array_equal(folds, cv_folds(targets, "multiclass", 3, seed=1))
    for fold in range(3):
        assert (targets[folds == fold].sum(axis=0) == 3).all()     # every class, equally, in every fold


def test_the_penalty_is_the_one_that_predicts_held_out_clips_best():
    config = LinearProbeConfig(l2=[1e-3, 1e-1, 10.0])
    features, targets = blobs(7, classes=3, per_class=30, spread=1.0)
    informative, losses = choose_l2(features, targets, "multiclass", config, seed=0)
    noise = np.random.default_rng(7).standard_normal(features.shape)          # labels unrelated to features
    uninformative, _ = choose_l2(noise, targets, "multiclass", config, seed=0)
    assert set(losses) == {1e-3, 1e-1, 10.0} and losses[informative] == min(losses.values())
    assert uninformative == 10.0 and informative < 10.0
    assert choose_l2(noise, targets, "multiclass", LinearProbeConfig(l2=[0.5]), seed=0) == (0.5, {})


def test_time_pooling_keeps_the_frequency_rows_apart():
    import torch

    tokens = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).reshape(2, 6, 4)  # 3 time × 2 frequency patches
    features = torch.cat([torch.zeros(2, 1, 4), tokens], dim=1)                 # CLS first
    pooled = pool_features(features, "time", freq_patches=2)
    assert pooled.shape == (2, 8)
    np.testing.assert_allclose(pooled[0, :4], tokens[0, 0::2].mean(0))          # the lowest row first
    np.testing.assert_allclose(pooled[0, 4:], tokens[0, 1::2].mean(0))
    np.testing.assert_allclose(pool_features(features, "mean"), tokens.mean(1))
    with pytest.raises(ConfigError, match="learned pooling"):                  # attentive: the head pools it
        pool_features(features, "attentive")


def test_a_config_asking_lbfgs_for_what_it_does_not_do_fails_naming_the_keys():
    with pytest.raises(ConfigError, match=r"evaluation\.benchmarks\.b\.linear: .*mixup: 0\.8.*roll: True"):
        from_dict(BenchmarkConfig, {"dataset": "d", "linear": {"solver": "lbfgs"}}, where="evaluation.benchmarks.b")
    for bad, key in (({"l2": []}, "l2"), ({"l2": [0.1, -1.0]}, "l2"), ({"l2_folds": 1}, "l2_folds"),
                     ({"tolerance": 0.0}, "tolerance"), ({"solver": "sgd"}, "solver"),
                     ({"pooling": "attentive"}, "not attentive")):
        with pytest.raises(ConfigError, match=key):
            from_dict(LinearProbeConfig, {**LBFGS, **bad}, where="linear")
    from_dict(LinearProbeConfig, LBFGS, where="linear")                           # the complete set is fine


def folds_benchmark(**linear) -> dict:
    return {"mono": {"dataset": "mono", "task": "multiclass", "metric": "accuracy", "protocol": "folds",
                     "num_workers": 0, "linear": {**LBFGS, "pooling": "time", **linear}}}


def test_probe_writes_the_contract_and_how_the_fit_converged(write_config, tmp_path):
    config = write_config(folds_benchmark(l2=[0.1, 1.0]))
    out = tmp_path / "eval"
    assert main(["probe", "--config", str(config), "--benchmark", "mono", "--random-init", "--seed", "2",
                 "--out", str(out)]) == 0
    metrics = read_metrics(out)
    solver = metrics["solver"]
    assert solver["name"] == "lbfgs" and solver["converged"] is True and solver["gradient_max"] <= 1e-4
    assert len(solver["iterations"]) == 3 and set(solver["l2"]) <= {0.1, 1.0}
    assert metrics["steps"] == sum(solver["iterations"])
    for fold in metrics["per_fold"]:
        assert fold["selection"]["policy"] == "last" and fold["selection"]["solver"]["converged"]
        assert set(fold["selection"]["solver"]["cv_loss"]) == {"0.1", "1"}
        # The default headline is best_on_valid; the probe's one model is every selection, and says so.
        assert fold["selection"]["requested"] == "best_on_valid" and "every selection" in fold["selection"]["note"]
    assert {name: entry["value"] for name, entry in metrics["selections"].items()} == dict.fromkeys(
        ("last", "best_on_valid", "best_on_eval"), metrics["value"])
    with np.load(out / "predictions.npz", allow_pickle=False) as stored:
        assert stored["scores"].shape == (42, 14)
        np.testing.assert_allclose(stored["scores"].sum(axis=1), 1.0, atol=1e-5)
        for name in ("last", "best_on_valid", "best_on_eval"):
            with np.load(out / f"predictions.{name}.npz", allow_pickle=False) as selected:
                np.testing.assert_array_equal(selected["scores"], stored["scores"])
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [record["round"] for record in log] == ["fold1", "fold2", "fold3"]

    again = tmp_path / "again"                                      # same seed, same numbers
    assert main(["probe", "--config", str(config), "--benchmark", "mono", "--random-init", "--seed", "2",
                 "--out", str(again)]) == 0
    assert_same_results(out, again)


def test_multilabel_probe_with_polyphony_bins(write_config, tmp_path):
    config = write_config({"polyphony": {"dataset": "polyphony", "train_dataset": "poly", "eval_split": "test",
                                         "num_workers": 0, "linear": {**LBFGS, "l2": [1.0]}}})
    out = tmp_path / "eval"
    assert main(["probe", "--config", str(config), "--benchmark", "polyphony", "--random-init",
                 "--out", str(out)]) == 0
    metrics = read_metrics(out)
    assert metrics["solver"]["converged"] and metrics["solver"]["l2"] == [1.0]
    assert set(metrics["per_bin"]) == {"1", "2", "3"} and 0.0 < metrics["value"] <= 1.0


@pytest.mark.slow
def test_an_interrupted_lbfgs_probe_restarts_its_round_and_ends_identical(write_config, tmp_path):
    config = write_config(folds_benchmark(batch_size=2))
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    common = ("probe", "--config", str(config), "--benchmark", "mono", "--random-init", "--seed", "3")
    run_to_the_end(sslam(*common, "--out", str(reference)))
    command = sslam(*common, "--out", str(interrupted), "--no-progress")
    code, log, _ = signal_at(command, r"\[linear fold2 features\] batch 3/", signal.SIGUSR1)
    assert code == 75, log[-3000:]
    assert not (interrupted / "metrics.json").exists()
    final = run_to_the_end(command)
    assert "1 round(s) done" in final.stderr
    assert_same_results(reference, interrupted)
    assert json.loads((interrupted / "metrics.json").read_text())["resumed"] == 1
    assert set(BOOKKEEPING) == {"wall_time_s", "resumed"}
