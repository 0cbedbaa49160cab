"""The rest of the paper through the workflow (issue: MixIT, Stage-1 variants, Table 4): a reduced study with
the variants MB-UA, SSLAM and MixIT and one Stage-1 variant (Stage 1 on mixed audio, with its own SSLAM)
runs end to end, and the tables hold Table 4's layout and the MixIT rows."""
from __future__ import annotations

from pathlib import Path

import pytest

from workflow_helpers import copy_repository, reduced_demo, run_snakemake, write_config

pytestmark = pytest.mark.slow


def test_mixit_and_a_stage1_variant_end_to_end(tmp_path):
    repo = copy_repository(tmp_path / "repo")
    config = reduced_demo(Path("results"), variants=("MB-UA", "SSLAM", "MixIT"), benchmarks=("synth_poly",))
    config["study"].update(regimes=["finetune"], baselines=[], stage1_variants=["mixed"])
    config["stage1_variants"] = {"mixed": {"stage1_input": "mixed", "mix_mode": "full", "stage2": ["SSLAM"]}}
    config["study"]["tables"]["specs"] = [
        {"name": "table4", "layout": "table4", "benchmarks": ["synth_poly"],
         "labels": {"stage1@mixed": "Stage 1 with mixed audio", "SSLAM@mixed": "SSLAM from Stage 1 on mixed audio"}},
        {"name": "mixit", "layout": "mixit", "benchmarks": ["synth_poly"]},
    ]
    config_path = write_config(config, repo / "paper-variants.yaml")
    result = run_snakemake("--configfile", str(config_path), "--cores", "2", cwd=repo, timeout=1800)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]

    results = repo / "results"
    for model in ("stage1", "stage1@mixed", "MB-UA", "SSLAM", "MixIT", "SSLAM@mixed"):
        assert (results / "pretrain" / model / "checkpoint.pt").is_file(), model
        assert (results / "eval" / model / "synth_poly" / "finetune" / "seed0" / "metrics.json").is_file(), model
    table4 = (results / "tables" / "table4.md").read_text()
    assert "Stage 1 with mixed audio" in table4 and "SSLAM from Stage 1 on mixed audio" in table4
    mixit = (results / "tables" / "mixit.md").read_text()
    assert "MixIT" in mixit and "SSLAM" in mixit
    # The MixIT head trained in Stage 2 and stayed out of the checkpoint the evaluation read.
    log = (results / "logs" / "pretrain" / "MixIT.log").read_text()
    assert "mixit" in log.lower()
