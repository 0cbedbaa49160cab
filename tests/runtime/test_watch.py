"""`python -m sslam.runtime.watch`: one compact line per running job, read from the job logs, while the
command's own output passes through unchanged and its exit code is kept."""
import io
import os
import subprocess
import sys
import time
from pathlib import Path

from sslam.runtime.progress import Progress
from sslam.runtime.watch import Watcher, last_progress, main

REPO = Path(__file__).resolve().parents[2]


def write_progress(log: Path, done: int, total: int) -> None:
    """A job log as a job writes it: a banner, then Progress lines."""
    log.parent.mkdir(parents=True, exist_ok=True)
    stream = io.StringIO()
    progress = Progress(total, "stage 1", stream=stream, every_s=0)
    progress.update(done, loss=3.25)
    log.write_text("host: node1\ntorch 2.x\n" + stream.getvalue())


def test_running_jobs_are_read_from_their_logs(tmp_path):
    logs = tmp_path / "logs"
    start = time.time() - 1
    write_progress(logs / "pretrain" / "stage1.log", 120, 360)
    write_progress(logs / "eval" / "SSLAM" / "synth_poly" / "linear-seed0.log", 60, 60)  # finished
    write_progress(logs / "pretrain" / "old.log", 5, 360)
    os.utime(logs / "pretrain" / "old.log", (start - 500, start - 500))  # from an earlier run
    (logs / "synth.log").write_text("no progress lines here\n")
    watcher = Watcher(logs, since=start)
    watcher.note_output("14 of 62 steps (23%) done")
    lines = watcher.tick()
    assert len(lines) == 1, lines
    assert lines[0].startswith("[running] pretrain/stage1: stage 1 step 120/360 (33%), ETA ")
    assert lines[0].endswith("(14 of 62 jobs done)")
    assert watcher.tick() == []  # unchanged: not printed again
    write_progress(logs / "pretrain" / "stage1.log", 180, 360)
    assert "step 180/360" in watcher.tick()[0]
    assert watcher.tick(now=time.time() + 1000) == []  # a log untouched for --stale seconds is not running
    progress = last_progress(logs / "pretrain" / "stage1.log", "stage1")
    assert (progress.done, progress.total, progress.finished) == (180, 360, False)


def test_a_command_runs_with_its_output_and_exit_code_and_the_running_job_is_shown(tmp_path):
    logs = tmp_path / "logs"
    job = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from sslam.runtime.progress import Progress\n"
        f"log = Path({str(logs / 'pretrain' / 'stage1.log')!r}); log.parent.mkdir(parents=True)\n"
        "print('rule pretrain:', flush=True)\n"
        "with open(log, 'w') as stream:\n"
        "    progress = Progress(40, 'stage 1', stream=stream, every_s=0)\n"
        "    for step in range(20):\n"
        "        progress.update(1); stream.flush(); time.sleep(0.1)\n"
        "print('1 of 2 steps (50%) done', flush=True)\n"
        "sys.exit(3)\n")
    result = subprocess.run([sys.executable, "-m", "sslam.runtime.watch", "--logs", str(logs), "--every", "0.3",
                             "--", sys.executable, "-c", job], capture_output=True, text=True, timeout=120,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 3, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "rule pretrain:" and "1 of 2 steps (50%) done" in lines
    running = [line for line in lines if line.startswith("[running] pretrain/stage1: stage 1 step ")]
    assert len(running) >= 2, result.stdout  # the line moves while the job runs
    assert all("/40 (" in line and "ETA" in line for line in running)


def test_a_missing_command_is_one_line(tmp_path, capsys):
    assert main(["--logs", str(tmp_path), "--", str(tmp_path / "no-such-program")]) == 127
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot run" in err[0]
