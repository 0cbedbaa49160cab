"""Fixtures of the tracking tests: a tiny cached benchmark, a study YAML, and ONE initialised MLflow store
per session (creating a SQLite store runs MLflow's migrations, seconds each), copied for every test."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

TARGET = 112


@pytest.fixture(autouse=True)
def no_environment_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SSLAM_TRACKING_PATIENCE", raising=False)


@pytest.fixture(scope="session")
def results(tmp_path_factory) -> Path:
    """<results>/cache/{tiny_pretrain,tiny_poly}/shard-000-of-001.h5 of a 1-s-clip synthetic corpus."""
    from sslam.data.cache import build_shard
    from sslam.data.synthetic import SyntheticConfig, generate_set

    root = tmp_path_factory.mktemp("tracking_study")
    corpus = SyntheticConfig(seed=5, clip_seconds=1.0, pretrain_clips=8, poly_train_clips=16, poly_test_clips=12,
                             odd_format_every=0)
    for name, subset in (("tiny_pretrain", "pretrain"), ("tiny_poly", "poly")):
        manifest = generate_set(subset, corpus, root / "data")
        build_shard(manifest, root / "results" / "cache" / name / "shard-000-of-001.h5", target_length=TARGET)
    return root / "results"


@pytest.fixture
def study(results, tmp_path) -> Path:
    datasets = {name: {"adapter": "synthetic", "options": {"set": name}, "target_length": TARGET, "norm_mean": None,
                       "norm_std": None} for name in ("tiny_pretrain", "tiny_poly")}
    config = {"study": {"name": "t", "results": str(results), "pretrain_dataset": "tiny_pretrain"},
              "datasets": datasets,
              "model": {"encoder": {"embed_dim": 32, "depth": 1, "num_heads": 2, "max_time_patches": 7},
                        "decoder": {"depth": 1, "groups": 4}},
              "objective": {"clones_stage1": 2},
              "pretrain": {"stage1": {"steps": 2, "warmup_steps": 0, "batch_size": 2, "num_workers": 0,
                                      "checkpoint_every": 2, "log_every": 1}},
              "evaluation": {"benchmarks": {"poly": {"dataset": "tiny_poly", "eval_split": "test", "num_workers": 0,
                                                     "linear": {"steps": 2, "batch_size": 4}}}}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def initialised_store(tmp_path_factory) -> Path:
    """A folder holding mlflow.db, artifacts/ and tracking.json, made once by `sslam track init`."""
    from sslam.cli import main

    folder = tmp_path_factory.mktemp("store") / "mlflow"
    folder.mkdir()
    assert main(["track", "init", "--uri", f"sqlite:///{folder}/mlflow.db", "--experiment", "exp", "--study", "demo",
                 "--out", str(folder / "tracking.json")]) == 0
    return folder


@pytest.fixture
def store(initialised_store, tmp_path) -> Path:
    """A private copy of the initialised store; returns its tracking.json."""
    copy = Path(shutil.copytree(initialised_store, tmp_path / "mlflow"))
    return copy / "tracking.json"
