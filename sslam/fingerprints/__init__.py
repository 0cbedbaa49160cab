"""Which package code a job executed, and whether it changed since: the fingerprints that decide re-runs
(docs/fingerprints.md). This package knows Python code, not SSLAM, and imports nothing else of the package.

Its interface to the rest of the package (the domain imports nothing else of it):

* `Registry`, `compiled` — what tracing cannot see, reported without knowing the recorder;
* `start_recording_if_asked`, `stop_tracing`, `resume_tracing`, `finish_recording`, `job_fingerprint` — a
  job's recording lifecycle (`sslam/__init__.py`, the CLI and the job harness call them);
* `Scheduler` — parse time: the fingerprint each job is scheduled with (the study model asks it).
"""
from sslam.fingerprints.recorder import (finish_recording, is_tracing, job_fingerprint, resume_tracing,
                                         start_recording_if_asked, stop_tracing)
from sslam.fingerprints.registry import Registry, compiled
from sslam.fingerprints.schedule import ScheduledFingerprint, Scheduler, read_record

__all__ = ["Registry", "ScheduledFingerprint", "Scheduler", "compiled", "finish_recording", "is_tracing",
           "job_fingerprint", "read_record", "resume_tracing", "start_recording_if_asked", "stop_tracing"]
