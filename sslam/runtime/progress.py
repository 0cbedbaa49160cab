"""Progress of long jobs, readable in a terminal and in a job log alike.

`Progress` prints one line at the first update, then at most every `every_s` seconds (default 30, or
`SSLAM_PROGRESS_SECONDS`), and a last one at `close()`:

    [stage 1] step 1200/400000 (0.3%) | loss 3.2143 | 251.3 clips/s | elapsed 0:12:03 | ETA 18:31:07

The lines go to stderr whether or not it is a terminal (the workflow redirects it into the rule's log), so
`--no-progress` only turns off the interactive tqdm bar, never the log lines.
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, TextIO

DEFAULT_EVERY_S = 30.0
INTERVAL_ENVIRONMENT = "SSLAM_PROGRESS_SECONDS"


def default_interval() -> float:
    value = os.environ.get(INTERVAL_ENVIRONMENT)
    if value is None:
        return DEFAULT_EVERY_S
    try:
        seconds = float(value)
    except ValueError:
        return DEFAULT_EVERY_S
    return seconds if seconds >= 0 else DEFAULT_EVERY_S


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{seconds:02d}"
    return f"{days}d {clock}" if days else clock


class Progress:
    """Counts `unit`s of work towards `total` (None = unknown) and reports them as log lines.

    `update(n, **values)` adds n units; `values` (a loss, an lr...) are shown with the next line.
    `rate_unit`/`rate_per_unit` turn the unit rate into a throughput, e.g. clips/s = steps/s × batch.
    """

    def __init__(self, total: int | None, label: str, unit: str = "step", initial: int = 0,
                 every_s: float | None = None, rate_unit: str | None = None, rate_per_unit: float = 1.0,
                 stream: TextIO | None = None, bar: bool | None = False) -> None:
        self.total, self.label, self.unit = total, label, unit
        self.done = self._start = initial
        self.every_s = default_interval() if every_s is None else every_s
        self.rate_unit, self.rate_per_unit = rate_unit or f"{unit}s", rate_per_unit
        self.stream = stream if stream is not None else sys.stderr
        self.values: dict[str, Any] = {}
        self._started = time.perf_counter()
        self._last_line: float | None = None
        self._closed = False
        self._bar = None
        if bar is None:
            bar = self.stream.isatty()
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=label, unit=unit, dynamic_ncols=True,
                             file=self.stream)

    def update(self, n: int = 1, **values: Any) -> None:
        self.done += n
        self.values.update(values)
        if self._bar is not None:
            self._bar.update(n)
        now = time.perf_counter()
        if self._last_line is None or now - self._last_line >= self.every_s:
            self._emit(now)

    def line(self, now: float | None = None) -> str:
        now = time.perf_counter() if now is None else now
        elapsed = now - self._started
        counted = self.done - self._start
        rate = counted / elapsed if elapsed > 0 else 0.0
        where = f"{self.unit} {self.done}"
        if self.total:
            where += f"/{self.total} ({100.0 * self.done / self.total:.1f}%)"
        parts = [f"[{self.label}] {where}"]
        for key, value in self.values.items():
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
        parts.append(f"{rate * self.rate_per_unit:.1f} {self.rate_unit}/s")
        parts.append(f"elapsed {format_duration(elapsed)}")
        if self.total:
            remaining = (self.total - self.done) / rate if rate > 0 else math.inf
            parts.append(f"ETA {format_duration(remaining)}")
        return " | ".join(parts)

    def _emit(self, now: float) -> None:
        self._last_line = now
        text = self.line(now)
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """The final line (always), then the bar is closed."""
        if self._closed:
            return
        self._closed = True
        self._emit(time.perf_counter())
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
