"""A recorded pretraining job (docs/fingerprints.md, "Steady state"): the code recorder pauses once the loop has
run an update, a log point and a snapshot, so every later update runs untraced (sys.gettrace() is None on
Python <= 3.11), and the record it writes equals the record of the same job traced to the end."""
import json

import pytest

from recorded import loop_runs, run_recorded
from train_helpers import tiny_study

UPDATE = "sslam.train.loop:Pretrainer.update"


@pytest.mark.slow
def test_stage1_and_stage2_updates_run_untraced_after_the_steady_state_and_the_record_is_complete(tmp_path):
    config = tiny_study(tmp_path, stage1={"steps": 9, "log_every": 2, "checkpoint_every": 3},
                        stage2={"steps": 7, "log_every": 2, "checkpoint_every": 3})
    tracking = tmp_path / "tracking.json"
    tracking.write_text(json.dumps({"uri": "sqlite:///mlflow.db", "deferred": True}))

    def pretrain(stage: int, out: str, pause: bool, *extra: str):
        command = ["pretrain", "--config", str(config), "--stage", str(stage), "--out", str(tmp_path / out),
                   "--device", "cpu", "--tracking", str(tracking), "--no-progress", *extra]
        return run_recorded(command, UPDATE, tmp_path / f"{out}.code.json", pause)

    stage2 = ("--variant", "SSLAM", "--init", str(tmp_path / "s1-paused/checkpoint.pt"))
    for stage, steps, extra in ((1, 9, ()), (2, 7, stage2)):
        paused, events = pretrain(stage, f"s{stage}-paused", True, *extra)
        traced, reference = pretrain(stage, f"s{stage}-traced", False, *extra)
        # Steady after update 3 (its first snapshot; update 2 was its first log point): updates 4.. untraced.
        assert loop_runs(events) == [(["traced"] * 3, ["untraced"] * (steps - 3))], events
        assert reference.count("untraced") == 0
        assert paused == traced, "the paused job's record misses code the traced job ran"
        # The code after the loop was traced again: the final checkpoint is written by code only it runs.
        assert "sslam.train.loop:Pretrainer.save_final" in paused["units"]
