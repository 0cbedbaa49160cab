"""Shared fixtures of the data tests: one tiny synthetic corpus per test session."""
from __future__ import annotations

import pytest

from sslam.data.synthetic import SyntheticConfig, generate_corpus

TINY = dict(clip_seconds=1.0, pretrain_clips=12, mono_clips_per_class=2, poly_train_clips=10, poly_test_clips=6,
            polyphony_clips=8, polyphony_max_events=4, odd_format_every=4)


@pytest.fixture(scope="session")
def tiny() -> dict:
    """The tiny corpus's SyntheticConfig overrides (a copy: tests may change it)."""
    return dict(TINY)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """{set name: manifest path} of a 1-s-clip corpus, small enough to cache in well under a second."""
    return generate_corpus(SyntheticConfig(**TINY), tmp_path_factory.mktemp("corpus"))
