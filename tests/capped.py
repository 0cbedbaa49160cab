"""Run code in a child process whose address space is capped, as `ulimit -v` would (the memory tests of issue 18).

Importing torch alone maps about 3.5 GB of address space, so a fixed `ulimit -v` would measure torch, not the
code under test. The child therefore runs `preamble` (the imports) first, then caps its address space at what
it has mapped plus `budget` (RLIMIT_AS, which is what `ulimit -v` sets), then runs `body`. An allocation the
budget cannot hold fails inside the child (MemoryError, or torch's RuntimeError) instead of swapping or
OOM-killing the shared machine. The child's last stdout line is a JSON object: its peak resident memory
(VmHWM) and what it was right after the imports, in bytes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, resource, sys

def status(key):
    with open("/proc/self/status") as handle:
        return int(next(line for line in handle if line.startswith(key + ":")).split()[1]) * 1024

exec(compile(sys.argv[1], "<preamble>", "exec"))
imported_rss = status("VmRSS")
cap = status("VmSize") + int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
try:
    exec(compile(sys.argv[2], "<body>", "exec"))
finally:
    sys.stderr.flush()
    print("\n" + json.dumps({"peak_rss": status("VmHWM"), "imported_rss": imported_rss, "cap": cap}), flush=True)
"""


@dataclass
class CappedRun:
    returncode: int
    stdout: str
    stderr: str
    peak_rss: int          # bytes, the child's whole life
    imported_rss: int      # bytes, after the preamble (torch and friends)

    @property
    def growth(self) -> int:
        """Peak resident memory above what the imports left: what the code under test cost."""
        return self.peak_rss - self.imported_rss

    def describe(self) -> str:
        return (f"exit {self.returncode}, peak {self.peak_rss / 2**20:.0f} MiB (+{self.growth / 2**20:.0f} MiB after "
                f"the imports)\nstdout: {self.stdout[-2000:]}\nstderr: {self.stderr[-3000:]}")


def run_capped(body: str, preamble: str = "import torch", budget: int = 2**30, cwd: Path | None = None,
               timeout: float = 300, code: Path = REPO) -> CappedRun:
    """Run `body` after `preamble` in a fresh interpreter capped at its imports' address space + `budget` bytes;
    `code` is the checkout whose `sslam` it imports (benchmarks/size_bombs.py measures another one)."""
    # Arrow (pandas strings) reserves large address ranges for its own allocator: use malloc under the cap.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(code),
           "ARROW_DEFAULT_MEMORY_POOL": "system"}
    result = subprocess.run([sys.executable, "-c", _CHILD, preamble, body, str(budget)], capture_output=True,
                            text=True, timeout=timeout, cwd=cwd or code, env=env)
    lines = result.stdout.rstrip().splitlines()
    try:
        figures = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        figures = {"peak_rss": -1, "imported_rss": -1}  # the child died before it could report (a crash)
    return CappedRun(result.returncode, "\n".join(lines[:-1]), result.stderr, figures["peak_rss"],
                     figures["imported_rss"])


def cli_body(*argv: str) -> str:
    """A body that runs `sslam ARGV...` as the command line would and exits with its code."""
    return f"from sslam.cli import main\nraise SystemExit(main({list(map(str, argv))!r}))"
