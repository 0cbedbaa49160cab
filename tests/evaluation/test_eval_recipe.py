"""The paper study's recipe (config/config.yaml) against the official scripts and paper Table 8: the effective
update counts of SPASS, per-regime normalisation of Degrees of Polyphony, AS-20K linear length, hold-outs."""
from pathlib import Path

import pytest

from sslam.data.config import DatasetConfig
from sslam.evaluation.config import BenchmarkConfig
from sslam.evaluation.rounds import RoundSettings, round_lengths
from sslam.evaluation.run import dataset_config
from sslam.runtime.configuration import from_dict, load_yaml, section

CONFIG = load_yaml(Path(__file__).resolve().parents[2] / "config" / "config.yaml")
SPASS = ["spass_square", "spass_park", "spass_waterfront", "spass_street", "spass_market"]


def benchmark(name: str) -> BenchmarkConfig:
    return from_dict(BenchmarkConfig, section(CONFIG, f"evaluation.benchmarks.{name}"), where=name)


def lengths(name: str, regime: str, num_train: int) -> tuple[int, int]:
    config = benchmark(name)
    settings = RoundSettings(config, config.regime(regime), regime, {}, 0.0, 1.0, device=None)
    _, total, warmup = round_lengths(num_train, settings)
    return total, warmup


@pytest.mark.parametrize("name", SPASS)
@pytest.mark.parametrize("num_train", [3750, 3374])   # the official training set, and what the hold-out leaves
def test_spass_runs_the_official_3906_updates(name, num_train):
    assert 3750 * 50 // 48 == 3906
    assert lengths(name, "finetune", num_train) == (3906, 390)       # finetuning_SPASS.sh
    assert lengths(name, "linear", num_train) == (3906, 0)           # linear_eval_SPASS.sh: no warm-up


def test_degrees_of_polyphony_normalises_each_regime_with_its_table8_pair():
    polyphony = dataset_config(CONFIG, "polyphony")
    assert polyphony.normalisation("finetune") == (-5.659, 2.620)
    assert polyphony.normalisation("linear") == (-5.216, 3.376)
    spass = dataset_config(CONFIG, "spass_market")                   # one pair for both elsewhere
    assert spass.normalisation("finetune") == spass.normalisation("linear") == (-5.275, 3.268)


def test_as20k_linear_follows_table8_94_epochs_with_10_warmup():
    per_epoch = -(-19512 // 48)                                       # AS-20K training clips after the hold-out
    assert lengths("as20k", "linear", 19512) == (94 * per_epoch, 10 * per_epoch)
    assert lengths("as20k", "finetune", 19512) == (40_000, 4_000)    # Table 7


def test_benchmarks_without_an_official_validation_split_hold_one_out():
    holdouts = {name: dataset_config(CONFIG, name).holdout for name in section(CONFIG, "datasets")}
    assert all(holdouts[name] > 0 for name in ["as2m", "as20k", "esc50", "idmt_desed_fl", *SPASS])
    # official validation lists (Speech Commands, URBAN-SED), test-only sets and the pooled polyphony set: none
    assert all(holdouts[name] == 0 for name in ["ks1", "ks2", "urbansed", "audioset_eval", "polyphony"])


def test_short_clips_are_dropped_as_officially_by_default():
    assert DatasetConfig(adapter="esc50").min_samples == 10_000
    assert all(dataset_config(CONFIG, name).min_samples == 10_000 for name in section(CONFIG, "datasets"))
