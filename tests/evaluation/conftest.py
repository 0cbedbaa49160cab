"""Tiny synthetic benchmark data shared by the evaluation tests: the embedded synthetic corpus
(1-s clips) cached into HDF5 shards, plus a study YAML with a tiny encoder."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from eval_helpers import TARGET_LENGTH, TINY_ENCODER


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """results/cache/<set>/shard-000-of-001.h5 for the sets mono, poly and polyphony."""
    from sslam.data.cache import build_shard
    from sslam.data.synthetic import SyntheticConfig, generate_set

    root = tmp_path_factory.mktemp("study")
    corpus = SyntheticConfig(seed=3, clip_seconds=1.0, mono_clips_per_class=3, mono_folds=3,
                             poly_train_clips=24, poly_test_clips=16, polyphony_clips=12,
                             polyphony_max_events=3, odd_format_every=0)
    for name in ("mono", "poly", "polyphony"):
        manifest = generate_set(name, corpus, root / "data")
        build_shard(manifest, root / "results" / "cache" / name / "shard-000-of-001.h5", target_length=TARGET_LENGTH)
    return root / "results"


def study_config(results: Path, benchmarks: dict, **sections) -> dict:
    datasets = {name: {"adapter": "synthetic", "options": {"set": name}, "shards": 1, "norm_mean": None,
                       "norm_std": None, "target_length": TARGET_LENGTH}
                for name in ("mono", "poly", "polyphony")}
    return {"study": {"name": "test", "results": str(results)}, "datasets": datasets,
            "model": {"encoder": dict(TINY_ENCODER)}, "evaluation": {"benchmarks": benchmarks}, **sections}


@pytest.fixture
def write_config(tmp_path, cache_dir):
    def write(benchmarks: dict, **sections) -> Path:
        path = tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump(study_config(cache_dir, benchmarks, **sections)))
        return path
    return write
