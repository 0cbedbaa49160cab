"""A training command run as a recorded workflow job (SSLAM_CODE_RECORD, docs/fingerprints.md), in its own process
as the workflow runs it, with a probe: for every update of the loop, whether the code recorder was tracing, and
where the loop's steady state began and ended. `pause=False` keeps the recorder tracing to the end (the
harness's hooks run, the recorder ignores them): the record such a job writes is the reference a paused job's
record must equal."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import importlib, json, sys
import sslam                       # installs the recorder, as in any workflow job
import sslam.runtime.jobs as jobs
from sslam.cli import main

module, owner, method, events_path, pause = sys.argv[1:6]
owner = getattr(importlib.import_module(module), owner)
update, steady, steady_end, events = getattr(owner, method), jobs.Job.steady, jobs.Job.steady_end, []

def probed_update(self, *args, **kwargs):
    events.append("traced" if sys.gettrace() is not None else "untraced")
    return update(self, *args, **kwargs)

def probed_steady(self):
    events.append("steady")
    steady(self)

def probed_steady_end(self):
    events.append("end")
    steady_end(self)

setattr(owner, method, probed_update)
jobs.Job.steady, jobs.Job.steady_end = probed_steady, probed_steady_end
if pause != "pause":
    jobs.stop_tracing = lambda: None   # the reference: the harness's calls run, the recorder never pauses
code = main(sys.argv[6:])
with open(events_path, "w") as stream:
    json.dump(events, stream)
sys.exit(code)
"""


def run_recorded(command: list[str], update: str, record: Path, pause: bool = True) -> tuple[dict, list[str]]:
    """Run `sslam COMMAND...` recorded into `record`, probing `update` ("module:Class.method", the loop's update);
    returns (the record, the probe's events: "traced"/"untraced" per update, "steady" where the hook was called)."""
    module, _, qualname = update.partition(":")
    owner, method = qualname.split(".")
    events = record.with_suffix(".events.json")
    env = dict(os.environ, SSLAM_CODE_RECORD=str(record), SSLAM_FINGERPRINT="P0", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run([sys.executable, "-c", PROBE, module, owner, method, str(events),
                             "pause" if pause else "trace", *command],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(record.read_text()), json.loads(events.read_text())


def loop_runs(events: list[str]) -> list[tuple[list[str], list[str]]]:
    """The probe's updates of each run of the loop (one per round of an evaluation job): (those before its
    steady state, those in it), checking that each run's steady state began once and ended with the run."""
    runs, current = [], []
    for event in events:
        current.append(event)
        if event == "end":
            runs.append(current)
            current = []
    assert runs and not current, events
    split = []
    for run in runs:
        assert run.count("steady") == 1, events
        begins = run.index("steady")
        split.append((run[:begins], run[begins + 1:-1]))
    return split
