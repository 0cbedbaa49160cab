"""The training loop: weighted sampling draws, learning on an easy problem, evaluation points, compile."""
import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from sslam.evaluation.augment import TrainingAugmentation
from sslam.evaluation.config import FinetuneConfig, LinearProbeConfig
from sslam.evaluation.heads import ClassificationHead, EncoderClassifier
from sslam.evaluation.training import Fitter, TrainingData, epoch_loader, fit, predict, steps_per_epoch
from sslam.model.encoder import AudioEncoder, EncoderConfig

TINY = EncoderConfig(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, max_time_patches=4, num_mel_bins=32)


def easy_data(clips=32):
    """Class 0 clips are quiet in the low bins, class 1 clips in the high bins."""
    torch.manual_seed(0)
    labels = torch.arange(clips) % 2
    fbank = torch.randn(clips, 32, 32) * 0.1
    fbank[labels == 0, :, :16] += 1.0
    fbank[labels == 1, :, 16:] += 1.0
    return TensorDataset(fbank, torch.nn.functional.one_hot(labels, 2).float())


def test_weighted_sampling_draws_without_replacement_and_never_zero_weight_clips():
    dataset = easy_data(20)
    weights = torch.ones(20, dtype=torch.float64)
    weights[:5] = 0
    regime = FinetuneConfig(steps=3, batch_size=4, weighted_sampling=12)
    data = TrainingData(dataset, torch.full((20,), 32), weights)
    drawn = torch.cat([index for _, _, index in epoch_loader(data, regime, torch.Generator().manual_seed(0), 0)])
    assert len(drawn) == 12 and len(set(drawn.tolist())) == 12 and drawn.min() >= 5
    assert steps_per_epoch(20, regime) == 3 and steps_per_epoch(20, FinetuneConfig(batch_size=8)) == 3


def test_fine_tuning_learns_an_easy_problem_and_calls_evaluation_points():
    data = easy_data()
    torch.manual_seed(0)
    classifier = EncoderClassifier(AudioEncoder(TINY), ClassificationHead(32, 2))
    regime = FinetuneConfig(steps=30, batch_size=8, lr=1e-2, layer_decay=0.9, mixup=0.0, drop_path=0.0)
    augment = TrainingAugmentation.from_regime(regime, norm_std=1.0)
    points = []
    result = fit(classifier, TrainingData(data, torch.full((32,), 32)), regime, "ce", augment, total_steps=30,
                 warmup_steps=3, device=torch.device("cpu"), seed=0,
                 on_evaluation_point=lambda step, epoch: points.append((step, epoch)), evaluation_interval=8)
    assert result.steps == 30 and result.epochs == 30 / 4
    assert points == [(8, 2.0), (16, 4.0), (24, 6.0), (30, 7.5)]
    assert sum(result.losses[-5:]) / 5 < 0.8 * sum(result.losses[:5]) / 5
    targets, scores = predict(classifier, data, 16, torch.device("cpu"), "multiclass")
    assert (scores.argmax(1) == targets.argmax(1)).mean() > 0.9


def test_linear_probe_leaves_the_backbone_unchanged():
    data = easy_data(16)
    torch.manual_seed(0)
    encoder = AudioEncoder(TINY)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    classifier = EncoderClassifier(encoder, ClassificationHead(32, 2), frozen_backbone=True)
    head_before = classifier.head.linear.weight.clone()
    regime = LinearProbeConfig(steps=4, batch_size=8)
    fit(classifier, TrainingData(data, torch.full((16,), 32)), regime, "bce",
        TrainingAugmentation.from_regime(regime, 1.0), 4, 0, torch.device("cpu"), seed=0)
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(value, before[key])
    assert not torch.equal(classifier.head.linear.weight, head_before)


@pytest.mark.slow
def test_compiled_classifier_trains_and_predicts_like_eager():
    import torch._inductor.config as inductor

    runs = {}
    with inductor.patch(fallback_random=True):  # the compiler's own random numbers differ by design
        for compiled in (False, True):
            data = easy_data(16)
            torch.manual_seed(0)
            classifier = EncoderClassifier(AudioEncoder(TINY), ClassificationHead(32, 2))
            regime = FinetuneConfig(steps=3, batch_size=8, lr=1e-2, compile=compiled)
            fitter = Fitter(classifier, TrainingData(data, torch.full((16,), 32)), regime, "ce",
                            TrainingAugmentation.from_regime(regime, 1.0), 3, 1, torch.device("cpu"), seed=0)
            losses = fitter.run().losses
            _, scores = predict(classifier, data, 8, torch.device("cpu"), "multiclass", forward=fitter.forward)
            runs[compiled] = (losses, scores)
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-5)
    np.testing.assert_allclose(runs[True][1], runs[False][1], rtol=1e-4, atol=1e-6)


class NanAfter(torch.utils.data.Dataset):
    """easy_data whose clips turn NaN from the `first_bad`-th item read on."""

    def __init__(self, first_bad: int) -> None:
        self.data, self.first_bad, self.reads = easy_data(16), first_bad, 0

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        self.reads += 1
        fbank, target = self.data[index]
        return (fbank * float("nan") if self.reads > self.first_bad else fbank), target


def test_losses_are_read_in_batches_and_a_nan_stops_naming_its_step_after_logging_the_ones_before():
    torch.manual_seed(0)
    classifier = EncoderClassifier(AudioEncoder(TINY), ClassificationHead(32, 2))
    regime = FinetuneConfig(steps=8, batch_size=4, mixup=0.0, drop_path=0.0, log_every=5)
    fitter = Fitter(classifier, TrainingData(NanAfter(first_bad=3 * 4), torch.full((16,), 32)), regime, "ce",
                    TrainingAugmentation.from_regime(regime, norm_std=1.0), 8, 1, torch.device("cpu"), seed=0)
    records = []
    with pytest.raises(FloatingPointError, match="non-finite training loss at step 3"):
        fitter.run(log=records.append)
    # Read after step 1 (a run's first step) and at step 5: steps 1-3 logged, the NaN of step 4 stops the run.
    assert [record["step"] for record in records] == [1, 2, 3] and fitter.step == 5
    assert all(np.isfinite(record["loss"]) for record in records)


def test_on_steady_follows_every_kind_of_step_of_the_run():
    data = TrainingData(easy_data(16), torch.full((16,), 32))
    regime = FinetuneConfig(steps=12, batch_size=4, mixup=0.0, drop_path=0.0, log_every=100)
    for evaluation, checkpoint_every, expected in ((None, None, 1), (5, None, 5), (5, 7, 7), (None, 20, 1)):
        torch.manual_seed(0)
        classifier = EncoderClassifier(AudioEncoder(TINY), ClassificationHead(32, 2))
        calls = []
        fitter = Fitter(classifier, data, regime, "ce", TrainingAugmentation.from_regime(regime, norm_std=1.0), 12, 1,
                        torch.device("cpu"), seed=0, on_steady=lambda: calls.append(fitter.step),
                        on_steady_end=lambda: calls.append(("end", fitter.step)))
        fitter.run(on_evaluation_point=(lambda step, epoch: None) if evaluation else None,
                   evaluation_interval=evaluation, checkpoint=lambda: None, checkpoint_every=checkpoint_every)
        assert calls == [expected, ("end", 12)], (evaluation, checkpoint_every, calls)
