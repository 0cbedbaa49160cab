"""BenchmarkConfig: defaults are the official values, the paper's variants are named options."""
import pytest

from sslam.runtime.configuration import from_dict
from sslam.runtime.errors import ConfigError
from sslam.evaluation.config import BenchmarkConfig, FinetuneConfig, LinearProbeConfig


def test_official_defaults():
    finetune, linear = FinetuneConfig(), LinearProbeConfig()
    assert (finetune.total_steps(100), finetune.warmup(100)) == (40_000, 4_000)   # AS-20K script
    assert (finetune.lr, finetune.batch_size, finetune.layer_decay, finetune.drop_path) == (5e-5, 48, 0.65, 0.1)
    assert (finetune.mixup, finetune.mixup_prob, finetune.specaug_freq, finetune.grad_clip) == (0.8, 0.9, 0.2, 0.0)
    assert finetune.betas == (0.9, 0.95) and finetune.encoder_weights == "student"
    assert finetune.selection == "best_on_valid" and finetune.pooling == "cls" and finetune.head_norm
    assert (linear.total_steps(10), linear.warmup(10), linear.lr) == (500, 0, 1e-3)  # 50 epochs, no warm-up


def test_paper_linear_mode_warms_up_five_epochs_unless_told_otherwise():
    paper = LinearProbeConfig(linear_mode="paper")
    assert paper.warmup(7) == 35
    assert LinearProbeConfig(linear_mode="paper", warmup_steps=3).warmup(7) == 3


def test_finetune_warmup_defaults_to_ten_percent_of_the_length():
    assert FinetuneConfig(steps=8_000).warmup(1) == 800          # ESC-50, Table 7
    assert FinetuneConfig(epochs=94).warmup(10) == 94            # AS-20K polyphonic, 94 epochs (Table 8: 10)


def test_yaml_section_parses_and_rejects_typos_and_contradictions():
    benchmark = from_dict(BenchmarkConfig, {"dataset": "esc50", "task": "multiclass", "metric": "accuracy",
                                            "protocol": "folds", "folds": [1, 2, 3, 4, 5],
                                            "finetune": {"steps": 8000, "lr": 1e-4, "mixup": 0.0}}, where="b")
    assert benchmark.finetune.steps == 8000 and benchmark.loss(benchmark.finetune) == "ce"
    assert benchmark.regime("linear") is benchmark.linear
    with pytest.raises(ConfigError, match="b.finetune.stepz"):
        from_dict(BenchmarkConfig, {"dataset": "x", "finetune": {"stepz": 3}}, where="b")
    with pytest.raises(ConfigError, match="at most one"):
        FinetuneConfig(steps=10, epochs=2)
    with pytest.raises(ConfigError, match="does not fit"):
        BenchmarkConfig(dataset="x", task="multiclass", metric="map")
    with pytest.raises(ConfigError):
        BenchmarkConfig(dataset="x").regime("probe")
    with pytest.raises(ConfigError):
        FinetuneConfig(mixup_prob=1.5)


def test_evaluation_points_follow_the_official_cadence_and_include_the_last_step():
    regime = FinetuneConfig(epochs=50)
    assert regime.evaluation_interval(79) == 79 and regime.evaluation_points(3950, 79) == 50
    assert FinetuneConfig(steps=3906).evaluation_points(3906, 79) == 50        # 49 epochs + the last step
    assert FinetuneConfig(eval_interval_steps=2).evaluation_points(6, 3) == 3
