"""The fine-tuning lr of each layer-decay group, as the official optimiser runs it (AS-20K: peak 5e-5,
min_lr 1e-6, warm-up 4k of 40k steps, 12 blocks, layer decay 0.65), against values worked out by hand:

    block 11: factor 0.65       -> peak 3.25e-5 > min_lr: warm-up 1e-6 -> 3.25e-5, cosine back to 1e-6
              step 2000 (half the warm-up) and step 22000 (half the decay): 1e-6 + (3.25e-5 - 1e-6) / 2 = 1.675e-5
    block 2:  factor 0.65^10 = 0.4225^5 = 0.0134627433 -> peak 6.7314e-7 < min_lr: constant 6.7314e-7
    block 0:  factor 0.65^12 = 0.4225^6 = 0.0056880091 -> peak 2.8440e-7 < min_lr: constant 2.8440e-7
"""
import pytest
import torch

from sslam.evaluation.augment import TrainingAugmentation
from sslam.evaluation.config import FinetuneConfig
from sslam.evaluation.heads import ClassificationHead, EncoderClassifier
from sslam.evaluation.schedule import LearningRateSchedule, group_learning_rates
from sslam.evaluation.training import Fitter, TrainingData
from sslam.model.encoder import AudioEncoder, EncoderConfig
from sslam.runtime.schedules import warmup_cosine
from sslam.train.schedule import learning_rate

STEPS = (0, 2000, 4000, 22000, 39999, 40000)
BLOCK_11 = (1e-6, 1.675e-5, 3.25e-5, 1.675e-5, None, 1e-6)   # None: not worked out by hand
BLOCK_2 = (6.7314e-7,) * len(STEPS)
BLOCK_0 = (2.8440e-7,) * len(STEPS)


def _as20k_fitter(rule: str) -> Fitter:
    encoder = AudioEncoder(EncoderConfig(embed_dim=16, depth=12, num_heads=2, mlp_ratio=1.0, max_time_patches=2,
                                         num_mel_bins=32))
    classifier = EncoderClassifier(encoder, ClassificationHead(16, 3))
    regime = FinetuneConfig(layer_decay_schedule=rule)   # official AS-20K values by default
    data = TrainingData(torch.utils.data.TensorDataset(torch.zeros(4, 32, 32), torch.zeros(4, 3)),
                        torch.full((4,), 32))
    return Fitter(classifier, data, regime, "bce", TrainingAugmentation(norm_std=1.0), regime.total_steps(1),
                  regime.warmup(1), torch.device("cpu"), seed=0)


def _group_of(fitter: Fitter, parameter: torch.nn.Parameter) -> int:
    return next(index for index, group in enumerate(fitter.optimizer.param_groups)
                if any(p is parameter for p in group["params"]))


def test_official_rule_scales_only_the_peak_and_clamps_the_floor_to_it():
    fitter = _as20k_fitter("official")
    blocks = fitter.classifier.encoder.blocks
    rows = {11: BLOCK_11, 2: BLOCK_2, 0: BLOCK_0}
    for block, expected in rows.items():
        group = _group_of(fitter, blocks[block].attn.qkv.weight)
        for step, value in zip(STEPS, expected):
            if value is not None:
                assert fitter.learning_rates(step)[group] == pytest.approx(value, rel=1e-4), (block, step)
    # The head (factor 1) follows the unscaled schedule: warm-up from min_lr 1e-6 to 5e-5 and back.
    head = _group_of(fitter, fitter.classifier.head.linear.weight)
    assert [fitter.learning_rates(s)[head] for s in (0, 4000, 40000)] == pytest.approx([1e-6, 5e-5, 1e-6])


def test_scaled_rule_multiplies_the_whole_schedule_up_to_98_percent_lower():
    official, scaled = _as20k_fitter("official"), _as20k_fitter("scaled")
    group = _group_of(scaled, scaled.classifier.encoder.blocks[0].attn.qkv.weight)
    # 1e-6 x 0.0056880091 at both ends, 5e-5 x 0.0056880091 at the peak.
    assert [scaled.learning_rates(s)[group] for s in (0, 4000, 40000)] == \
        pytest.approx([5.6880e-9, 2.8440e-7, 5.6880e-9], rel=1e-4)
    ratio = scaled.learning_rates(40000)[group] / official.learning_rates(40000)[group]
    assert ratio == pytest.approx(0.0200, abs=1e-4)   # 98 % lower
    head = _group_of(scaled, scaled.classifier.head.linear.weight)
    assert scaled.learning_rates(123)[head] == official.learning_rates(123)[head]


def test_the_loop_trains_every_group_at_its_scheduled_lr():
    fitter = _as20k_fitter("official")
    fitter.total_steps = 2
    fitter.run()
    assert [group["lr"] for group in fitter.optimizer.param_groups] == fitter.learning_rates(1)


def test_one_schedule_formula_for_pretraining_and_fine_tuning():
    # Pretraining warms up from 0, fine-tuning from min_lr; both are sslam.runtime.schedules.warmup_cosine.
    for step in (0, 3, 10, 55, 110, 200):
        assert learning_rate(step, 1e-3, 10, 110, 1e-5) == warmup_cosine(step, 1e-3, 10, 110, 1e-5, 0.0)
        assert LearningRateSchedule(1e-3, 1e-6, 10, 110)(step) == warmup_cosine(step, 1e-3, 10, 110, 1e-6, 1e-6)
    assert warmup_cosine(5, 1e-3, 10, 110, floor=1e-6, warmup_start=1e-6) == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6))
    assert group_learning_rates(0, LearningRateSchedule(1e-3, 1e-6, 10, 110), [1.0, 0.5], "scaled") == \
        pytest.approx([1e-6, 5e-7])
