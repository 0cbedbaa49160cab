"""Where training progress goes: DIR/metrics.jsonl (always, the source of truth) and MLflow (optional, through
`JobTracker`). The log lines and the interactive bar are `sslam.runtime.progress`'s."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from sslam.runtime.tracking import JobTracker


class MetricsLog:
    """Appends one JSON object per logged step to `path`, mirrored to `tracker` when tracking is on."""

    def __init__(self, path: str | Path, tracker: JobTracker | None = None, prefix: str = "") -> None:
        self.path = Path(path)
        self.tracker = tracker
        self.prefix = prefix

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after `step`: a resumed run re-does those steps and logs them again."""
        if self.path.exists():
            self.restore(self.lines(), step)

    def lines(self) -> list[str]:
        """The complete lines logged so far (a snapshot keeps them: Snakemake deletes the outputs of a job it
        re-runs, and a re-run that resumes a finished snapshot must still write the whole log)."""
        if not self.path.exists():
            return []
        return [line for line in self.path.read_text().splitlines() if _logged_step(line) is not None]

    def restore(self, lines: list[str], step: int) -> None:
        """The log as it was when the snapshot of `step` was taken (lines after it are re-done and re-logged)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [line for line in lines if (logged := _logged_step(line)) is not None and logged <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, step: int, values: dict[str, float]) -> None:
        record = {"step": step, **{k: _plain(v) for k, v in values.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as stream:
            stream.write(json.dumps(record) + "\n")
        if self.tracker is not None:
            self.tracker.log_metrics({f"{self.prefix}{k}": v for k, v in record.items() if k != "step"}, step)


def _logged_step(line: str) -> int | None:
    """The step of a complete log line; None for a blank line or one cut short by a kill."""
    try:
        step = json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None
    return step if isinstance(step, int) else None


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


class Throughput:
    """Clips per second between successive `rate()` calls (wall clock)."""

    def __init__(self) -> None:
        self._since = time.perf_counter()
        self._clips = 0

    def add(self, clips: int) -> None:
        self._clips += clips

    def rate(self) -> float:
        now = time.perf_counter()
        elapsed = max(now - self._since, 1e-9)
        rate = self._clips / elapsed
        self._since, self._clips = now, 0
        return rate
