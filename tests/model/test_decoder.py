import pytest
import torch
import torch.nn.functional as F

from sslam.model import Decoder2d, DecoderConfig, ModelInputError

GRID = (6, 4)
DIM = 48


def random_keep_index(batch, kept, positions):
    return torch.stack([torch.randperm(positions)[:kept] for _ in range(batch)])


def reference_decoder(decoder, grid_tokens, grid):
    """Independent re-statement: (N, L, D) time-major -> (N, D, Tp, Fp), residual conv layers, Linear."""
    n, _, dim = grid_tokens.shape
    x = grid_tokens.view(n, grid[0], grid[1], dim).permute(0, 3, 1, 2)
    for layer in decoder.layers:
        conv = layer.conv
        y = F.conv2d(x, conv.weight, conv.bias, padding=conv.kernel_size[0] // 2, groups=conv.groups)
        mean = y.mean(dim=1, keepdim=True)
        var = y.var(dim=1, unbiased=False, keepdim=True)
        x = x + F.gelu((y - mean) / torch.sqrt(var + 1e-5))
    tokens = x.permute(0, 2, 3, 1).reshape(n, grid[0] * grid[1], dim)
    return tokens @ decoder.proj.weight.T + decoder.proj.bias


def test_noise_tokens_fill_masked_positions(tiny_decoder_config):
    config = DecoderConfig(depth=1, groups=4, mask_noise_std=0.5)
    decoder = Decoder2d(config, embed_dim=DIM)
    positions = GRID[0] * GRID[1]
    keep = random_keep_index(64, 5, positions)
    visible = torch.randn(64, 5, DIM) + 3.0
    generator = torch.Generator().manual_seed(0)
    noise = decoder.draw_noise(64, positions - 5, generator)
    assert noise.shape == (64, positions - 5, DIM)
    grid = decoder.scatter_to_grid(visible, keep, noise, positions)
    is_visible = torch.zeros(64, positions, dtype=torch.bool).scatter(1, keep, True)
    for n in range(3):
        torch.testing.assert_close(grid[n, keep[n]], visible[n])
        # The noise tokens sit at the masked positions in ascending order.
        torch.testing.assert_close(grid[n, torch.nonzero(~is_visible[n]).flatten()], noise[n])
    assert grid[~is_visible].mean().abs().item() < 0.02
    assert grid[~is_visible].std().item() == pytest.approx(0.5, rel=0.03)
    # fresh noise on every draw, never learned, and only from the caller's generator
    assert not torch.equal(decoder.draw_noise(64, positions - 5, generator), noise)
    assert torch.equal(decoder.draw_noise(64, positions - 5, torch.Generator().manual_seed(0)), noise)
    assert all("noise" not in name and "mask" not in name for name, _ in decoder.named_parameters())
    with pytest.raises(ModelInputError, match="one token per masked position"):
        decoder.scatter_to_grid(visible, keep, noise[:, 1:], positions)


def test_decoder_matches_reference_and_predicts_every_position(tiny_decoder_config):
    decoder = Decoder2d(tiny_decoder_config, embed_dim=DIM)
    positions = GRID[0] * GRID[1]
    keep = random_keep_index(2, 6, positions)
    visible = torch.randn(2, 6, DIM)
    noise = decoder.draw_noise(2, positions - 6, torch.Generator().manual_seed(1))
    out = decoder(visible, keep, GRID, noise)
    grid_tokens = decoder.scatter_to_grid(visible, keep, noise, positions)
    assert out.shape == (2, positions, DIM)
    torch.testing.assert_close(out, reference_decoder(decoder, grid_tokens, GRID), rtol=1e-4, atol=1e-5)


def test_residual_structure_identity_when_convs_are_zero(tiny_decoder_config):
    decoder = Decoder2d(tiny_decoder_config, embed_dim=DIM)
    with torch.no_grad():
        for layer in decoder.layers:
            layer.conv.weight.zero_()
            layer.conv.bias.zero_()
    keep = random_keep_index(2, 6, GRID[0] * GRID[1])
    visible = torch.randn(2, 6, DIM)
    # zero conv -> LN(0) = 0 -> GELU(0) = 0: each layer adds nothing, so only the projection acts
    out = decoder(visible, keep, GRID, decoder.draw_noise(2, GRID[0] * GRID[1] - 6))
    torch.testing.assert_close(torch.gather(out, 1, keep[..., None].expand(-1, -1, DIM)), decoder.proj(visible))


def test_decoder_configuration_errors():
    with pytest.raises(ModelInputError, match="groups"):
        Decoder2d(DecoderConfig(groups=5), embed_dim=DIM)
    with pytest.raises(ModelInputError, match="odd"):
        DecoderConfig(kernel=4)
    decoder = Decoder2d(DecoderConfig(depth=1, groups=4), embed_dim=DIM)
    with pytest.raises(ModelInputError, match="width"):
        decoder(torch.zeros(1, 3, DIM + 4), torch.zeros(1, 3, dtype=torch.long), GRID, torch.zeros(1, 21, DIM + 4))


def test_default_decoder_shapes_follow_official_recipe():
    decoder = Decoder2d(DecoderConfig(), embed_dim=768)
    weight = decoder.layers[0].conv.weight
    assert len(decoder.layers) == 6
    assert weight.shape == (768, 768 // 16, 3, 3)


def test_encoder_decoder_shapes_for_a_non_default_config(tiny_config, tiny_decoder_config):
    from sslam.model import AudioEncoder

    encoder = AudioEncoder(tiny_config)
    decoder = Decoder2d(tiny_decoder_config, tiny_config.embed_dim)
    frames = 192
    grid = encoder.grid(frames)
    assert grid == (frames // tiny_config.patch_size, tiny_config.num_mel_bins // tiny_config.patch_size)
    positions = grid[0] * grid[1]
    keep = random_keep_index(2, positions // 5, positions)
    student_out = encoder.forward_features(torch.randn(2, frames, tiny_config.num_mel_bins), keep_index=keep)
    prediction = decoder(student_out[:, 1:], keep, grid, decoder.draw_noise(2, positions - keep.shape[1]))
    assert prediction.shape == (2, positions, tiny_config.embed_dim)
    prediction.sum().backward()  # gradients reach the student through the decoder
    assert encoder.blocks[0].attn.qkv.weight.grad is not None
