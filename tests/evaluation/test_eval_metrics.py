"""mAP / accuracy / per-bin scores against direct scikit-learn computations."""
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score

from sslam.runtime.errors import SslamError
from sslam.evaluation.metrics import accuracy, average_precision, mean_average_precision, per_bin, score


@pytest.fixture
def multilabel():
    rng = np.random.default_rng(0)
    targets = (rng.random((40, 6)) < 0.3).astype(np.float32)
    targets[:, 4] = 0                      # a class with no positive clip in the evaluation set
    targets[0, 0] = 1
    scores = rng.random((40, 6)) + 0.5 * targets
    return targets, scores


def test_map_matches_sklearn_per_class_and_excludes_classes_without_positives(multilabel):
    targets, scores = multilabel
    result = mean_average_precision(targets, scores, classes=list("abcdef"))
    expected = {c: average_precision_score(targets[:, i], scores[:, i]) for i, c in enumerate("abcdef") if i != 4}
    assert result["per_class"]["e"] is None
    assert result["classes_without_positives"] == 1
    assert result["classes_scored"] == 5
    for name, value in expected.items():
        assert result["per_class"][name] == pytest.approx(value)
    assert result["map"] == pytest.approx(np.mean(list(expected.values())))
    # sklearn's macro average over the scored columns gives the same number
    kept = [0, 1, 2, 3, 5]
    assert result["map"] == pytest.approx(average_precision_score(targets[:, kept], scores[:, kept], average="macro"))


def test_average_precision_equals_sklearn_with_ties_and_single_positives():
    rng = np.random.default_rng(3)
    for _ in range(300):
        size = int(rng.integers(1, 50))
        positives = rng.random(size) < rng.random()
        positives[rng.integers(size)] = True
        scores = np.round(rng.standard_normal(size), int(rng.integers(0, 3)))   # coarse rounding: many ties
        assert average_precision(positives, scores) == pytest.approx(average_precision_score(positives, scores),
                                                                     abs=1e-12)


def test_map_of_perfect_scores_is_one_and_of_no_positive_at_all_is_none():
    targets = np.eye(4)
    assert mean_average_precision(targets, targets)["map"] == pytest.approx(1.0)
    empty = mean_average_precision(np.zeros((3, 2)), np.ones((3, 2)))
    assert empty["map"] is None and empty["classes_without_positives"] == 2


def test_accuracy_matches_sklearn_and_reports_absent_classes():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 4, 50)
    truth[truth == 3] = 2                  # class 3 never occurs
    scores = rng.random((50, 4))
    targets = np.eye(4)[truth]
    result = accuracy(targets, scores)
    assert result["accuracy"] == pytest.approx(accuracy_score(truth, scores.argmax(1)))
    assert result["per_class"]["3"] is None and result["classes_without_positives"] == 1
    members = truth == 1
    assert result["per_class"]["1"] == pytest.approx((scores[members].argmax(1) == 1).mean())


def test_per_bin_scores_each_bin_on_its_own_clips(multilabel):
    targets, scores = multilabel
    bins = np.arange(len(targets)) % 3 + 1
    result = per_bin("map", targets, scores, bins)
    assert sorted(result) == ["1", "2", "3"]
    for value in (1, 2, 3):
        members = bins == value
        assert result[str(value)]["value"] == pytest.approx(
            mean_average_precision(targets[members], scores[members])["map"])
        assert result[str(value)]["clips"] == members.sum()


def test_bad_shapes_and_metric_names_raise_clear_errors():
    with pytest.raises(SslamError):
        mean_average_precision(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(SslamError):
        score("f1", np.eye(2), np.eye(2))
    with pytest.raises(SslamError):
        per_bin("map", np.eye(2), np.eye(2), [1])
