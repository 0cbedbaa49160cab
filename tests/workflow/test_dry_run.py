"""Dry runs of the study DAG: every job of the paper study is listed with the right counts, the workflow
lints clean, and bad configs fail at parse time, naming the problem, before any job starts."""
from __future__ import annotations

import time

from workflow_helpers import job_counts, run_snakemake, write_config


def expected_jobs(config: dict) -> dict[str, int]:
    study = config["study"]
    models = len(study["variants"]) + (1 if study.get("evaluate_stage1", True) else 0) + len(study.get("baselines", ["random"]))
    used = {study["pretrain_dataset"]}
    for name in study["benchmarks"]:
        benchmark = config["evaluation"]["benchmarks"][name]
        used |= {benchmark["dataset"], benchmark.get("train_dataset") or benchmark["dataset"]}
    sources = [s.removesuffix(".tsv") for n in used if config["datasets"][n]["adapter"] == "polyphony_bins"
               for s in config["datasets"][n]["options"]["sources"]]
    used |= set(sources)
    return {
        "evaluate": models * len(study["benchmarks"]) * len(study["regimes"]) * len(study["seeds"]),
        "pretrain": len(study["variants"]) + (0 if study.get("stage1_checkpoint") else 1),
        "cache_shard": sum(config["datasets"][name].get("shards", 1) for name in used),
        "polyphony_source": len(sources),
        "track_init": 1,
        "tables": 1,
        "log_tables": 1,
        "all": 1,
    }


def test_paper_study_lists_every_job(paper_config, tmp_path):
    path = write_config(paper_config, tmp_path / "paper.yaml")
    started = time.perf_counter()
    result = run_snakemake("--configfile", str(path), "-n", "--quiet", "rules")
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout + result.stderr)
    for rule, count in expected_jobs(paper_config).items():
        assert counts.get(rule, 0) == count, (rule, counts)
    # The data chain of the paper: AudioSet download manifest, one manifest per real dataset, Figure 3.
    adapter_datasets = [n for n, e in paper_config["datasets"].items() if e["adapter"] != "synthetic"]
    assert counts["manifest"] == len(adapter_datasets)
    assert counts["audioset_download_manifest"] == 1 and counts["audioset_polyphony"] == 1
    assert "audioset_download" not in counts and "synth" not in counts  # download off; no synthetic data
    print(f"full paper-config dry run: {sum(counts.values())} jobs in {elapsed:.1f} s")


def test_no_torch_at_parse_time(paper_config, tmp_path):
    """The dry run of the full study never imports torch (it would cost seconds on every parse)."""
    path = write_config(paper_config, tmp_path / "paper.yaml")
    probe = tmp_path / "probe.py"
    probe.write_text("import sys, runpy\nsys.argv = ['snakemake'] + sys.argv[1:]\n"
                     "try:\n    runpy.run_module('snakemake', run_name='__main__')\nexcept SystemExit:\n    pass\n"
                     "print('TORCH-IMPORTED' if 'torch' in sys.modules else 'TORCH-FREE')\n")
    import subprocess
    import sys

    from workflow_helpers import REPO

    result = subprocess.run([sys.executable, str(probe), "--snakefile", str(REPO / "workflow" / "Snakefile"),
                             "--configfile", str(path), "-n", "--quiet", "rules"], cwd=REPO, capture_output=True, text=True)
    assert "TORCH-FREE" in result.stdout, (result.stdout + result.stderr)[-2000:]


def test_demo_dag_and_lint(demo_config, tmp_path):
    path = write_config(demo_config, tmp_path / "demo.yaml")
    result = run_snakemake("--configfile", str(path), "-n", "--quiet", "rules")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout + result.stderr)
    for rule, count in expected_jobs(demo_config).items():
        assert counts.get(rule, 0) == count, (rule, counts)
    assert counts["synth"] == 1 and "manifest" not in counts  # the demo reads no dataset from disk
    lint = run_snakemake("--configfile", str(path), "--lint")
    assert lint.returncode == 0, lint.stdout[-3000:]
    assert "Lints for" not in lint.stdout + lint.stderr, lint.stdout[-3000:]


def fails_at_parse_time(config: dict, tmp_path, *messages: str) -> None:
    path = write_config(config, tmp_path / "bad.yaml")
    result = run_snakemake("--configfile", str(path), "-n")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Job stats" not in output  # no DAG, so no job could have started
    for message in messages:
        assert message in output, output[-3000:]


def test_unknown_variant_fails(demo_config, tmp_path):
    demo_config["study"]["variants"].append("SSLAM-XL")
    index = len(demo_config["study"]["variants"]) - 1
    fails_at_parse_time(demo_config, tmp_path, f"study.variants[{index}]", "SSLAM-XL")


def test_missing_data_root_fails(paper_config, tmp_path):
    paper_config["datasets"]["esc50"]["root"] = str(tmp_path / "nowhere" / "ESC-50")
    fails_at_parse_time(paper_config, tmp_path, "datasets.esc50.root", "folder not found")


def test_seeds_as_strings_fail(demo_config, tmp_path):
    demo_config["study"]["seeds"] = ["0", "1"]  # what `--config` list parsing produces
    fails_at_parse_time(demo_config, tmp_path, "study.seeds[0]", "is not of type 'integer'")


def test_unknown_key_in_a_module_section_fails(demo_config, tmp_path):
    demo_config["pretrain"]["stage1"]["learning_rate"] = 0.1
    fails_at_parse_time(demo_config, tmp_path, "pretrain.stage1.learning_rate")


def test_list_from_command_line_config_fails_naming_the_key(demo_config, tmp_path):
    path = write_config(demo_config, tmp_path / "demo.yaml")
    result = run_snakemake("--configfile", str(path), "--config", "seeds=[0,1]", "-n")
    assert result.returncode != 0 and "Job stats" not in result.stdout
    assert "seeds" in result.stdout + result.stderr
