"""`sslam plan`: job counts, GPU-hours, cache size and memory from the study config, without torch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sslam.runtime.errors import ConfigError
from sslam.model.config import DecoderConfig, EncoderConfig
from sslam.objective.config import ObjectiveConfig
from sslam.study.plan import GPUS, format_plan, plan_study, pretraining_step_flops
from sslam.study.resources import Executor
from sslam.study.dag import Study

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def demo_study() -> Study:
    return Study(yaml.safe_load((REPO / "config" / "demo.yaml").read_text()))


def test_the_official_step_costs_what_the_spec_derives():
    """spec/ecosystem.md §6.2: EAT ≈ 1.08 TFLOP per clip (16 clones + teacher), SSLAM ≈ 1.23 per clip."""
    stage1 = pretraining_step_flops(EncoderConfig(), DecoderConfig(), ObjectiveConfig(), 1, 12, 1024)
    stage2 = pretraining_step_flops(EncoderConfig(), DecoderConfig(), ObjectiveConfig(), 2, 12, 1024)
    assert stage1["kept"] == 102 and stage1["sequences"] == 192 and stage2["sequences"] == 192
    assert stage1["total"] / 12 / 1e12 == pytest.approx(1.08, rel=0.05)
    assert stage2["total"] / 12 / 1e12 == pytest.approx(1.23, rel=0.05)


def test_plan_of_the_demo(demo_study):
    plan = plan_study(demo_study, "H100", 0.35)
    pretraining = [job for job in plan.jobs if job.group == "pretrain"]
    evaluation = [job for job in plan.jobs if job.group == "evaluate"]
    assert [job.name for job in pretraining] == [f"pretrain:{m}" for m in demo_study.pretrained_models]
    assert sum(job.jobs for job in evaluation) == len(demo_study.evaluation_jobs())
    # Cache: clips × frames × mel bins × 2 bytes (float16).
    clips = demo_study.config["synthetic"].get("pretrain_clips", 256)
    assert plan.cache_gib["synth_pretrain"] == pytest.approx(clips * 192 * 128 * 2 / 2**30)
    slower = plan_study(demo_study, "H100", 0.175)
    assert slower.gpu_hours == pytest.approx(2 * plan.gpu_hours)
    assert all(job.peak_memory_gib < GPUS["H100"][1] for job in plan.jobs)
    assert Executor(demo_study).planned_runtime("pretrain", {"model": "stage1"}) == 10  # tiny jobs get the floor
    assert "total:" in format_plan(plan)


def test_the_paper_plan_runs_without_data_and_without_torch():
    program = ("import sys; from sslam.study.plan import plan_study; from sslam.study.dag import Study; "
               "p = plan_study(Study.from_file('config/config.yaml', check_data_roots=False)); "
               "print(round(p.gpu_hours), 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, check=True)
    hours, torch_imported = result.stdout.split()
    assert int(hours) > 100 and torch_imported == "False"


def test_bad_arguments_are_one_line(demo_study):
    with pytest.raises(ConfigError, match="unknown GPU"):
        plan_study(demo_study, "TPU", 0.3)
    with pytest.raises(ConfigError, match="--mfu"):
        plan_study(demo_study, "H100", 1.5)


def test_runtime_auto_asks_for_the_planned_time_of_each_job():
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["study"]["resources"]["evaluate"]["runtime"] = "auto"
    study = Study(config, check_data_roots=False)
    runtime = Executor(study).job_resources("evaluate")["runtime"]

    class Wildcards(dict):
        def items(self):
            return super().items()

    as2m = runtime(Wildcards(benchmark="as2m", regime="finetune"))
    esc50 = runtime(Wildcards(benchmark="esc50", regime="linear"))
    assert as2m > 10 * esc50 >= 100


def test_scoring_every_evaluation_point_is_costed_per_benchmark():
    """Issue 19: each evaluation point scores the test and validation rows; AS-20K fine-tuning at paper size:
    20,550 clips − 5 % hold-out = 19,522 → 407 steps per epoch → 99 points over 40k steps, each scoring
    18,886 test + 1,028 validation clips, against 40k × 48 clips × 3 (forward + backward) of training."""
    study = Study.from_file(str(REPO / "config" / "config.yaml"), check_data_roots=False)
    jobs = {job.name: job for job in plan_study(study).jobs}
    assert jobs["evaluate:as20k:finetune"].scoring_share == pytest.approx(99 * (18_886 + 1_028) / (40_000 * 48 * 3))
    assert jobs["evaluate:as2m:finetune"].scoring_share < 0.1
    assert "scoring" in format_plan(plan_study(study))


def test_a_dataset_of_unknown_size_is_reported_not_dropped(demo_study, monkeypatch, tmp_path):
    import sslam.study.plan as plan_module

    real = plan_module.dataset_clips
    monkeypatch.setattr(plan_module, "dataset_clips",
                        lambda study, name: ({}, True) if name == "synth_pretrain" else real(study, name))
    plan = plan_study(demo_study, "H100", 0.35)
    assert "synth_pretrain" not in plan.cache_gib and plan.unsized == ["synth_pretrain"]
    assert "cache size unknown (no manifest yet and no published size): synth_pretrain" in format_plan(plan)


def test_an_unreadable_manifest_is_one_line_not_a_published_size(tmp_path):
    from types import SimpleNamespace

    from sslam.study.plan import dataset_clips

    manifest = tmp_path / "manifest.tsv"
    manifest.write_text("path\tlabels\nx.wav\t\n")  # no split column
    study = SimpleNamespace(manifest_path=lambda name: str(manifest),
                            config={"datasets": {"esc": {"adapter": "esc50"}}})
    with pytest.raises(ConfigError, match="cannot count the clips of esc: .*manifest.tsv"):
        dataset_clips(study, "esc")
    manifest.unlink()
    assert dataset_clips(study, "esc") == ({"train": 2_000}, True)  # no manifest yet: the published size
