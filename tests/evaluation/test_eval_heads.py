"""Classifier head, frozen backbone, layer-wise lr decay, lr schedule, losses."""
import pytest
import torch
import torch.nn.functional as F

from sslam.evaluation.heads import ClassificationHead, EncoderClassifier, layer_decay_groups
from sslam.evaluation.training import LearningRateSchedule, classification_loss
from sslam.model.encoder import AudioEncoder, EncoderConfig

TINY = EncoderConfig(embed_dim=32, depth=3, num_heads=2, mlp_ratio=2.0, max_time_patches=8)


def classifier(frozen=False, backbone_train_mode=True, pooling="cls"):
    torch.manual_seed(0)
    head = ClassificationHead(TINY.embed_dim, 5, pooling=pooling)
    return EncoderClassifier(AudioEncoder(TINY), head, frozen_backbone=frozen, backbone_train_mode=backbone_train_mode)


def test_head_is_layernorm_then_linear_with_truncated_normal_init():
    torch.manual_seed(0)
    head = ClassificationHead(256, 1000)
    assert isinstance(head.norm, torch.nn.LayerNorm) and head.norm.eps == 1e-6
    assert head.linear.bias.abs().sum() == 0
    # as timm's trunc_normal_(std=.02) in the official head: cut at ±2 absolute, so σ stays 0.02
    assert head.linear.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert head.linear.weight.abs().max() <= 2.0
    features = torch.randn(3, 7, 256)
    torch.testing.assert_close(head(features), head.linear(head.norm(features[:, 0])))
    mean_head = ClassificationHead(256, 10, pooling="mean", norm=False)
    torch.testing.assert_close(mean_head(features), mean_head.linear(features[:, 1:].mean(1)))


def test_layer_decay_scales_blocks_and_keeps_everything_else_at_full_lr():
    model = classifier()
    groups = layer_decay_groups(model, weight_decay=0.05, layer_decay=0.65)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    depth = len(model.encoder.blocks)
    for index, block in enumerate(model.encoder.blocks):
        for parameter in block.parameters():
            assert scale_of[id(parameter)] == pytest.approx(0.65 ** (depth - index))
    for module in (model.encoder.patch_embed, model.encoder.pre_norm, model.head):
        for parameter in module.parameters():
            assert scale_of[id(parameter)] == 1.0
    assert scale_of[id(model.encoder.cls_token)] == 1.0
    assert len(scale_of) == sum(1 for _ in model.parameters())       # every parameter, once
    assert all(g["weight_decay"] == 0.05 for g in groups)


def test_frozen_backbone_trains_only_the_head_and_follows_the_probe_mode():
    model = classifier(frozen=True)
    groups = layer_decay_groups(model, 0.05, 0.65)
    trained = {id(p) for g in groups for p in g["params"]}
    assert trained == {id(p) for p in model.head.parameters()}
    logits = model(torch.randn(2, 32, 128))
    logits.sum().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.head.linear.weight.grad is not None
    assert model.train().encoder.training                     # official: drop path stays active
    assert not classifier(frozen=True, backbone_train_mode=False).train().encoder.training   # paper


def test_schedule_warms_up_from_min_lr_then_cosine_decays_to_min_lr():
    schedule = LearningRateSchedule(peak_lr=1e-3, min_lr=1e-6, warmup_steps=10, total_steps=110)
    assert schedule(0) == pytest.approx(1e-6)
    assert schedule(5) == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6))
    assert schedule(10) == pytest.approx(1e-3)
    assert schedule(60) == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6))
    assert schedule(110) == pytest.approx(1e-6)
    assert LearningRateSchedule(1e-3, 0.0, 0, 10)(0) == pytest.approx(1e-3)


def test_bce_is_summed_and_divided_by_the_number_of_positive_labels():
    logits, targets = torch.randn(4, 6), torch.zeros(4, 6)
    targets[0, 1] = targets[1, 2] = targets[1, 3] = 1
    expected = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / 3
    torch.testing.assert_close(classification_loss(logits, targets, "bce"), expected)


def test_ce_accepts_soft_targets_and_label_smoothing():
    logits = torch.randn(3, 4)
    soft = torch.tensor([[0.7, 0.3, 0, 0], [0, 1.0, 0, 0], [0, 0, 0.5, 0.5]])
    expected = -(soft * logits.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(classification_loss(logits, soft, "ce"), expected)
    smoothed = soft * 0.9 + 0.1 / 4
    torch.testing.assert_close(classification_loss(logits, soft, "ce", 0.1),
                               -(smoothed * logits.log_softmax(-1)).sum(-1).mean())
