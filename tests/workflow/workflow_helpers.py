"""Helpers for the workflow tests: run Snakemake on the study configs with data roots in a temp dir."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SHARED_AUDIOSET = Path("/work/shared/data/audioset")
SEGMENT_HEADER = "# Segments csv\n# num_ytids=0\n# YTID, start_seconds, end_seconds, positive_labels\n"


def run_snakemake(*args: str, cwd: Path = REPO, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(cwd / "workflow" / "Snakefile"), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule -> number of jobs."""
    block = output[output.index("Job stats:"):]
    counts = {}
    for line in block.splitlines()[3:]:
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def write_config(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def paper_config_with_roots(tmp_path: Path) -> dict:
    """config/config.yaml with every /data/... root replaced by an existing (empty) folder under tmp_path,
    AudioSet metadata files present (the real ones when /work/shared/data is there), results in tmp_path."""
    text = (REPO / "config" / "config.yaml").read_text()
    data_root = tmp_path / "data"
    text = text.replace("results/paper", str(tmp_path / "results")).replace(" /data/", f" {data_root}/")
    config = yaml.safe_load(text)
    metadata = Path(config["study"]["audioset"]["metadata"])
    metadata.mkdir(parents=True)
    for name in ["balanced_train_segments.csv", "unbalanced_train_segments.csv", "eval_segments.csv", "ontology.json"]:
        source = SHARED_AUDIOSET / name
        (metadata / name).write_text(source.read_text() if source.is_file() else
                                     ("[]" if name.endswith(".json") else SEGMENT_HEADER))
    for entry in config["datasets"].values():
        if entry["adapter"] != "polyphony_bins":
            Path(entry["root"]).mkdir(parents=True, exist_ok=True)
    Path(config["study"]["audioset"]["audio_dir"]).mkdir(parents=True, exist_ok=True)
    return config


@pytest.fixture
def paper_config(tmp_path) -> dict:
    return paper_config_with_roots(tmp_path)


@pytest.fixture
def demo_config(tmp_path) -> dict:
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config["study"]["results"] = str(tmp_path / "results")
    return config


def reduced_demo(results: Path, variants=("MB-UA", "SSLAM"), benchmarks=("synth_poly", "synth_polyphony")) -> dict:
    """The demo DAG shrunk to minutes: fewer variants/benchmarks, one seed, a handful of steps and clips."""
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config["study"].update(results=str(results), seeds=[0], variants=list(variants), benchmarks=list(benchmarks))
    config["study"]["tables"]["specs"] = [
        spec for spec in config["study"]["tables"]["specs"] if set(spec["benchmarks"]) <= set(benchmarks)]
    # The sine-and-noise corpus: the workflow tests exercise the DAG, not the instrument renderer
    # (tests/data/test_instruments.py does, on a tiny corpus).
    config["synthetic"].update(corpus="tones", pretrain_clips=24, mono_clips_per_class=10, poly_train_clips=24,
                               poly_test_clips=12, polyphony_clips=12)
    config["pretrain"]["stage1"].update(steps=4, warmup_steps=1, checkpoint_every=2, ema_anneal_steps=4, batch_size=4)
    config["pretrain"]["stage2"].update(steps=2, warmup_steps=1, checkpoint_every=1, ema_anneal_steps=2, batch_size=4)
    for benchmark in config["evaluation"]["benchmarks"].values():
        for regime in ("finetune", "linear"):
            benchmark[regime].update(steps=3, batch_size=8)
            benchmark[regime].pop("warmup_steps", None)
    return config


def planned_jobs(repo: Path, config_path: Path, *extra: str) -> tuple[set[tuple[str, str]], str]:
    """The jobs a dry run schedules, as (rule, "wildcard=value, ...") pairs, and its output."""
    result = run_snakemake("--configfile", str(config_path), "-n", *extra, cwd=repo)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    jobs = set()
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        match = re.match(r"(?:local)?rule (\w+):", block.strip())
        if match and match.group(1) != "all":
            wildcards = re.search(r"^\s*wildcards: (.*)$", block, flags=re.MULTILINE)
            jobs.add((match.group(1), wildcards.group(1).strip() if wildcards else ""))
    return jobs, output


def rerun_scope_study(results: str | Path = "results") -> dict:
    """The reduced study the re-run tests finish once: two Stage-2 variants (one with, one without the SRL),
    an accuracy benchmark and a per-bin mAP benchmark, both regimes, one seed, the random baseline."""
    config = reduced_demo(Path(results), variants=("MB-UA", "SSLAM"), benchmarks=("synth_mono", "synth_polyphony"))
    config["study"]["tables"]["specs"] = [
        {"name": "table1", "title": "synth_mono, both regimes", "benchmarks": ["synth_mono"], "regimes": ["linear", "finetune"]},
        {"name": "table3", "title": "mAP per number of distinct sound events", "kind": "polyphony_bins",
         "benchmarks": ["synth_polyphony"], "regimes": ["linear", "finetune"]}]
    return config


@pytest.fixture(scope="session")
def finished_study(tmp_path_factory):
    """A copy of the repository in which the re-run-scope study ran to the end (relative results folder)."""
    repo = copy_repository(tmp_path_factory.mktemp("study") / "repo")
    config_path = write_config(rerun_scope_study(), repo / "reduced.yaml")
    result = run_snakemake("--configfile", str(config_path), "--cores", "2", cwd=repo, timeout=1800)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return repo, config_path


def copy_repository(target: Path, names=("sslam", "workflow", "config", "envs", "profiles", "slurm")) -> Path:
    """A working copy of what the workflow needs, so a test can edit code and results freely."""
    import shutil

    for name in names:
        shutil.copytree(REPO / name, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target
