"""Selections: one run's evaluation points give last, best_on_valid and best_on_eval (sslam.evaluation.selection)."""
import numpy as np
import pytest
import torch

from sslam.evaluation.selection import Selections, headline

CLASSES = ["a", "b"]
TARGETS = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], dtype=np.float32)
GOOD = np.array([[0.9, 0.1], [0.1, 0.9], [0.8, 0.2], [0.2, 0.8]], dtype=np.float32)
BAD = GOOD[:, ::-1].copy()


def scripted(points):
    """predict() that returns, at each evaluation point, the (test, valid) scores scripted for it."""
    state = {"point": 0}

    def predict(rows):
        test, valid = points[state["point"]]
        return TARGETS, (test if rows == "test" else valid)
    return predict, state


def test_each_selection_keeps_its_own_point_and_predictions():
    # point 1: test good, valid bad; point 2: test bad, valid good; point 3 (last): both bad
    selections = Selections("map", CLASSES, "test", "valid")
    predict, state = scripted([(GOOD, BAD), (BAD, GOOD), (BAD, BAD)])
    for i, step in enumerate((10, 20, 30)):
        state["point"] = i
        record = selections.evaluate(step, step / 10, predict)
        assert set(record) == {"step", "evaluation", "valid"}
    kept = selections.results(predict, 30, 3.0)
    assert kept["best_on_eval"]["record"]["step"] == 10 and kept["best_on_eval"]["record"]["value"] == 1.0
    assert kept["best_on_valid"]["record"]["step"] == 20 and kept["best_on_valid"]["record"]["valid_value"] == 1.0
    assert kept["best_on_valid"]["record"]["value"] < 1.0          # the test score of the point validation chose
    assert kept["last"]["record"]["step"] == 30
    np.testing.assert_array_equal(kept["best_on_eval"]["scores"], GOOD)


def test_state_round_trips_and_ties_keep_the_later_point():
    selections = Selections("map", CLASSES, "test")
    predict, state = scripted([(GOOD, None), (GOOD, None)])
    selections.evaluate(5, 1.0, predict)
    restored = Selections("map", CLASSES, "test")
    restored.load_state_dict({k: {**v} for k, v in selections.state_dict().items()})
    assert isinstance(selections.state_dict()["last"]["scores"], torch.Tensor)
    state["point"] = 1
    restored.evaluate(10, 2.0, predict)
    kept = restored.results(predict, 10, 2.0)
    assert kept["best_on_eval"]["record"]["step"] == 10                   # fairseq: is_better is >=
    assert kept["best_on_valid"]["record"]["note"].startswith("no validation rows")


def test_headline_names_the_selection_and_falls_back_without_validation_rows():
    assert headline("best_on_eval", False) == {"policy": "best_on_eval", "requested": "best_on_eval"}
    assert headline("best_on_valid", False)["policy"] == "last"
    assert headline("best_on_valid", True)["policy"] == "best_on_valid"
    with pytest.raises(ValueError):
        headline("best", True)


def test_a_round_without_evaluation_points_is_every_selection():
    from sslam.evaluation.protocols import Round, RoundResult, Subset, selection_summary

    round_ = Round("split", Subset("d"), Subset("d"))
    result = RoundResult(round_, TARGETS, GOOD, None, {"policy": "last", "step": 7}, 7, 1.0, 10, ["a", "b", "c", "d"])
    assert result.selected("best_on_eval") is result
    assert selection_summary("map", CLASSES, [result], "best_on_valid") == {"value": 1.0, "step": 7}
