"""PretrainingObjective end to end on a tiny encoder (dim 32, depth 2, 16x4 patch grid)."""
from types import SimpleNamespace

import pytest
import torch

from sslam.model.teacher import ema_decay
from sslam.objective.config import ObjectiveConfig, variant_config
from sslam.objective.pretraining import PretrainingObjective
from sslam.train.config import TrainConfig

BATCH = 4
SMALL = dict(clones_stage1=4, clones_stage2=2)  # 4·4 = 4·2·2 = 16 sequences either way


def stage_decay(step: int) -> float:
    """The teacher decay the loop would hand over after `step` updates of an official stage."""
    train = TrainConfig.stage2()
    return ema_decay(step, train.ema_start, train.ema_end, train.ema_anneal_steps)


def tiny_objective(encoder_cfg, decoder_cfg, stage, variant=None, **overrides):
    cfg = variant_config(variant, ObjectiveConfig(**SMALL), overrides)
    return PretrainingObjective(encoder_cfg, decoder_cfg, cfg, stage, seed=0)


def fixed_batch() -> torch.Tensor:
    return torch.randn(BATCH, 128, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("stage,variant,expected_terms,halves", [
    (1, None, {"local_unmixed", "global_unmixed"}, 1),
    (2, "MB-UA", {"local_unmixed", "global_unmixed"}, 1),
    (2, "MB-PMA", {"local_mixed", "global_mixed"}, 1),
    (2, "MB-UA-PMA", {"local_unmixed", "global_unmixed", "local_mixed", "global_mixed"}, 2),
    (2, "SSLAM", {"local_unmixed", "global_unmixed", "local_mixed", "global_mixed", "srl_local"}, 2),
])
def test_each_variant_produces_its_loss_terms(tiny_encoder_cfg, tiny_decoder_cfg, stage, variant,
                                              expected_terms, halves):
    overrides = {"clones_stage2": 2 * (3 - halves)}  # keep 16 sequences per batch
    objective = tiny_objective(tiny_encoder_cfg, tiny_decoder_cfg, stage, variant, **overrides)
    out = objective(fixed_batch())
    assert set(out.terms) == expected_terms
    assert out.num_sequences == 16
    # 64 tokens, 12 kept -> 52 masked per sequence
    assert out.num_masked_tokens == 16 * 52
    assert torch.isfinite(out.loss) and out.loss.requires_grad
    assert all(not value.requires_grad for value in out.terms.values())
    expected_total = sum(out.weights[name] * value for name, value in out.terms.items())
    assert torch.isclose(out.loss.detach(), expected_total)
    if variant == "SSLAM":
        assert out.weights["local_unmixed"] == 0.5 and out.weights["srl_local"] == 1.0
        assert out.weights["global_mixed"] == 8.0  # the sum over the half's B·C sequences
        assert out.regions is not None and len(out.regions.unmixed_rows) == 2


def test_paper_weighting_and_global_srl(tiny_encoder_cfg, tiny_decoder_cfg):
    objective = tiny_objective(tiny_encoder_cfg, tiny_decoder_cfg, 2, "SSLAM", loss_weighting="paper", srl_global=True)
    out = objective(fixed_batch())
    assert "srl_global" in out.terms and set(out.weights.values()) == {1.0}
    assert torch.isclose(out.loss.detach(), sum(out.terms.values()))


def test_the_srl_weight_under_paper_weighting_is_owned_by_source_retention(tiny_encoder_cfg, tiny_decoder_cfg,
                                                                           monkeypatch):
    """The SRL's weight is set in one file: changing PAPER_SRL_WEIGHT there changes the paper-weighted total."""
    from sslam.objective import source_retention

    monkeypatch.setattr(source_retention, "PAPER_SRL_WEIGHT", 3.0)
    objective = tiny_objective(tiny_encoder_cfg, tiny_decoder_cfg, 2, "SSLAM", loss_weighting="paper", srl_global=True)
    out = objective(fixed_batch())
    assert out.weights["srl_local"] == out.weights["srl_global"] == 3.0
    assert {weight for name, weight in out.weights.items() if not name.startswith("srl")} == {1.0}


def test_stage2_halves_share_masks_in_sample_major_order(tiny_encoder_cfg, tiny_decoder_cfg):
    objective = tiny_objective(tiny_encoder_cfg, tiny_decoder_cfg, 2, "SSLAM")
    masks = objective.draw_masks(BATCH, (16, 4))
    clones = objective.clones
    assert masks.shape == (2 * BATCH * clones, 64)
    unmixed_half, mixed_half = masks.chunk(2)
    assert torch.equal(unmixed_half, mixed_half)  # the mixed copy of clip i reuses clip i's masks


def train_steps(objective: PretrainingObjective, steps: int) -> list[float]:
    optimizer = torch.optim.AdamW(objective.trainable_parameters(), lr=1e-3)
    batch, losses = fixed_batch(), []
    for step in range(steps):
        out = objective(batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        objective.update_teacher(stage_decay(step + 1))
        losses.append(float(out.loss.detach()))
    return losses


@pytest.mark.parametrize("stage,variant", [(1, None), (2, "SSLAM")])
def test_loss_decreases_on_a_fixed_batch(tiny_encoder_cfg, tiny_decoder_cfg, stage, variant):
    torch.manual_seed(0)
    objective = tiny_objective(tiny_encoder_cfg, tiny_decoder_cfg, stage, variant)
    losses = train_steps(objective, 30)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.95 * first, losses


def test_runs_are_reproducible_and_resumable(tiny_encoder_cfg, tiny_decoder_cfg):
    torch.manual_seed(0)
    first = tiny_objective(tiny_encoder_cfg, tiny_decoder_cfg, 2, "SSLAM")
    torch.manual_seed(0)
    second = tiny_objective(tiny_encoder_cfg, tiny_decoder_cfg, 2, "SSLAM")
    assert torch.equal(first.draw_masks(2, (16, 4)), second.draw_masks(2, (16, 4)))
    state = first.generator_state()
    masks = first.draw_masks(2, (16, 4))
    regions = first.draw_mix_regions(128)
    first.set_generator_state(state)
    assert torch.equal(first.draw_masks(2, (16, 4)), masks) and first.draw_mix_regions(128) == regions


def test_load_stage1_takes_the_teacher_from_the_stage1_teacher(tiny_encoder_cfg, tiny_decoder_cfg):
    stage1 = tiny_objective(tiny_encoder_cfg, tiny_decoder_cfg, 1)
    with torch.no_grad():
        for parameter in stage1.teacher.encoder.parameters():
            parameter.add_(1.0)  # make the teacher distinguishable from the student
    checkpoint = SimpleNamespace(student=stage1.student.state_dict(), teacher=stage1.teacher.encoder.state_dict(),
                                 decoder=stage1.decoder.state_dict())
    stage2 = tiny_objective(tiny_encoder_cfg, tiny_decoder_cfg, 2, "SSLAM")
    sources = stage2.load_stage1(checkpoint)
    assert sources == {"student": "stage1_student", "teacher": "stage1_teacher", "decoder": "stage1_decoder"}
    for name, value in stage1.teacher.encoder.state_dict().items():
        assert torch.equal(stage2.teacher.encoder.state_dict()[name], value)
    for name, value in stage1.student.state_dict().items():
        assert torch.equal(stage2.student.state_dict()[name], value)
    student_only = SimpleNamespace(student=stage1.student.state_dict(), teacher=None, decoder=None)
    assert stage2.load_stage1(student_only)["teacher"] == "stage1_student"


def test_bf16_autocast_keeps_targets_and_losses_in_fp32(tiny_encoder_cfg, tiny_decoder_cfg):
    objective = tiny_objective(tiny_encoder_cfg, tiny_decoder_cfg, 2, "SSLAM")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = objective(fixed_batch())
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in objective.decoder.parameters())


def test_mix_probability_zero_reduces_srl_to_the_clips_own_features(tiny_encoder_cfg, tiny_decoder_cfg):
    tiny_decoder_cfg.mask_noise_std = 0.0  # the decoder's fresh noise tokens would differ per half
    objective = tiny_objective(tiny_encoder_cfg, tiny_decoder_cfg, 2, "SSLAM", mix_probability=0.0)
    out = objective(fixed_batch())
    assert out.regions.is_identity
    # Same input, same masks, same targets: the mixed half is a copy of the unmixed half.
    assert torch.isclose(out.terms["local_mixed"], out.terms["local_unmixed"], rtol=1e-5)
    assert torch.isclose(out.terms["srl_local"], out.terms["local_mixed"], rtol=1e-5)


def test_stage1_can_train_on_mixed_audio_for_table_4(tiny_encoder_cfg, tiny_decoder_cfg):
    objective = tiny_objective(tiny_encoder_cfg, tiny_decoder_cfg, 1, None, stage1_input="mixed", mix_mode="full")
    out = objective(fixed_batch())
    assert set(out.terms) == {"local_mixed", "global_mixed"}
    assert out.regions is not None and not out.regions.unmixed_rows


def test_global_target_layers_per_half(tiny_encoder_cfg, tiny_decoder_cfg):
    official = tiny_objective(tiny_encoder_cfg, tiny_decoder_cfg, 2, "SSLAM")
    assert official.global_layers == {"unmixed": 1, "mixed": 1} and official.local_layers == 2
    paper = tiny_objective(tiny_encoder_cfg, tiny_decoder_cfg, 2, "SSLAM", global_target_unmixed_layers="all")
    assert paper.global_layers == {"unmixed": 2, "mixed": 1}
    assert tiny_objective(tiny_encoder_cfg, tiny_decoder_cfg, 1).global_layers["unmixed"] == 2


def test_waveform_mean_mixing_needs_the_normalisation(tiny_encoder_cfg, tiny_decoder_cfg):
    from sslam.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="norm_stats"):
        tiny_objective(tiny_encoder_cfg, tiny_decoder_cfg, 2, "SSLAM", mix_op="waveform_mean")
    objective = tiny_objective(tiny_encoder_cfg, tiny_decoder_cfg, 2, "SSLAM", mix_op="waveform_mean",
                               norm_mean=-4.268, norm_std=4.569)
    assert torch.isfinite(objective(fixed_batch()).loss)


def test_injected_masks_regions_and_noise_reproduce_a_drawn_step(tiny_encoder_cfg, tiny_decoder_cfg):
    torch.manual_seed(0)
    objective = tiny_objective(tiny_encoder_cfg, tiny_decoder_cfg, 2, "SSLAM")
    batch = fixed_batch()
    state = objective.generator_state()
    drawn = objective(batch)
    # The same random inputs, drawn again in forward's order: regions, masks (CPU generator), then the
    # decoder noise (its own generator) for the masked positions only.
    objective.set_generator_state(state)
    regions = objective.draw_mix_regions(128)
    masks = objective.draw_masks(BATCH, (16, 4))
    num_masked = int(masks[0].sum())
    noise = objective.draw_decoder_noise(masks.shape[0], num_masked, batch.device)
    assert noise.shape == (2 * BATCH * objective.clones, num_masked, tiny_encoder_cfg.embed_dim)
    after_draws = objective.generator_state()
    injected = objective(batch, masks=masks, regions=regions, decoder_noise=noise)
    assert torch.equal(injected.loss, drawn.loss) and injected.regions == drawn.regions
    assert all(torch.equal(injected.terms[name], value) for name, value in drawn.terms.items())
    # Injected inputs are not drawn: neither generator moved.
    for key, value in objective.generator_state().items():
        same = torch.equal(value, after_draws[key]) if isinstance(value, torch.Tensor) else value == after_draws[key]
        assert same, key


def test_a_step_draws_nothing_from_the_global_torch_rng(tiny_encoder_cfg, tiny_decoder_cfg):
    objective = tiny_objective(tiny_encoder_cfg, tiny_decoder_cfg, 2, "SSLAM")
    before = torch.get_rng_state()
    objective(fixed_batch())
    assert torch.equal(torch.get_rng_state(), before)
    generator = objective.noise_generator(torch.device("cpu"))
    assert generator.device == fixed_batch().device and generator.initial_seed() == objective.noise_seed


def test_injected_noise_sits_at_the_masked_positions_only(tiny_encoder_cfg, tiny_decoder_cfg):
    objective = tiny_objective(tiny_encoder_cfg, tiny_decoder_cfg, 1)
    masks = objective.draw_masks(BATCH, (16, 4))
    noise = torch.randn(masks.shape[0], int(masks[0].sum()), tiny_encoder_cfg.embed_dim)
    captured = {}
    objective.decoder.register_forward_hook(lambda module, args, output: captured.update(args=args))
    objective(fixed_batch(), masks=masks, decoder_noise=noise)
    visible, kept, grid, given = captured["args"]
    grid_tokens = objective.decoder.scatter_to_grid(visible, kept, given, grid[0] * grid[1])
    assert torch.equal(grid_tokens[masks], noise.reshape(-1, noise.shape[-1]))  # row-major = sample-major, ascending


def test_injected_inputs_are_checked(tiny_encoder_cfg, tiny_decoder_cfg):
    from sslam.model import ModelInputError
    from sslam.objective.mixing import MixRegions

    stage1 = tiny_objective(tiny_encoder_cfg, tiny_decoder_cfg, 1)
    with pytest.raises(ValueError, match="no mixed half"):
        stage1(fixed_batch(), regions=MixRegions(128, 8, ((2, 6), (9, 13))))
    with pytest.raises(ValueError, match=r"masks must be a bool tensor of shape \(16, 64\)"):
        stage1(fixed_batch(), masks=torch.zeros(8, 64, dtype=torch.bool))
    stage2 = tiny_objective(tiny_encoder_cfg, tiny_decoder_cfg, 2, "SSLAM")
    with pytest.raises(ValueError, match="regions are for 64 frames"):
        stage2(fixed_batch(), regions=MixRegions(64, 8, ((1, 3), (4, 6))))
    with pytest.raises(ModelInputError, match="one token per masked position"):
        stage2(fixed_batch(), decoder_noise=torch.zeros(16, 64, tiny_encoder_cfg.embed_dim))


def test_generator_state_covers_both_generators_and_refuses_other_formats(tiny_encoder_cfg, tiny_decoder_cfg):
    from sslam.objective.pretraining import RandomStateError

    objective = tiny_objective(tiny_encoder_cfg, tiny_decoder_cfg, 2, "SSLAM")
    fresh = objective.generator_state()
    assert fresh["decoder_noise"] is None and fresh["decoder_noise_device"] is None  # not created yet
    objective(fixed_batch())
    state = objective.generator_state()
    assert set(state) == {"masks_and_mixing", "decoder_noise", "decoder_noise_device"}
    assert state["decoder_noise_device"] == "cpu"
    next_loss = objective(fixed_batch()).loss
    objective.set_generator_state(state)
    assert torch.equal(objective(fixed_batch()).loss, next_loss)
    # A fresh state re-seeds the noise generator exactly as a new objective would.
    objective.set_generator_state(fresh)
    twin = tiny_objective(tiny_encoder_cfg, tiny_decoder_cfg, 2, "SSLAM")
    twin.load_state_dict(objective.state_dict())
    assert torch.equal(objective(fixed_batch()).loss, twin(fixed_batch()).loss)
    with pytest.raises(RandomStateError, match="older version"):
        objective.set_generator_state(state["masks_and_mixing"])  # the format before the noise generator
    objective.set_generator_state({**state, "decoder_noise_device": "cuda"})
    with pytest.raises(RandomStateError, match="saved on cuda, this run draws on cpu"):
        objective(fixed_batch())
