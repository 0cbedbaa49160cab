"""Every config error before any job (issue 10.6): every numeric field of every config section is
range-checked when the config is built, naming the key; the CLI checks its numbers too."""
import dataclasses
import typing

import pytest

from sslam.cli import main
from sslam.runtime.configuration import from_dict
from sslam.data.config import CacheConfig, DatasetConfig
from sslam.data.synthetic import SyntheticConfig
from sslam.runtime.errors import ConfigError
from sslam.evaluation.config import BenchmarkConfig, RegimeConfig
from sslam.audio.config import FrontEndConfig
from sslam.model.config import DecoderConfig, EncoderConfig
from sslam.objective.config import ObjectiveConfig
from sslam.train.config import TrainConfig

# (dataclass, section it is read from, required keys)
SECTIONS = {
    EncoderConfig: ("model.encoder", {}), DecoderConfig: ("model.decoder", {}),
    DatasetConfig: ("datasets.d", {"adapter": "esc50"}), CacheConfig: ("cache", {}),
    FrontEndConfig: ("front_end", {}), ObjectiveConfig: ("objective", {}),
    RegimeConfig: ("evaluation.benchmarks.b.linear", {}), BenchmarkConfig: ("evaluation.benchmarks.b", {"dataset": "d"}),
    TrainConfig: ("pretrain.stage1", {}), SyntheticConfig: ("synthetic", {}),
}
# One out-of-range value for every numeric field.
BAD = {
    EncoderConfig: dict(embed_dim=0, depth=0, num_heads=0, mlp_ratio=0.0, patch_size=0, num_mel_bins=0,
                        max_time_patches=0, norm_eps=0.0, drop_path=1.0),
    DecoderConfig: dict(depth=0, groups=0, kernel=-1, mask_noise_std=-0.1),
    DatasetConfig: dict(target_length=0, norm_mean=float("nan"), norm_std=0.0, shards=0, finetune_norm_mean=float("inf"),
                        finetune_norm_std=0.0, holdout=1.0, min_samples=-1),
    CacheConfig: dict(max_failure_fraction=1.5),
    FrontEndConfig: dict(sample_rate=0, num_mel_bins=0, frame_shift_ms=0.0, dither=-1.0, silence_dbfs=3.0),
    ObjectiveConfig: dict(mask_prob=1.0, mask_prob_adjust=-0.1, block_size=0, clones_stage1=0, clones_stage2=0,
                          local_target_layers=0, global_target_layers_stage1=-1, global_target_layers_stage2=0,
                          global_target_unmixed_layers=0, region_fraction=0.6, mix_probability=1.1,
                          norm_mean=float("inf"), norm_std=-1.0, mixit_vectors=1),
    RegimeConfig: dict(epochs=0, steps=0, warmup_epochs=-1.0, warmup_steps=-1, batch_size=0, lr=-1.0, min_lr=-1e-6,
                       weight_decay=-0.05, betas=[0.9, 1.0], layer_decay=0.0, drop_path=1.5, grad_clip=-1.0,
                       mixup=-0.1, mixup_prob=2.0, specaug_freq=1.2, specaug_time=-0.2, label_smoothing=1.5,
                       weighted_sampling=0, eval_interval_steps=0, checkpoint_every=0, log_every=0,
                       attentive_heads=0),
    BenchmarkConfig: dict(folds=[1, -2], num_workers=-1),
    TrainConfig: dict(steps=0, batch_size=0, lr=0.0, min_lr=-1.0, warmup_steps=-1, betas=[1.2, 0.95], eps=0.0,
                      weight_decay=-1.0, clip_grad_norm=-1.0, ema_start=0.0, ema_end=1.1, ema_anneal_steps=-1,
                      checkpoint_every=0, log_every=0, num_workers=-1, seed=-1),
    SyntheticConfig: dict(seed=-1, clip_seconds=0.0, sample_rate=0, pretrain_clips=-1, pretrain_events=[0, 3],
                          mono_clips_per_class=-1, mono_folds=0, poly_train_clips=-1, poly_test_clips=-1,
                          poly_events=[3, 2], polyphony_clips=-1, polyphony_max_events=0,
                          event_level_dbfs=[-10.0, 5.0], background_dbfs=0.0, odd_format_every=1, odd_sample_rate=0),
}


def numeric_fields(cls):
    hints = typing.get_type_hints(cls)
    return {f.name for f in dataclasses.fields(cls) if f.init and re_numeric(hints[f.name])}


def re_numeric(annotation):
    if annotation in (int, float):
        return True
    return any(re_numeric(arg) for arg in typing.get_args(annotation) if arg is not type(None))


@pytest.mark.parametrize("cls", list(SECTIONS), ids=lambda cls: cls.__name__)
def test_every_numeric_field_has_a_range_check(cls):
    assert numeric_fields(cls) == set(BAD[cls]), "a numeric field without a bad value in this table"


CASES = [(cls, key, value) for cls, values in BAD.items() for key, value in values.items()]


@pytest.mark.parametrize("cls, key, value", CASES, ids=[f"{c.__name__}.{k}" for c, k, _ in CASES])
def test_an_out_of_range_value_fails_when_the_config_is_read_naming_the_key(cls, key, value):
    where, required = SECTIONS[cls]
    from_dict(cls, dict(required), where=where)  # the defaults are valid
    with pytest.raises(ConfigError) as error:
        from_dict(cls, {**required, key: value}, where=where)
    assert f"{where}.{key}" in str(error.value) or (where in str(error.value) and key in str(error.value)), error.value


def test_the_linear_lr_of_a_benchmark_fails_at_parse_time():
    with pytest.raises(ConfigError, match=r"^evaluation\.benchmarks\.X\.linear\.lr: must be > 0, got -1\.0$"):
        from_dict(BenchmarkConfig, {"dataset": "d", "linear": {"lr": -1}}, where="evaluation.benchmarks.X")


def test_relations_between_fields_are_checked_too():
    with pytest.raises(ConfigError, match="min_lr"):
        from_dict(RegimeConfig, {"lr": 1e-4, "min_lr": 1e-3}, where="evaluation.benchmarks.b.finetune")
    with pytest.raises(ConfigError, match="window_type"):
        from_dict(FrontEndConfig, {"window_type": "kaiser"}, where="front_end")


@pytest.mark.parametrize("argv, option", [
    (["cache", "build", "--manifest", "m.tsv", "--out", "s.h5", "--target-length", "0"], "--target-length"),
    (["cache", "build", "--manifest", "m.tsv", "--out", "s.h5", "--target-length", "16", "--num-shards", "0"],
     "--num-shards"),
    (["cache", "build", "--manifest", "m.tsv", "--out", "s.h5", "--target-length", "16", "--shard", "-1"], "--shard"),
    (["cache", "build", "--manifest", "m.tsv", "--out", "s.h5", "--target-length", "16",
      "--max-failure-fraction", "1.5"], "--max-failure-fraction"),
    (["convert", "a.pt", "b.safetensors", "--num-heads", "0"], "--num-heads"),
])
def test_the_cli_checks_its_numbers(argv, option, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert f"argument {option}: must be" in capsys.readouterr().err
