"""`sslam tables` replaces its set of files as a whole (issue 18.7): a run killed half-way leaves the previous
tables exactly as they were, never 12 of 14 files or old and new tables mixed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from sslam.cli import main as sslam_main
from sslam.runtime.io import SET_RECORD

from test_tables import study_config, write_metrics

REPO = Path(__file__).resolve().parents[2]
# `sslam tables` in a child process that is SIGKILLed when it reaches the loss plot, after it wrote the CSVs,
# every table and the significance tables: the moment a time limit or an OOM killer could pick.
KILLED_RUN = """
import os, signal, sys
import sslam.tables.plots as plots
plots.plot_pretrain_losses = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
from sslam.cli import main
sys.exit(main(sys.argv[1:]))
"""


def metrics_files(root: Path, shift: float) -> list[Path]:
    files = []
    for variant, base in [("MB-UA", 0.60), ("SSLAM", 0.64), ("stage1", 0.50)]:
        for seed in (0, 1):
            for regime in ("linear", "finetune"):
                files.append(write_metrics(root, "spass_market", regime, variant, seed, base + shift + 0.01 * seed))
            files.append(write_metrics(root, "polyphony", "linear", variant, seed, base + shift,
                                       per_bin={"{2,3}": base, "{4,5}": base + 0.05}))
    return files


def arguments(config: Path, files: list[Path], out: Path, losses: Path) -> list[str]:
    return ["tables", "--config", str(config), "--metrics", *map(str, files), "--out", str(out),
            "--pretrain-metrics", str(losses), "--replicates", "0"]


def contents(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def test_a_killed_run_leaves_the_previous_tables_untouched(tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study_config(tmp_path)))
    losses = tmp_path / "pretrain" / "stage1" / "metrics.jsonl"
    losses.parent.mkdir(parents=True)
    losses.write_text("".join(json.dumps({"step": s, "loss": 2.0 / s}) + "\n" for s in range(1, 6)))
    out = tmp_path / "tables"
    assert sslam_main(arguments(config, metrics_files(tmp_path / "old", 0.0), out, losses)) == 0
    (out / "mlflow-logged.txt").write_text("written by another job\n")      # not one of the tables' files
    before = contents(out)
    assert len(before) >= 14

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN,
                             *arguments(config, metrics_files(tmp_path / "new", 0.2), out, losses)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert contents(out) == before                      # the whole old set, byte for byte, and nothing new

    assert sslam_main(arguments(config, metrics_files(tmp_path / "new", 0.2), out, losses)) == 0
    after = contents(out)
    assert set(after) == set(before)
    assert after["runs.csv"] != before["runs.csv"] and after["mlflow-logged.txt"] == before["mlflow-logged.txt"]
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".tables.")]  # no staging left over


def test_tables_a_smaller_study_no_longer_makes_are_removed_and_other_files_stay(tmp_path):
    files = metrics_files(tmp_path / "eval", 0.0)
    out = tmp_path / "tables"
    config = study_config(tmp_path)
    assert sslam_main(["tables", "--config", str(write(tmp_path / "a.yaml", config)), "--metrics", *map(str, files),
                       "--out", str(out), "--replicates", "0"]) == 0
    (out / "notes.txt").write_text("mine\n")
    assert (out / "table3.md").is_file()
    config["study"]["tables"]["specs"] = config["study"]["tables"]["specs"][:1]      # table2 only
    assert sslam_main(["tables", "--config", str(write(tmp_path / "b.yaml", config)), "--metrics", *map(str, files),
                       "--out", str(out), "--replicates", "0"]) == 0
    assert not (out / "table3.md").exists() and (out / "table2.md").is_file()
    assert (out / "notes.txt").read_text() == "mine\n"
    assert "table2.md" in json.loads((out / SET_RECORD).read_text())["files"]


def write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def test_an_output_folder_given_as_a_link_stays_a_link(tmp_path):
    files = metrics_files(tmp_path / "eval", 0.0)
    real = tmp_path / "store" / "tables"
    real.mkdir(parents=True)
    link = tmp_path / "tables"
    link.symlink_to(real)
    config = write(tmp_path / "a.yaml", study_config(tmp_path))
    for _ in range(2):
        assert sslam_main(["tables", "--config", str(config), "--metrics", *map(str, files), "--out", str(link),
                           "--replicates", "0"]) == 0
    assert link.is_symlink() and (real / "table2.md").is_file()
