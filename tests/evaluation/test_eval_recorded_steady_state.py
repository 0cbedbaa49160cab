"""A recorded evaluation job (docs/fingerprints.md, "Steady state"): in every round the code recorder pauses once
the fit has run each kind of step it has (a step, a loss read, an evaluation point, a state), so the later steps
run untraced, and the record the job writes equals the record of the same job traced to the end: nothing the
paused steps, the selection or the test predictions ran is missing."""
import json

import pytest

from recorded import loop_runs, run_recorded

UPDATE = "sslam.evaluation.training:Fitter._update"


@pytest.mark.slow
def test_fit_steps_run_untraced_after_the_steady_state_and_the_record_is_complete(write_config, tmp_path):
    tracking = tmp_path / "tracking.json"
    tracking.write_text(json.dumps({"uri": "sqlite:///mlflow.db", "deferred": True}))
    finetune = {"steps": 12, "batch_size": 8, "selection": "best_on_eval", "eval_interval_steps": 4,
                "checkpoint_every": 5, "log_every": 3}
    # Folds: three rounds of 28 training clips, evaluated once per epoch (4 steps), no state before the last step.
    linear = {"steps": 24, "batch_size": 8, "log_every": 5}
    config = write_config({"poly": {"dataset": "poly", "eval_split": "test", "num_workers": 0, "finetune": finetune},
                           "mono": {"dataset": "mono", "task": "multiclass", "metric": "accuracy",
                                    "protocol": "folds", "num_workers": 0, "linear": linear}})
    jobs = {"finetune": (["finetune", "--benchmark", "poly", "--random-init"], [([TRACED] * 5, [UNTRACED] * 7)]),
            "probe": (["probe", "--benchmark", "mono", "--random-init"], [([TRACED] * 4, [UNTRACED] * 20)] * 3)}
    for name, (command, expected) in jobs.items():
        records = []
        for pause in (True, False):
            out = tmp_path / f"{name}-{'paused' if pause else 'traced'}"
            records.append(run_recorded([*command, "--config", str(config), "--out", str(out), "--device", "cpu",
                                         "--tracking", str(tracking), "--no-progress"], UPDATE,
                                        out.with_suffix(".code.json"), pause))
        (paused, events), (traced, reference) = records
        # finetune: steady after step 5 (step 1 read, step 4 evaluated, step 5 saved); probe: after step 4.
        assert loop_runs(events) == expected, events
        assert UNTRACED not in reference
        assert paused == traced, "the paused job's record misses code the traced job ran"


TRACED, UNTRACED = "traced", "untraced"
