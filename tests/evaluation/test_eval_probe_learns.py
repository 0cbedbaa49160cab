"""Regression: the linear probe must learn a trivially separable multiclass set.

A randomly initialised post-norm encoder (0.02-std weights) gives a CLS token that varies by
well under 1 % across clips. The per-clip LayerNorm + 0.02-init Linear head then learns only the
class bias and predicts a single class (accuracy exactly 1/num_classes: the `synth_mono` bug).
`feature_norm: batch` standardises each feature across clips so the head sees the differences.
"""
import pytest
import torch
from torch.utils.data import Dataset

from eval_helpers import TARGET_LENGTH, TINY_ENCODER
from sslam.evaluation.augment import TrainingAugmentation
from sslam.evaluation.config import BenchmarkConfig, LinearProbeConfig
from sslam.evaluation.heads import ClassificationHead
from sslam.evaluation.rounds import RoundSettings, build_classifier
from sslam.evaluation.training import TrainingData, fit, predict
from sslam.model.encoder import AudioEncoder, EncoderConfig

NUM_CLASSES = 4


class BandDataset(Dataset):
    """Class c = a loud band of mel bins [32c, 32c + 32) over low noise: separable by eye."""

    def __init__(self, clips_per_class: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        labels = torch.arange(NUM_CLASSES).repeat_interleave(clips_per_class)
        fbank = 0.2 * torch.randn(len(labels), TARGET_LENGTH, 128, generator=generator)
        for index, label in enumerate(labels.tolist()):
            fbank[index, :, 32 * label:32 * label + 32] += 1.0
        self.fbank, self.targets = fbank, torch.nn.functional.one_hot(labels, NUM_CLASSES).float()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.fbank[index], self.targets[index]


def probe_accuracy(regime: LinearProbeConfig, seed: int = 0) -> float:
    torch.manual_seed(seed)
    encoder = AudioEncoder(EncoderConfig(**TINY_ENCODER))
    benchmark = BenchmarkConfig(dataset="bands", task="multiclass", metric="accuracy", num_workers=0)
    settings = RoundSettings(benchmark, regime, "linear", {}, 0.0, 1.0, torch.device("cpu"), seed=seed)
    classifier = build_classifier(encoder, NUM_CLASSES, settings)
    train, test = BandDataset(8, seed=1), BandDataset(4, seed=2)
    data = TrainingData(train, torch.full((len(train),), TARGET_LENGTH, dtype=torch.long))
    fit(classifier, data, regime, "ce", TrainingAugmentation.from_regime(regime, 1.0), regime.steps, 0,
        torch.device("cpu"), seed)
    targets, scores = predict(classifier, test, 8, torch.device("cpu"), "multiclass")
    return float((targets.argmax(1) == scores.argmax(1)).mean())


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_linear_probe_with_feature_norm_learns_a_separable_multiclass_set(pooling):
    regime = LinearProbeConfig(steps=30, batch_size=8, lr=0.01, mixup=0.0, feature_norm="batch",
                               pooling=pooling, precision="fp32")
    assert probe_accuracy(regime) >= 0.6           # chance: 0.25; LayerNorm head alone: exactly 0.25


def fitted_accuracy(head: ClassificationHead, train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor,
                    test_labels: torch.Tensor, steps: int) -> float:
    """Accuracy on `test` of `head` after `steps` full-batch AdamW steps (lr 0.01) of cross-entropy on `train`."""
    optimizer = torch.optim.AdamW(head.parameters(), lr=0.01)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(head(train), train_labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    head.eval()
    with torch.no_grad():
        return (head(test).argmax(1) == test_labels).float().mean().item()


def test_batch_feature_norm_separates_features_with_a_large_common_part():
    torch.manual_seed(0)
    common = torch.randn(64) * 3.0
    labels = torch.arange(NUM_CLASSES).repeat(16)
    directions = torch.randn(NUM_CLASSES, 64)
    pooled = common + 1e-3 * directions[labels] + 1e-4 * torch.randn(len(labels), 64)
    features = torch.cat([pooled[:, None], torch.zeros(len(labels), 2, 64)], dim=1)   # (N, 1+L, D), CLS first
    head = ClassificationHead(64, NUM_CLASSES, feature_norm="batch")
    assert fitted_accuracy(head, features, labels, features, labels, steps=50) >= 0.9
    # A batch of one in training mode falls back to the running statistics instead of failing.
    head.train()
    assert head(features[:1]).shape == (1, NUM_CLASSES)


def test_feature_norm_rejects_unknown_values():
    from sslam.runtime.errors import ConfigError
    with pytest.raises(ConfigError):
        ClassificationHead(32, 2, feature_norm="group")
    from sslam.runtime.configuration import from_dict
    with pytest.raises(ConfigError):
        from_dict(LinearProbeConfig, {"feature_norm": "group"}, where="linear")


def paired_events(clips: int, seed: int, tokens: int = 8, dim: int = 16):
    """Class c = a token +4·e_c and another token −4·e_c at random places among noise tokens: the mean of the
    patch tokens is the same for every class (the pair cancels), one patch token tells them apart."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(2).repeat(clips // 2)
    features = 0.1 * torch.randn(clips, 1 + tokens, dim, generator=generator)  # (N, 1+L, D), CLS first
    for index, label in enumerate(labels.tolist()):
        first, second = (1 + torch.randperm(tokens, generator=generator)[:2]).tolist()
        features[index, first, label] += 4.0
        features[index, second, label] -= 4.0
    return features, labels


def head_accuracy(pooling: str, steps: int = 150) -> float:
    torch.manual_seed(0)
    train, train_labels = paired_events(64, seed=1)
    test, test_labels = paired_events(64, seed=2)
    head = ClassificationHead(16, 2, pooling=pooling, attentive_heads=2)
    return fitted_accuracy(head, train, train_labels, test, test_labels, steps)


def test_attentive_pooling_reads_what_the_mean_and_cls_of_the_patches_lose():
    assert head_accuracy("attentive") >= 0.95
    assert head_accuracy("mean") <= 0.7 and head_accuracy("cls") <= 0.7   # chance: 0.5


def test_the_attentive_patch_token_probe_learns_through_the_evaluation_pipeline():
    regime = LinearProbeConfig(steps=30, batch_size=8, lr=0.01, mixup=0.0, feature_norm="batch",
                               pooling="attentive", precision="fp32")
    assert probe_accuracy(regime) >= 0.6           # chance: 0.25
    from sslam.runtime.configuration import from_dict
    from sslam.runtime.errors import ConfigError

    assert from_dict(LinearProbeConfig, {"pooling": "attentive", "attentive_heads": 2}, where="linear").attentive_heads == 2
    with pytest.raises(ConfigError, match="attentive_heads must divide"):
        ClassificationHead(32, 2, pooling="attentive", attentive_heads=3)
    with pytest.raises(ConfigError):
        from_dict(LinearProbeConfig, {"pooling": "attention"}, where="linear")
