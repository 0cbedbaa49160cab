"""Progress a person sees while a study runs: one compact line per running job, read from the job logs.

Snakemake prints a job when it starts and when it ends; in between, a Stage-1 run can take hours while its
progress lines (sslam.runtime.progress: step/total, ETA) go only to the job's log file. This command runs
Snakemake (or any command), passes its output through unchanged, and every `--every` seconds prints, for each
job whose log is being written, its latest progress line in short:

    [running] pretrain/stage1: step 120/360 (33%), ETA 0:01:10   (14 of 62 jobs done)

    python -m sslam.runtime.watch --logs results/demo/logs -- snakemake --cores 2 ...   # what `make demo` runs
    python -m sslam.runtime.watch --logs results/demo/logs                               # watch only (Ctrl-C ends)

A job counts as running while its log has changed within `--stale` seconds and its last progress line is not
the last step; its name is the log's path below `--logs`. Nothing here reads or writes a result.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

# "[stage 1] step 120/360 (33.3%) | loss 3.2 | 25.1 clips/s | elapsed 0:00:50 | ETA 0:01:10" (Progress.line)
PROGRESS_LINE = re.compile(r"^\[(?P<label>[^\]]+)\] (?P<unit>\w+) (?P<done>\d+)(?:/(?P<total>\d+))?"
                           r"(?: \([\d.]+%\))?(?P<rest>.*)$")
SNAKEMAKE_DONE = re.compile(r"^(?P<done>\d+) of (?P<total>\d+) steps \([\d.]+%\) done")
TAIL_BYTES = 16384  # a progress line is well inside the last 16 KiB of a log


@dataclass(frozen=True)
class JobProgress:
    job: str
    label: str
    unit: str
    done: int
    total: int | None
    eta: str | None

    @property
    def finished(self) -> bool:
        return self.total is not None and self.done >= self.total

    def line(self) -> str:
        where = f"{self.unit} {self.done}"
        if self.total:
            where += f"/{self.total} ({100 * self.done // self.total}%)"
        eta = f", ETA {self.eta}" if self.eta else ""
        return f"{self.job}: {self.label} {where}{eta}"


def last_progress(log: Path, job: str) -> JobProgress | None:
    """The latest progress line of a job log, parsed; None when it has none (yet)."""
    try:
        with open(log, "rb") as stream:
            stream.seek(max(0, log.stat().st_size - TAIL_BYTES))
            lines = stream.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        match = PROGRESS_LINE.match(line.strip())
        if match:
            eta = re.search(r"\| ETA (\S+)", match["rest"])
            total = int(match["total"]) if match["total"] else None
            return JobProgress(job, match["label"], match["unit"], int(match["done"]), total,
                               eta[1] if eta else None)
    return None


def running_jobs(logs: Path, since: float, stale_s: float, now: float | None = None) -> list[JobProgress]:
    """Jobs whose log changed after `since` and within the last `stale_s` seconds, and whose last progress
    line is not their last step, in the order of their names."""
    now = time.time() if now is None else now
    found = []
    for log in sorted(logs.rglob("*.log")) if logs.is_dir() else []:
        try:
            modified = log.stat().st_mtime
        except OSError:  # removed meanwhile
            continue
        if modified < since or now - modified > stale_s:
            continue
        progress = last_progress(log, log.relative_to(logs).with_suffix("").as_posix())
        if progress is not None and not progress.finished:
            found.append(progress)
    return found


class Watcher:
    """Prints the running jobs' lines every `every_s` seconds to `stream` (only lines that changed)."""

    def __init__(self, logs: Path, every_s: float = 10.0, stale_s: float = 120.0, stream: TextIO | None = None,
                 since: float | None = None) -> None:
        self.logs, self.every_s, self.stale_s = logs, every_s, stale_s
        self.stream = stream if stream is not None else sys.stdout
        self.since = time.time() if since is None else since
        self.done: tuple[int, int] | None = None  # Snakemake's "N of M steps done", when seen
        self.lock = threading.Lock()  # our lines and the passed-through output never interleave mid-line
        self._shown: dict[str, str] = {}
        self._stop = threading.Event()

    def note_output(self, line: str) -> None:
        match = SNAKEMAKE_DONE.match(line.strip())
        if match:
            self.done = int(match["done"]), int(match["total"])

    def tick(self, now: float | None = None) -> list[str]:
        """The lines to print now: each running job whose line changed since it was last shown."""
        jobs = running_jobs(self.logs, self.since, self.stale_s, now)
        summary = f"   ({self.done[0]} of {self.done[1]} jobs done)" if self.done else ""
        lines = []
        for job in jobs:
            text = job.line()
            if self._shown.get(job.job) != text:
                self._shown[job.job] = text
                lines.append(f"[running] {text}{summary}")
        running = {job.job for job in jobs}
        self._shown = {name: text for name, text in self._shown.items() if name in running}
        return lines

    def print_lines(self, lines: list[str]) -> None:
        if lines:
            with self.lock:
                self.stream.write("".join(line + "\n" for line in lines))
                self.stream.flush()

    def run_in_background(self) -> threading.Thread:
        def loop() -> None:
            while not self._stop.wait(self.every_s):
                self.print_lines(self.tick())

        thread = threading.Thread(target=loop, name="sslam-watch", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()


def run_command(command: list[str], watcher: Watcher) -> int:
    """Run `command` with its output (stdout and stderr, merged) passed through line by line; returns its exit
    code. Ctrl-C reaches the command too (same process group); we wait for it to stop."""
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1,
                                   text=True, errors="replace")
    except OSError as error:
        print(f"sslam watch: error: cannot run {command[0]}: {error.strerror or error}", file=sys.stderr)
        return 127
    watcher.run_in_background()
    try:
        assert process.stdout is not None
        for line in process.stdout:
            watcher.note_output(line)
            with watcher.lock:
                watcher.stream.write(line)
                watcher.stream.flush()
        return process.wait()
    except KeyboardInterrupt:
        return process.wait()
    finally:
        watcher.stop()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1:]
    parser = argparse.ArgumentParser(
        prog="python -m sslam.runtime.watch",
        description="Run a command (e.g. snakemake) and print, every few seconds, one line per running job "
                    "from the job logs: step/total and ETA. Without a command, only watch (Ctrl-C ends).",
        epilog="example: python -m sslam.runtime.watch --logs results/demo/logs -- snakemake --cores 2")
    parser.add_argument("--logs", type=Path, required=True, help="the study's log folder (<results>/logs)")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between looks (default: %(default)s)")
    parser.add_argument("--stale", type=float, default=120.0,
                        help="a log unchanged for this many seconds is not running (default: %(default)s)")
    args = parser.parse_args(argv)
    watcher = Watcher(args.logs, args.every, args.stale)
    if command:
        return run_command(command, watcher)
    try:
        while True:
            watcher.print_lines(watcher.tick())
            time.sleep(args.every)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
