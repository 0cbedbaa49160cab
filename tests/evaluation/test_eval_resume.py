"""Exact resume of an evaluation round, in process: a stop at ANY safe point (every step boundary, every batch
of an evaluation pass, the final prediction) saves a state that, once written and read back with
torch.load(weights_only=True), continues to the very same result as an uninterrupted round."""
import io

import numpy as np
import pytest
import torch

from sslam.runtime.configuration import from_dict
from sslam.evaluation.config import BenchmarkConfig
from sslam.evaluation.protocols import plan_rounds
from sslam.evaluation.rounds import RoundResume, RoundSettings, run_round
from sslam.model.encoder import AudioEncoder, EncoderConfig
from sslam.runtime.snapshots import Preempted

from eval_helpers import POLY, TINY_ENCODER


class StopAtCheck:
    """A stop request that turns on at its `at`-th query: the loops query it at every step boundary and
    before every batch of an evaluation pass, so each `at` stops at another place."""

    def __init__(self, at: int) -> None:
        self.at, self.queries = at, 0

    @property
    def requested(self) -> bool:
        self.queries += 1
        return self.queries >= self.at


def _round_setup(cache_dir, selection, valid_split="valid"):
    # valid_split "test": poly's test rows double as validation rows, so every evaluation pass scores both
    benchmark = from_dict(BenchmarkConfig, dict(POLY, valid_split=valid_split, finetune={
        "steps": 7, "batch_size": 8, "selection": selection, "eval_interval_steps": 3, "checkpoint_every": None,
        "precision": "fp32"}), where="poly")
    shards = [cache_dir / "cache" / "poly" / "shard-000-of-001.h5"]
    settings = RoundSettings(benchmark, benchmark.finetune, "finetune", {"poly": shards}, -5.0, 3.0,
                             torch.device("cpu"), seed=4)
    [round_] = plan_rounds(benchmark, splits_in_training_data=["train", "test"])
    return settings, round_


def _encoder():
    torch.manual_seed(11)
    return AudioEncoder(EncoderConfig(**TINY_ENCODER))


def _through_a_file(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("selection, valid_split", [("best_on_eval", "valid"), ("last", "valid"),
                                                    ("best_on_valid", "test")])
def test_a_round_stopped_anywhere_resumes_to_the_same_result(cache_dir, selection, valid_split):
    settings, round_ = _round_setup(cache_dir, selection, valid_split)
    reference_log = []
    reference = run_round(_encoder(), round_, settings, reference_log.append).result

    # Count the stop queries of a whole round, then stop at each of them in turn.
    counter = StopAtCheck(10**9)
    run_round(_encoder(), round_, settings, None, RoundResume(save=lambda part: None, stop=counter))
    assert counter.queries > 7  # 7 step boundaries, plus the batches of every evaluation pass
    for at in range(1, counter.queries + 1):
        saved, log = [], []
        with pytest.raises(Preempted):
            run_round(_encoder(), round_, settings, log.append,
                      RoundResume(save=lambda part: saved.append(_through_a_file(part)), stop=StopAtCheck(at)))
        [state] = saved
        resumed = run_round(_encoder(), round_, settings, log.append, RoundResume(state=state)).result
        where = f"stopped at query {at} (step {state['fit']['step']}, pending evaluation " \
                f"{state['fit']['pending_evaluation']})"
        np.testing.assert_array_equal(resumed.scores, reference.scores, err_msg=where)
        np.testing.assert_array_equal(resumed.targets, reference.targets, err_msg=where)
        assert resumed.selection == reference.selection, where
        for name, kept in reference.selections.items():   # every selection, not only the headline
            np.testing.assert_array_equal(resumed.selections[name]["scores"], kept["scores"], err_msg=where)
            assert resumed.selections[name]["record"] == kept["record"], where
        assert (resumed.steps, resumed.clip_ids) == (reference.steps, reference.clip_ids)
        # Nothing logged after the state was taken: the two attempts log exactly the uninterrupted log.
        assert log == reference_log, where
