"""sslam.study.Study: the one model of the study that the workflow and the CLI share; every config error
fails in its constructor, naming the key, without importing torch."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sslam.runtime.errors import ConfigError
from sslam.study.resources import Executor
from sslam.study.dag import RANDOM_BASELINE, STAGE1, Study, one_of, record_path

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def demo() -> dict:
    return yaml.safe_load((REPO / "config" / "demo.yaml").read_text())


def test_the_demo_study(demo):
    study = Study(demo)
    assert study.models == [STAGE1, "MB-UA", "MB-PMA", "MB-UA-PMA", "SSLAM", RANDOM_BASELINE]
    assert study.pretrained_models == [STAGE1, "MB-UA", "MB-PMA", "MB-UA-PMA", "SSLAM"]
    assert len(study.evaluation_jobs()) == 6 * 2 * 2 * 2
    assert study.used_datasets() == ["synth_pretrain", "synth_mono", "synth_poly"]  # synth_poly gives Table 3 too
    assert study.shard_paths("synth_pretrain") == ["results/demo/cache/synth_pretrain/shard-000-of-002.h5",
                                                   "results/demo/cache/synth_pretrain/shard-001-of-002.h5"]
    assert study.manifest_path("synth_mono") == "results/demo/data/synthetic/mono/manifest.tsv"
    assert study.benchmark_datasets("synth_polyphony") == ("synth_polyphony", "synth_poly")
    assert study.checkpoint("SSLAM") == "results/demo/pretrain/SSLAM/checkpoint.pt"
    assert study.checkpoint(RANDOM_BASELINE) is None


def test_job_arguments(demo):
    study = Study(demo)
    assert study.pretrain_arguments(STAGE1) == "--stage 1"
    assert study.pretrain_arguments("SSLAM") == "--stage 2 --variant SSLAM"
    assert study.pretrain_inputs("SSLAM")["init"] == study.checkpoint(STAGE1)
    assert "init" not in study.pretrain_inputs(STAGE1)
    random = study.evaluation_arguments(RANDOM_BASELINE, "synth_polyphony")
    assert random.startswith("--checkpoint random ") and "--train-shards" in random
    assert "checkpoint" not in study.evaluation_inputs(RANDOM_BASELINE, "synth_mono")
    assert Executor(study).device_argument("evaluate") == "--device cpu"


def test_gpu_jobs_say_so_and_multi_gpu_uses_torchrun(demo):
    demo["study"]["resources"]["pretrain"].update(gpu=4, threads=32)
    study = Study(demo)
    assert Executor(study).device_argument("pretrain") == "--device cuda"
    assert Executor(study).job_resources("pretrain")["gpu"] == 4
    assert "--nproc-per-node=4" in Executor(study).launcher("pretrain", "python")
    assert Executor(study).thread_environment("pretrain") == "OMP_NUM_THREADS=8 MKL_NUM_THREADS=8"
    assert "gpu" not in Executor(study).job_resources("cache")


def test_a_given_stage1_checkpoint_replaces_stage1_training(demo):
    demo["study"]["stage1_checkpoint"] = "EAT-base_epoch10_pt.pt"
    study = Study(demo)
    assert STAGE1 not in study.pretrained_models and STAGE1 in study.models
    assert study.checkpoint(STAGE1) == "EAT-base_epoch10_pt.pt" == study.pretrain_inputs("SSLAM")["init"]


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["study"]["variants"].append("SSLAM-XL"), "study.variants[4]: unknown variant 'SSLAM-XL'"),
    (lambda c: c["study"].update(seeds=["0"]), "study.seeds[0]"),
    (lambda c: c["study"].update(benchmarks=["nope"]), "study.benchmarks[0]: 'nope'"),
    (lambda c: c["pretrain"]["stage1"].update(learning_rate=0.1), "pretrain.stage1.learning_rate"),
    (lambda c: c["model"]["encoder"].update(embed_dim=30), "model.encoder"),
    (lambda c: c["datasets"]["synth_mono"].update(shards=0), "datasets.synth_mono.shards"),
    (lambda c: c["evaluation"]["benchmarks"]["synth_poly"].update(metric="bleu"), "evaluation.benchmarks.synth_poly.metric"),
    (lambda c: c["variants"].update({"X": {"base": "NOPE"}}) or c["study"]["variants"].append("X"), "variants.X.base"),
    (lambda c: c["study"]["tables"]["specs"][0]["benchmarks"].append("esc50"), "study.tables.specs[0]"),
    (lambda c: c["datasets"]["synth_poly"].update(holdout=0.1), "datasets.synth_poly.holdout: the synthetic corpus"),
    (lambda c: c["datasets"]["synth_poly"].update(holdout=1.5), "datasets.synth_poly.holdout"),
])
def test_config_errors_name_the_key(demo, edit, message):
    edit(demo)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Study(demo)


def test_missing_data_roots_fail_unless_not_checked(demo, tmp_path):
    demo["datasets"]["esc50"] = {"adapter": "esc50", "root": str(tmp_path / "nowhere")}
    demo["evaluation"]["benchmarks"]["esc50"] = {"dataset": "esc50", "task": "multiclass", "metric": "accuracy"}
    demo["study"]["benchmarks"].append("esc50")
    with pytest.raises(ConfigError, match="datasets.esc50.root: folder not found"):
        Study(demo)
    Study(demo, check_data_roots=False)


def test_building_the_study_does_not_import_torch():
    program = ("import sys; from sslam.study.dag import Study; Study.from_file('config/config.yaml', check_data_roots=False); "
               "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_path_helpers():
    assert record_path("results/x/checkpoint.pt") == "results/x/checkpoint.code.json"
    assert record_path("results/eval/a/metrics.json") == "results/eval/a/metrics.code.json"
    import re

    assert re.fullmatch(one_of(["MB-UA", "SSLAM"]), "MB-UA") and not re.fullmatch(one_of(["MB-UA"]), "MB")
    assert not re.fullmatch(one_of([]), "")


def test_the_config_file_is_rewritten_only_when_it_changes(demo, tmp_path):
    study = Study(copy.deepcopy(demo))
    path = tmp_path / "study-config.yaml"
    study.write_config(path)
    stamp = path.stat().st_mtime_ns
    study.write_config(path)
    assert path.stat().st_mtime_ns == stamp


def test_stage1_variants_have_their_own_stage2_descendants(demo):
    demo["study"]["variants"] = ["MB-UA", "SSLAM"]
    demo["study"]["stage1_variants"] = ["mixed75"]
    demo["stage1_variants"] = {"mixed75": {"stage1_input": "mixed", "mix_mode": "full", "mix_probability": 0.75}}
    study = Study(demo)
    assert study.pretrained_models == ["stage1", "stage1@mixed75", "MB-UA", "SSLAM", "MB-UA@mixed75", "SSLAM@mixed75"]
    assert study.pretrain_arguments("stage1@mixed75") == "--stage 1 --variant mixed75"
    assert study.pretrain_arguments("SSLAM@mixed75") == "--stage 2 --variant SSLAM"
    assert study.pretrain_inputs("SSLAM@mixed75")["init"] == "results/demo/pretrain/stage1@mixed75/checkpoint.pt"
    assert "stage1_variants.mixed75" in study.pretrain_settings("stage1@mixed75")
    demo["stage1_variants"]["mixed75"]["stage2"] = ["SSLAM"]
    assert Study(demo).stage2_models == ["MB-UA", "SSLAM", "SSLAM@mixed75"]
    demo["stage1_variants"]["mixed75"]["mix_probability"] = 1.5
    with pytest.raises(ConfigError, match="stage1_variants.mixed75"):
        Study(demo)
    demo["study"]["stage1_variants"] = ["nope"]
    with pytest.raises(ConfigError, match=r"study.stage1_variants\[0\]: 'nope'"):
        Study(demo)


def test_multi_node_pretraining_runs_one_torchrun_per_node(demo):
    demo["study"]["resources"]["pretrain"].update(gpu=4, nodes=2, threads=32)
    study = Study(demo)
    command = Executor(study).launcher("pretrain", '"$SSLAM_PYTHON"')
    assert command.startswith("TORCHELASTIC_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 srun --nodes=2 ")
    assert "--nnodes=2 --nproc-per-node=4 --rdzv-backend=c10d" in command
    assert '--rdzv-endpoint=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):29500' in command
    assert command.endswith("-m sslam.cli")
    resources = Executor(study).job_resources("pretrain")
    assert resources["nodes"] == resources["tasks"] == 2 and "gpu" not in resources
    assert resources["slurm_extra"] == "'--signal=USR1@300 --gpus-per-node=4 --ntasks-per-node=1'"
    with pytest.raises(ConfigError, match="nodes"):
        demo["study"]["resources"]["pretrain"]["nodes"] = 0
        Study(demo)
