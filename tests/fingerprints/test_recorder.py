"""sslam.fingerprints.recorder: a job records the package code it executes (also in forked workers), and a later
parse re-schedules it exactly when a recorded unit changed."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sslam.fingerprints import Scheduler, read_record

REPO = Path(__file__).resolve().parents[2]

# A job in miniature: the parent runs one package function, a forked worker (as a DataLoader worker would)
# another one, then the CLI's success path writes the record.
JOB = """
import multiprocessing
import sslam
from sslam.objective.config import floor_count, resolve_layer_count
from sslam.fingerprints import finish_recording

def work():
    floor_count(3.0)

resolve_layer_count("all", 4, "x")
worker = multiprocessing.get_context("fork").Process(target=work)
worker.start(); worker.join()
finish_recording()
"""


@pytest.fixture
def package_copy(tmp_path) -> Path:
    shutil.copytree(REPO / "sslam", tmp_path / "sslam", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def run_job(root: Path, record: Path, fingerprint: str = "P0", job: str = JOB) -> dict:
    env = {**os.environ, "SSLAM_CODE_RECORD": str(record), "SSLAM_FINGERPRINT": fingerprint, "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, "-c", job], cwd=root, env=env, check=True, capture_output=True, text=True)
    return json.loads(record.read_text())


def test_tracing_resumes_after_an_untraced_third_party_import(package_copy, tmp_path):
    job = """
import sys
import sslam
tracer = sys.gettrace()
import fractions, xml.dom.minidom            # first imports: run without the tracer
assert sys.gettrace() is tracer, "the tracer was not put back"
from sslam.objective.config import resolve_layer_count
resolve_layer_count("all", 4, "x")
from sslam.fingerprints import finish_recording
finish_recording()
"""
    units = run_job(package_copy, tmp_path / "job.code.json", job=job)["units"]
    assert "sslam.objective.config:<module>" in units and "sslam.objective.config:resolve_layer_count" in units


def test_a_record_holds_what_the_job_and_its_workers_executed(package_copy, tmp_path):
    record = run_job(package_copy, tmp_path / "job.code.json")
    units = record["units"]
    assert record["fingerprint"] == "P0"
    assert "sslam.objective.config:resolve_layer_count" in units       # run by the job
    assert "sslam.objective.config:floor_count" in units               # run only in the forked worker
    assert "sslam.objective.config:variant_config" not in units        # imported, never called
    assert "sslam.objective.config:<module>" in units                   # the module body ran at import
    assert not (tmp_path / "job.code.json.parts").exists()


def test_the_fingerprint_changes_exactly_when_recorded_code_changes(package_copy, tmp_path):
    path = tmp_path / "job.code.json"
    run_job(package_copy, path)
    config = package_copy / "sslam" / "objective" / "config.py"
    original = config.read_text()

    def scheduled() -> tuple[str, list[str]]:
        result = Scheduler({"sslam.objective.config": config.read_text()}).scheduled(path, "sslam.objective.config")
        return result.value, result.changed

    assert scheduled() == ("P0", [])
    config.write_text(original.replace('    if value == "all":', '    # all layers\n    if value == "all":  # as said'))
    assert scheduled() == ("P0", []), "a comment is not a change"
    config.write_text(original.replace('    """"all" -> depth', '    """"all" (every layer) -> depth'))
    assert scheduled() == ("P0", []), "a docstring is not a change"
    config.write_text(original.replace("def variant_config(name", "def variant_config(name2"))
    assert scheduled() == ("P0", []), "a function the job never ran"
    config.write_text(original.replace("    return math.floor(value + 1e-9)", "    return math.floor(value + 1e-6)"))
    value, changed = scheduled()
    assert changed == ["sslam.objective.config:floor_count"] and value != "P0"   # run by the worker only


def test_a_missing_or_damaged_record_gives_the_static_fingerprint(tmp_path):
    scheduler = Scheduler()
    missing = scheduler.scheduled(tmp_path / "none.code.json", "sslam.tables.aggregate")
    (tmp_path / "bad.code.json").write_text("{not json")
    damaged = scheduler.scheduled(tmp_path / "bad.code.json", "sslam.tables.aggregate")
    assert missing.value == damaged.value == "static-" + scheduler.index().static_fingerprint("sslam.tables.aggregate")
    assert read_record(tmp_path / "bad.code.json") is None and not missing.recorded


def test_the_record_does_not_depend_on_where_the_checkout_lives(package_copy, tmp_path):
    first = run_job(package_copy, tmp_path / "a.code.json")
    moved = tmp_path / "elsewhere"
    shutil.copytree(package_copy / "sslam", moved / "sslam")
    second = run_job(moved, tmp_path / "b.code.json")
    assert first["units"] == second["units"]


def test_tracing_pauses_in_a_steady_state_and_resumes_with_the_functions_on_the_stack(package_copy, tmp_path):
    """The recorder's side of docs/fingerprints.md, "Steady state": nothing is traced between the pause and the
    resume (on Python <= 3.11 not even in a thread that was already running); the hook that resumes, entered
    while paused, counts; the code after the resume is traced again."""
    job = """
import sys, threading
import sslam
from sslam.fingerprints import finish_recording, resume_tracing, stop_tracing
from sslam.objective.config import floor_count, reject_moved_keys, resolve_layer_count
from sslam.runtime.jobs import SteadyState

settrace = sys.version_info < (3, 12)            # sys.monitoring leaves sys.gettrace() alone
paused, tracer_in_thread = threading.Event(), []
def worker():
    paused.wait()
    floor_count(1.0)
    tracer_in_thread.append(sys.gettrace())
thread = threading.Thread(target=worker)
thread.start()
steady = SteadyState(["step"], stop_tracing, resume_tracing)
resolve_layer_count("all", 4, "x")               # before the steady state
steady.saw("step")                               # pauses
assert not settrace or sys.gettrace() is None
paused.set(); thread.join()
assert tracer_in_thread == [None]
floor_count(3.0)                                 # in the steady state
steady.end()                                     # resumes
assert not settrace or sys.gettrace() is not None
reject_moved_keys({}, "x")                       # after it
finish_recording()
"""
    units = run_job(package_copy, tmp_path / "job.code.json", job=job)["units"]
    assert "sslam.objective.config:resolve_layer_count" in units and "sslam.objective.config:reject_moved_keys" in units
    assert "sslam.objective.config:floor_count" not in units
    assert "sslam.runtime.jobs:SteadyState.end" in units and "sslam.runtime.jobs:SteadyState.saw" in units
