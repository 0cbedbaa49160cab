"""The source retention target and loss against spec algorithm.md §6 ("SRL target") and paper Eq. 4."""
import torch

from sslam.model import AudioEncoder, gather_tokens
from sslam.objective.mixing import MixedHalf, MixRegions, no_regions_mixed
from sslam.objective.source_retention import (
    SrlSettings,
    foreign_dropped_features,
    mixed_token_mask,
    source_retention_terms,
    srl_target,
)
from sslam.objective.targets import TeacherTargets, make_targets, teacher_targets

# 128 frames, 8-frame patches: 16 time rows x 4 freq patches; rows 2-5 and 9-12 unmixed.
REGIONS = MixRegions(128, 8, ((2, 6), (9, 13)))
FREQ_PATCHES = 4


def mixed_half(fbank, regions, base, predictions, cls, mask, clones) -> MixedHalf:
    return MixedHalf(predictions=predictions, cls=cls, mask=mask, fbank=fbank,
                     base=TeacherTargets(local=base, pooled=base.mean(dim=1)), regions=regions, clones=clones)


def test_mixed_token_mask_follows_time_major_rows():
    token_is_mixed = mixed_token_mask(REGIONS, FREQ_PATCHES).view(16, FREQ_PATCHES)
    expected_rows = torch.ones(16, dtype=torch.bool)
    expected_rows[2:6] = False
    expected_rows[9:13] = False
    assert torch.equal(token_is_mixed, expected_rows[:, None].expand(16, FREQ_PATCHES))


def test_target_is_the_base_alone_in_unmixed_regions_and_the_mean_of_both_clips_in_mixed_ones():
    generator = torch.Generator().manual_seed(0)
    token_is_mixed = mixed_token_mask(REGIONS, FREQ_PATCHES)
    base = torch.randn(3, 64, 8, generator=generator)
    foreign = torch.randn(3, int(token_is_mixed.sum()), 8, generator=generator)
    target = srl_target(base, foreign, token_is_mixed, "mean")
    assert torch.equal(target[:, ~token_is_mixed], base[:, ~token_is_mixed])
    assert torch.allclose(target[:, token_is_mixed], (base[:, token_is_mixed] + foreign) / 2)
    maximum = srl_target(base, foreign, token_is_mixed, "max")  # Table 11's alternative
    assert torch.equal(maximum[:, ~token_is_mixed], base[:, ~token_is_mixed])
    assert torch.equal(maximum[:, token_is_mixed], torch.maximum(base[:, token_is_mixed], foreign))


def test_second_teacher_pass_drops_unmixed_rows_after_positions_cls_and_norm(tiny_encoder_cfg):
    torch.manual_seed(0)
    teacher = AudioEncoder(tiny_encoder_cfg).eval()
    fbank = torch.randn(2, 128, 32)
    token_is_mixed = mixed_token_mask(REGIONS, FREQ_PATCHES)
    features = foreign_dropped_features(teacher, fbank, token_is_mixed, top_k=2)
    # The tokens keep their own positional embedding: same as gathering them before CLS + LayerNorm.
    kept = torch.nonzero(token_is_mixed).flatten().expand(2, -1)
    sequence = teacher.add_cls_and_norm(gather_tokens(teacher.embed(fbank), kept))
    _, ffn = teacher.forward_blocks(sequence, return_ffn=True)
    assert features.shape == (2, int(token_is_mixed.sum()), 32)
    assert torch.allclose(features, make_targets([layer[:, 1:] for layer in ffn], 2), atol=1e-5)
    # ...and it is a different view from slicing the full pass (fewer tokens to attend to and a
    # different instance-norm population).
    full = teacher_targets(teacher, fbank, 2, 2).local[:, token_is_mixed]
    assert not torch.allclose(features, full, atol=1e-3)


def test_srl_loss_regresses_onto_the_base_plus_the_previous_clip(tiny_encoder_cfg):
    torch.manual_seed(0)
    teacher = AudioEncoder(tiny_encoder_cfg).eval()
    batch, clones = 3, 2
    fbank = torch.randn(batch, 128, 32)
    base = teacher_targets(teacher, fbank, 2, 2).local
    token_is_mixed = mixed_token_mask(REGIONS, FREQ_PATCHES)
    dropped = foreign_dropped_features(teacher, fbank, token_is_mixed, 2)
    expected = base.clone()
    for i in range(batch):  # clip i's partner is clip i − 1 (wrap-around)
        expected[i, token_is_mixed] = (base[i, token_is_mixed] + dropped[(i - 1) % batch]) / 2
    mask = torch.rand(batch * clones, 64) < 0.8
    cls = torch.zeros(batch * clones, 32)
    perfect = expected.repeat_interleave(clones, dim=0)
    terms = source_retention_terms(teacher, mixed_half(fbank, REGIONS, base, perfect, cls, mask, clones),
                                   SrlSettings(top_k=2, aggregation="mean", with_local=True, with_global=True))
    assert set(terms) == {"srl_local", "srl_global"}
    assert float(terms["srl_local"].value) < 1e-10
    assert terms["srl_local"].count == int(mask.sum())
    # The global SRL compares the CLS output with the pooled SRL target.
    pooled = expected.mean(dim=1).repeat_interleave(clones, dim=0)
    assert torch.isclose(terms["srl_global"].value, (pooled**2).sum(-1).mean() / 32**0.5)
    # A prediction of the base clip alone is penalised in the mixed regions.
    base_only = source_retention_terms(
        teacher, mixed_half(fbank, REGIONS, base, base.repeat_interleave(clones, dim=0), cls, mask, clones),
        SrlSettings(top_k=2, aggregation="mean"))
    assert float(base_only["srl_local"].value) > 1e-3


def test_unmixed_update_gives_the_clip_its_own_features(tiny_encoder_cfg):
    teacher = AudioEncoder(tiny_encoder_cfg).eval()
    fbank = torch.randn(2, 128, 32)
    base = teacher_targets(teacher, fbank, 2, 2).local
    mask = torch.ones(2, 64, dtype=torch.bool)
    terms = source_retention_terms(
        teacher, mixed_half(fbank, no_regions_mixed(128, 8), base, base, torch.zeros(2, 32), mask, 1),
        SrlSettings(top_k=2, aggregation="mean"))
    assert float(terms["srl_local"].value) == 0.0
