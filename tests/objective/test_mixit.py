"""The MixIT concept-separation variant (paper Appendix C, Eq. 6)."""
import itertools
import math

import pytest
import torch

from sslam.runtime.errors import ConfigError
from sslam.model.teacher import ema_decay
from sslam.objective.config import VARIANT_PRESETS, ObjectiveConfig, variant_config
from sslam.objective.losses import d2v_loss
from sslam.objective.mixit import assignment_errors, assignments, mixit_loss
from sslam.objective.pretraining import PretrainingObjective
from sslam.train.config import TrainConfig


def stage_decay(step: int) -> float:
    """The teacher decay the loop would hand over after `step` updates of an official stage."""
    train = TrainConfig.stage2()
    return ema_decay(step, train.ema_start, train.ema_end, train.ema_anneal_steps)


def random_problem(tokens=40, groups=5, vectors=3, dim=6, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    y = torch.randn(tokens, vectors, dim, generator=generator, dtype=dtype)
    z = torch.randn(tokens, 2, dim, generator=generator, dtype=dtype)
    group = torch.randint(0, groups, (tokens,), generator=generator)
    return y, z, group, groups


def brute_force_errors(y, z, group, groups):
    """Eq. 6 enumerated in float64: for every binary A with unit column sums, Σ_tokens Σ_i s(Z_Si, [AŶ]_i)."""
    y, z = y.double(), z.double()

    def s(estimate, target):
        return (estimate - target).pow(2).sum(-1) / math.sqrt(y.shape[-1])

    columns = []
    for bits in itertools.product((0, 1), repeat=y.shape[1]):
        a = torch.tensor(bits, dtype=y.dtype)
        per_token = s((a[:, None] * y).sum(1), z[:, 0]) + s(((1 - a)[:, None] * y).sum(1), z[:, 1])
        columns.append((tuple(bits), torch.zeros(groups, dtype=y.dtype).index_add_(0, group, per_token)))
    return columns


def per_group(values, group, groups):
    return torch.zeros(groups, dtype=values.dtype).index_add_(0, group, values)


def test_assignments_are_every_binary_split_once():
    table = assignments(4)
    assert table.shape == (16, 4)
    assert {tuple(row.int().tolist()) for row in table} == set(itertools.product((0, 1), repeat=4))


@pytest.mark.parametrize("vectors", [2, 3, 5])
def test_vectorised_minimum_equals_brute_force(vectors):
    y, z, group, groups = random_problem(vectors=vectors, seed=vectors)
    enumerated = brute_force_errors(y, z, group, groups)
    vectorised = assignment_errors(y, z, group, groups)
    # Every assignment's error, not only the minimum (columns in the same binary order).
    table = assignments(vectors)
    for row, a in enumerate(table):
        expected = dict(enumerated)[tuple(a.int().tolist())]
        torch.testing.assert_close(vectorised[:, row].to(expected.dtype), expected, rtol=1e-9, atol=1e-9)
    brute_minimum = torch.stack([errors for _, errors in enumerated], dim=1).min(dim=1).values
    # The value is computed by the fp32 regression loss of every term (d2v_loss).
    torch.testing.assert_close(per_group(mixit_loss(y, z, group, groups).double(), group, groups), brute_minimum,
                               rtol=1e-6, atol=1e-6)


def test_float32_minimum_matches_brute_force():
    y, z, group, groups = random_problem(vectors=4, dtype=torch.float32, seed=11)
    brute_minimum = torch.stack([errors for _, errors in brute_force_errors(y, z, group, groups)], 1).min(1).values
    torch.testing.assert_close(per_group(mixit_loss(y, z, group, groups).double(), group, groups), brute_minimum,
                               rtol=1e-5, atol=1e-5)


def test_the_minimum_is_invariant_to_permuting_the_vectors():
    y, z, group, groups = random_problem(vectors=4, seed=3)
    permuted = y[:, torch.tensor([2, 0, 3, 1])]
    torch.testing.assert_close(per_group(mixit_loss(permuted, z, group, groups), group, groups),
                               per_group(mixit_loss(y, z, group, groups), group, groups))
    # ...and to swapping the two sources (A ↦ its complement is an assignment too).
    torch.testing.assert_close(per_group(mixit_loss(y, z.flip(1), group, groups), group, groups),
                               per_group(mixit_loss(y, z, group, groups), group, groups))


def test_gradients_flow_only_through_the_chosen_assignment():
    y, z, group, groups = random_problem(vectors=3, seed=5)
    y.requires_grad_(True)
    mixit_loss(y, z, group, groups).sum().backward()
    enumerated = brute_force_errors(y.detach(), z, group, groups)
    best = torch.stack([errors for _, errors in enumerated], 1).argmin(1)
    chosen = torch.tensor([enumerated[int(b)][0] for b in best], dtype=y.dtype)[group]  # (T, K)
    fixed = y.detach().clone().requires_grad_(True)
    first = (chosen[..., None] * fixed).sum(1)
    second = ((1 - chosen)[..., None] * fixed).sum(1)
    (d2v_loss(first, z[:, 0]) + d2v_loss(second, z[:, 1])).sum().backward()
    torch.testing.assert_close(y.grad, fixed.grad)
    # A vector's gradient is the residual of the ONE source it was assigned to.
    token, vector = 0, 0
    source = 0 if chosen[token, vector] == 1 else 1
    estimate = (first if source == 0 else second)[token].detach()
    torch.testing.assert_close(y.grad[token, vector], 2 * (estimate - z[token, source]) / math.sqrt(y.shape[-1]))


def test_config_fields_are_range_checked_and_the_preset_is_registered():
    assert ObjectiveConfig().mixit is False and ObjectiveConfig().mixit_vectors == 4
    assert ObjectiveConfig().mixit_level == "patch"
    assert "MixIT" in VARIANT_PRESETS
    cfg = variant_config("MixIT")
    assert cfg.mixit and not cfg.srl_local and cfg.local_mixed and cfg.student_sees_mixed
    for bad in (1, 9):
        with pytest.raises(ConfigError, match=r"mixit_vectors must be in \[2, 8\]"):
            ObjectiveConfig(mixit_vectors=bad)
    with pytest.raises(ConfigError, match="mixit_level"):
        variant_config("MixIT", overrides={"mixit_level": "tokens"})
    with pytest.raises(ConfigError, match=r"mixit_level must be one of \['patch', 'cls', 'both'\]"):
        ObjectiveConfig(mixit_level="tokens")
    with pytest.raises(ConfigError, match="mix_mode is 'none'"):
        variant_config("MB-UA", overrides={"mixit": True})


BATCH = 4


def mixit_objective(encoder_cfg, decoder_cfg, **overrides):
    cfg = variant_config("MixIT", ObjectiveConfig(clones_stage2=2), overrides)
    return PretrainingObjective(encoder_cfg, decoder_cfg, cfg, stage=2, seed=0)


def fixed_batch():
    return torch.randn(BATCH, 128, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("level,names", [("patch", {"mixit_patch"}), ("cls", {"mixit_cls"}),
                                         ("both", {"mixit_patch", "mixit_cls"})])
def test_the_levels_give_their_terms_and_weights(tiny_encoder_cfg, tiny_decoder_cfg, level, names):
    torch.manual_seed(0)
    objective = mixit_objective(tiny_encoder_cfg, tiny_decoder_cfg, mixit_level=level)
    out = objective(fixed_batch())
    assert {name for name in out.terms if name.startswith("mixit")} == names
    assert not {"srl_local", "srl_global"} & set(out.terms)
    if "mixit_cls" in names:
        assert out.weights["mixit_cls"] == BATCH * 2  # a global term: the sum over the half's sequences
    if "mixit_patch" in names:  # the masked tokens of the mixed rows, as a share of all masked tokens
        assert 0 < out.weights["mixit_patch"] < 0.5
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.mixit_heads.parameters())


def test_the_head_is_a_trainable_pretraining_module_outside_the_encoder(tiny_encoder_cfg, tiny_decoder_cfg):
    objective = mixit_objective(tiny_encoder_cfg, tiny_decoder_cfg)
    head_parameters = {id(p) for p in objective.mixit_heads.parameters()}
    assert head_parameters <= {id(p) for p in objective.trainable_parameters()}
    assert set(objective.trainable_modules()) == {"student", "decoder", "mixit"}
    assert not any("mixit" in key for key in objective.student.state_dict())
    assert not any("mixit" in key for key in objective.teacher.state_dict())


def test_an_unmixed_update_gives_zero_terms_that_still_reach_the_head(tiny_encoder_cfg, tiny_decoder_cfg):
    objective = mixit_objective(tiny_encoder_cfg, tiny_decoder_cfg, mixit_level="both", mix_probability=0.0)
    out = objective(fixed_batch())
    assert out.regions.is_identity
    assert float(out.terms["mixit_patch"]) == 0.0 and float(out.terms["mixit_cls"]) == 0.0
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in objective.mixit_heads.parameters())


def test_the_mixit_preset_trains_on_a_fixed_batch(tiny_encoder_cfg, tiny_decoder_cfg):
    torch.manual_seed(0)
    objective = mixit_objective(tiny_encoder_cfg, tiny_decoder_cfg)
    optimizer = torch.optim.AdamW(objective.trainable_parameters(), lr=1e-3)
    batch, losses, mixit = fixed_batch(), [], []
    head_before = [p.detach().clone() for p in objective.mixit_heads.parameters()]
    for step in range(30):
        out = objective(batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        objective.update_teacher(stage_decay(step + 1))
        losses.append(float(out.loss.detach()))
        mixit.append(float(out.terms["mixit_patch"]))
    assert all(math.isfinite(value) for value in losses)
    assert sum(losses[-5:]) / 5 < 0.95 * sum(losses[:5]) / 5, losses
    assert sum(mixit[-5:]) / 5 < sum(mixit[:5]) / 5, mixit
    assert all(not torch.equal(before, after) for before, after in zip(head_before, objective.mixit_heads.parameters()))


def test_bf16_autocast_keeps_the_choice_in_float64_and_the_loss_in_fp32(tiny_encoder_cfg, tiny_decoder_cfg):
    objective = mixit_objective(tiny_encoder_cfg, tiny_decoder_cfg, mixit_level="both")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = objective(fixed_batch())
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert all(torch.isfinite(out.terms[name]) for name in ("mixit_patch", "mixit_cls"))
    out.loss.backward()
