"""Learning-rate schedule, EMA decay as the loop applies it, weight-decay groups, config loading."""
import math

import pytest
import torch

from sslam.runtime.errors import ConfigError
from sslam.model.encoder import AudioEncoder, EncoderConfig
from sslam.model.teacher import ema_decay
from sslam.train.config import TrainConfig, train_config_for_stage
from sslam.train.optim import build_optimizer, parameter_groups
from sslam.train.schedule import build_scheduler, learning_rate


def test_official_stage_defaults():
    stage1, stage2 = TrainConfig.stage1(), TrainConfig.stage2()
    assert (stage1.steps, stage1.warmup_steps, stage1.lr, stage1.min_lr) == (400_000, 53_333, 5e-4, 0.0)
    assert (stage2.steps, stage2.warmup_steps, stage2.lr) == (200_000, 25_000, 5e-5)
    assert stage1.decay_all_parameters and stage1.clip_grad_norm == 4.0 and stage1.betas == (0.9, 0.95)


def test_yaml_section_keeps_stage_defaults_and_rejects_unknown_keys():
    config = {"pretrain": {"stage2": {"steps": 100, "warmup_steps": 10, "min_lr": 1e-6}}}
    stage2 = train_config_for_stage(config, 2)
    assert (stage2.steps, stage2.warmup_steps, stage2.lr, stage2.min_lr) == (100, 10, 5e-5, 1e-6)
    with pytest.raises(ConfigError, match="pretrain.stage1.stpes"):
        train_config_for_stage({"pretrain": {"stage1": {"stpes": 3}}}, 1)
    with pytest.raises(ConfigError, match="warmup_steps"):
        train_config_for_stage({"pretrain": {"stage1": {"steps": 10}}}, 1)  # warm-up 53,333 > 10 steps


def test_learning_rate_at_key_steps_official_stage1():
    peak, warmup, total = 5e-4, 53_333, 400_000
    assert learning_rate(0, peak, warmup, total) == 0.0  # fairseq: the first update runs at warmup_init_lr 0
    assert learning_rate(warmup // 2, peak, warmup, total) == pytest.approx(peak * (warmup // 2) / warmup)
    assert learning_rate(warmup, peak, warmup, total) == pytest.approx(peak)
    middle = warmup + (total - warmup) // 2
    assert learning_rate(middle, peak, warmup, total) == pytest.approx(peak / 2, rel=1e-4)
    assert learning_rate(total, peak, warmup, total) == pytest.approx(0.0, abs=1e-15)
    assert learning_rate(total, peak, warmup, total, min_lr=1e-6) == pytest.approx(1e-6)  # paper option
    quarter = warmup + (total - warmup) // 4
    expected = 0.5 * peak * (1 + math.cos(math.pi * ((total - warmup) // 4) / (total - warmup)))
    assert learning_rate(quarter, peak, warmup, total) == pytest.approx(expected)


def test_scheduler_reproduces_the_formula_per_update():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=1e-3)
    scheduler = build_scheduler(optimizer, 1e-3, warmup_steps=4, total_steps=12, min_lr=1e-5)
    seen = []
    for _ in range(14):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [learning_rate(k, 1e-3, 4, 12, 1e-5) for k in range(14)]
    assert seen == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert seen[0] == 0.0 and seen[4] == pytest.approx(1e-3) and seen[13] == pytest.approx(1e-5)


def test_ema_decay_anneals_linearly_then_holds():
    start, end, anneal = 0.9998, 0.99999, 100_000
    assert ema_decay(1, start, end, anneal) == pytest.approx(start + (end - start) / anneal)
    assert ema_decay(50_000, start, end, anneal) == pytest.approx((start + end) / 2)
    assert ema_decay(100_000, start, end, anneal) == end
    assert ema_decay(300_000, start, end, anneal) == end


def _tiny_encoder():
    return AudioEncoder(EncoderConfig(embed_dim=16, depth=1, num_heads=2, num_mel_bins=32, max_time_patches=8))


def test_official_grouping_decays_every_parameter():
    encoder = _tiny_encoder()
    groups = parameter_groups({"student": encoder}, weight_decay=0.05, decay_all_parameters=True)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.05
    trainable = {f"student.{n}" for n, p in encoder.named_parameters() if p.requires_grad}
    assert set(groups[0]["names"]) == trainable
    assert "student.cls_token" in trainable and "student.pre_norm.weight" in trainable
    assert not any("pos_embed" in n for n in groups[0]["names"])  # the fixed table is never optimised


def test_exempt_grouping_skips_biases_norms_and_cls():
    encoder = _tiny_encoder()
    decayed, exempt = parameter_groups({"student": encoder}, weight_decay=0.05, decay_all_parameters=False)
    assert decayed["weight_decay"] == 0.05 and exempt["weight_decay"] == 0.0
    assert "student.cls_token" in exempt["names"]
    assert "student.pre_norm.weight" in exempt["names"] and "student.blocks.0.attn.qkv.bias" in exempt["names"]
    assert "student.blocks.0.attn.qkv.weight" in decayed["names"]
    assert "student.patch_embed.weight" in decayed["names"]
    params = dict(encoder.named_parameters())
    assert all(params[n.split(".", 1)[1]].ndim >= 2 for n in decayed["names"])
    # AdamW really applies zero decay to the exempt group: with zero gradient only decay moves weights.
    optimizer = build_optimizer({"student": encoder}, lr=0.1, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.5,
                                decay_all_parameters=False)
    before = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    for p in encoder.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert torch.equal(params["pre_norm.weight"], before["pre_norm.weight"])
    assert not torch.equal(params["blocks.0.attn.qkv.weight"], before["blocks.0.attn.qkv.weight"])
