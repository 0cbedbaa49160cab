"""The training throughput a log line reports (the metrics log itself is the job harness's:
`sslam.runtime.jobs.MetricsLog`)."""
from __future__ import annotations

import time




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
