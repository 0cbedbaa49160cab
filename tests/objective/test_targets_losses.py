"""Teacher targets (spec §5) and loss values/weights (spec §6, §11.3-4; paper Eq. 1-2)."""
import math

import pytest
import torch

from sslam.model import AudioEncoder
from sslam.objective.losses import LossTerm, d2v_loss, global_loss, local_loss, term_weights, total_loss
from sslam.objective.source_retention import OFFICIAL_SRL_LOCAL_FACTOR
from sslam.objective.targets import global_target, make_targets, teacher_targets


def reference_targets(layers: list[torch.Tensor], top_k: int) -> torch.Tensor:
    """make_targets written out with explicit means and biased variances."""
    normalised = []
    for layer in layers[-top_k:]:
        mean = layer.mean(dim=1, keepdim=True)  # over tokens, per sample and channel
        var = layer.var(dim=1, unbiased=False, keepdim=True)
        normalised.append((layer - mean) / torch.sqrt(var + 1e-5))
    average = sum(normalised) / top_k
    mean = average.mean(dim=-1, keepdim=True)  # over channels, per token
    var = average.var(dim=-1, unbiased=False, keepdim=True)
    return (average - mean) / torch.sqrt(var + 1e-5)


def random_layers(depth=4, batch=2, tokens=10, dim=6, seed=0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, tokens, dim, generator=generator) * (i + 1) + i for i in range(depth)]


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_make_targets_is_instance_norm_per_layer_then_average_then_layer_norm(top_k):
    layers = random_layers()
    assert torch.allclose(make_targets(layers, top_k), reference_targets(layers, top_k), atol=1e-5)


def test_make_targets_uses_only_the_last_k_layers_and_is_fp32():
    layers = random_layers()
    changed = [layers[0] * 5 - 3] + layers[1:]
    assert torch.equal(make_targets(layers, 3), make_targets(changed, 3))
    assert not torch.allclose(make_targets(layers, 4), make_targets(changed, 4))
    assert make_targets([layer.bfloat16() for layer in layers], 2).dtype == torch.float32


def test_global_target_is_pooled_after_normalisation():
    layers = random_layers()
    targets = make_targets(layers, 4)
    assert torch.allclose(global_target(targets), targets.mean(dim=1))
    pooled_first = make_targets([layer.mean(dim=1, keepdim=True).expand_as(layer) for layer in layers], 4)
    assert not torch.allclose(global_target(targets), pooled_first[:, 0], atol=1e-3)


def test_teacher_targets_use_the_ffn_outputs_without_cls(tiny_encoder_cfg):
    torch.manual_seed(0)
    teacher = AudioEncoder(tiny_encoder_cfg).eval()
    fbank = torch.randn(2, 128, 32)
    result = teacher_targets(teacher, fbank, local_layers=2, global_layers=1)
    _, ffn = teacher.forward_features(fbank, return_ffn=True)
    layers = [layer[:, 1:] for layer in ffn]
    assert result.local.shape == (2, 64, 32)
    assert torch.allclose(result.local, make_targets(layers, 2), atol=1e-6)
    assert torch.allclose(result.pooled, make_targets(layers, 1).mean(dim=1), atol=1e-6)


def test_d2v_loss_sums_squared_error_over_channels_over_sqrt_dim():
    prediction = torch.zeros(3, 16)
    target = torch.full((3, 16), 2.0)
    assert torch.allclose(d2v_loss(prediction, target), torch.full((3,), 16 * 4 / math.sqrt(16)))


def test_local_loss_averages_masked_tokens_only():
    target = torch.zeros(2, 5, 4)
    prediction = torch.ones(2, 5, 4)
    mask = torch.tensor([[True, True, False, False, False], [True, False, False, False, False]])
    prediction[~mask] = 100.0  # visible tokens must not count
    term = local_loss(prediction, target, mask)
    assert term.count == 3 and term.kind == "local"
    assert torch.isclose(term.value, torch.tensor(4 / 2.0))


def constructed_stage2_terms() -> tuple[dict[str, LossTerm], int]:
    """Two halves of 4 sequences with 3 masked tokens each; D = 4, so s = 4·error²/2 = 2·error²."""
    three_masked = (torch.arange(5) < 3).expand(4, 5)

    def local(error, factor=1.0):
        return local_loss(torch.full((4, 5, 4), error), torch.zeros(4, 5, 4), three_masked, official_factor=factor)

    terms = {
        "local_unmixed": local(1.0),   # mean s = 4·1/2 = 2
        "local_mixed": local(2.0),     # 8
        "srl_local": local(3.0, OFFICIAL_SRL_LOCAL_FACTOR),  # 18, doubled by the official code
        "global_unmixed": global_loss(torch.full((4, 4), 1.0), torch.zeros(4, 4)),  # 2
        "global_mixed": global_loss(torch.full((4, 4), 0.5), torch.zeros(4, 4)),    # 0.5
    }
    return terms, 2 * 4 * 3  # masked tokens over both halves of the student batch


def test_official_weighting_reproduces_the_released_code():
    terms, masked_tokens = constructed_stage2_terms()
    weights = term_weights(terms, "official", masked_tokens)
    assert weights == {"local_unmixed": 0.5, "local_mixed": 0.5, "srl_local": 1.0,
                       "global_unmixed": 4.0, "global_mixed": 4.0}
    # The fairseq criterion: Σ every loss tensor (SRL ×2, global ×sample_size) / sample_size.
    token_sum = 12 * 2.0 + 12 * 8.0 + 2.0 * 12 * 18.0
    global_sum = (4 * 2.0 + 4 * 0.5) * masked_tokens
    expected = (token_sum + global_sum) / masked_tokens
    assert torch.isclose(total_loss(terms, weights), torch.tensor(expected))


def test_paper_weighting_is_a_plain_sum_of_means():
    terms, masked_tokens = constructed_stage2_terms()
    weights = term_weights(terms, "paper", masked_tokens)
    assert set(weights.values()) == {1.0}
    assert torch.isclose(total_loss(terms, weights), torch.tensor(2.0 + 8.0 + 18.0 + 2.0 + 0.5))


def test_official_stage1_weighting_is_token_mean_plus_sequence_sum():
    terms = {"local_unmixed": LossTerm(torch.tensor(3.0), 410 * 192, "local"),
             "global_unmixed": LossTerm(torch.tensor(0.5), 192, "global")}
    weights = term_weights(terms, "official", 410 * 192)
    assert weights == {"local_unmixed": 1.0, "global_unmixed": 192.0}


def test_the_official_factor_travels_with_the_term_not_its_name():
    terms, masked_tokens = constructed_stage2_terms()
    renamed = {"my_retention_term": terms.pop("srl_local"), "srl_plain": terms["local_mixed"]}
    weights = term_weights(renamed, "official", masked_tokens)
    assert weights == {"my_retention_term": 1.0, "srl_plain": 0.5}
    assert set(term_weights(renamed, "paper", masked_tokens).values()) == {1.0}
