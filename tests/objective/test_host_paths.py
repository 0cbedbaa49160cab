"""The sync-free paths of the objective give what the paths they replace gave, to the bit: the kept/masked split
from the known count, masked tokens gathered by index, one instance norm over all layers, the halves' teacher
pass shared, the SRL's mixed tokens by position, and the whole step split into prepare + compute."""
import torch
import torch.nn.functional as F

from sslam.model import AudioEncoder
from sslam.objective.losses import local_loss
from sslam.objective.masking import clone_masks, clone_rows, keep_index, kept_and_masked_index, kept_cells
from sslam.objective.mixing import MixRegions, no_regions_mixed
from sslam.objective.pretraining import PretrainingObjective
from sslam.objective.config import ObjectiveConfig, variant_config
from sslam.objective.source_retention import foreign_dropped_features, mixed_token_mask, srl_target
from sslam.objective.targets import (NORM_EPS, make_targets, teacher_targets,
                                     teacher_targets_of_batches)

REGIONS = MixRegions(128, 8, ((2, 6), (9, 13)))


def per_layer_targets(layer_outputs, top_k):
    """make_targets as it was written before: one instance norm per layer."""
    normalised = [F.instance_norm(layer.float().transpose(1, 2), eps=NORM_EPS).transpose(1, 2)
                  for layer in layer_outputs[-top_k:]]
    averaged = torch.stack(normalised).mean(dim=0)
    return F.layer_norm(averaged, averaged.shape[-1:], eps=NORM_EPS)


def test_one_instance_norm_over_all_layers_equals_one_per_layer():
    generator = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        layers = [torch.randn(3, 17, 24, generator=generator).to(dtype) * (i + 1) for i in range(5)]
        for top_k in (1, 3, 5):
            assert torch.equal(make_targets(layers, top_k), per_layer_targets(layers, top_k))


def test_the_halves_share_one_teacher_pass(tiny_encoder_cfg):
    torch.manual_seed(0)
    teacher = AudioEncoder(tiny_encoder_cfg).eval()
    halves = {"mixed": torch.randn(3, 128, 32), "unmixed": torch.randn(3, 128, 32)}
    joint = teacher_targets_of_batches(teacher, halves, 2, {"mixed": 1, "unmixed": 2})
    for half, layers in (("mixed", 1), ("unmixed", 2)):
        alone = teacher_targets(teacher, halves[half], 2, layers)
        torch.testing.assert_close(joint[half].local, alone.local, rtol=0, atol=1e-6)
        torch.testing.assert_close(joint[half].pooled, alone.pooled, rtol=0, atol=1e-6)


def test_the_known_kept_count_splits_masks_as_counting_does():
    masks = clone_masks(3, 4, (16, 4), 0.8, 0.07, 5, torch.Generator().manual_seed(0))
    kept, masked = kept_and_masked_index(masks, kept_cells(64, 0.8))
    assert torch.equal(kept, keep_index(masks))
    assert torch.equal(masked, torch.stack([row.nonzero().flatten() for row in masks]))
    assert torch.equal(clone_rows(torch.arange(6).view(3, 2), 2), torch.arange(6).view(3, 2).repeat_interleave(2, 0))


def test_gathering_masked_tokens_by_index_equals_boolean_indexing():
    generator = torch.Generator().manual_seed(1)
    masks = clone_masks(2, 3, (16, 4), 0.8, 0.07, 5, generator)
    _, masked = kept_and_masked_index(masks, kept_cells(64, 0.8))
    target = torch.randn(6, 64, 8, generator=generator)
    losses = []
    for index in (None, masked):
        prediction = torch.randn(6, 64, 8, generator=torch.Generator().manual_seed(2)).requires_grad_()
        term = local_loss(prediction, target, masks, official_factor=2.0, masked_index=index)
        term.value.backward()
        losses.append((term.value, term.count, prediction.grad))
    (value, count, grad), (gathered, gathered_count, gathered_grad) = losses
    assert torch.equal(value, gathered) and count == gathered_count == int(masks.sum())
    assert torch.equal(grad, gathered_grad)


def test_mixed_tokens_by_position_equal_the_boolean_mask(tiny_encoder_cfg):
    torch.manual_seed(0)
    teacher = AudioEncoder(tiny_encoder_cfg).eval()
    fbank = torch.randn(2, 128, 32)
    mask = mixed_token_mask(REGIONS, 4)
    positions = REGIONS.mixed_token_index(4)
    assert torch.equal(positions, mask.nonzero().flatten())
    assert REGIONS.mixed_rows == ((0, 2), (6, 9), (13, 16))
    assert no_regions_mixed(128, 8).mixed_token_index(4).numel() == 0
    by_mask, by_position = (foreign_dropped_features(teacher, fbank, selection, 2) for selection in (mask, positions))
    assert torch.equal(by_mask, by_position)
    base = torch.randn(2, 64, 32)
    for aggregation in ("mean", "max"):
        assert torch.equal(srl_target(base, by_mask, mask, aggregation), srl_target(base, by_mask, positions, aggregation))


def test_prepare_then_compute_is_forward_and_draws_in_the_same_order(tiny_encoder_cfg, tiny_decoder_cfg):
    config = variant_config("SSLAM", ObjectiveConfig(clones_stage1=2, clones_stage2=2), {})
    torch.manual_seed(0)
    objective = PretrainingObjective(tiny_encoder_cfg, tiny_decoder_cfg, config, 2, seed=0)
    fbank = torch.randn(2, 128, 32)
    state = objective.generator_state()
    output = objective(fbank)
    objective.set_generator_state(state)
    step = objective.prepare(fbank)
    loss, summary, names, weights = objective.compute(step)
    assert torch.equal(loss, output.loss) and torch.equal(summary, output.summary)
    assert names == tuple(output.terms) and weights == output.weights and step.regions == output.regions
    # A drawn step reads nothing back: the masked count comes from the configuration.
    assert output.num_masked_tokens == step.masks.shape[0] * (64 - kept_cells(64, config.mask_prob))
