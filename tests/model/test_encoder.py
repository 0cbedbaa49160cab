import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from sslam.model import AudioEncoder, EncoderConfig, ModelInputError, gather_tokens
from sslam.model.encoder import sincos_table

TARGET_FRAMES = 192  # 12 time patches of 16 frames


def reference_block(block, x):
    """Hand-written post-norm block: h = x + Attn(x); r = LN1(h); m = MLP(r); out = LN2(r + m)."""
    n, length, dim = x.shape
    heads = block.attn.num_heads
    qkv = x @ block.attn.qkv.weight.T + block.attn.qkv.bias
    q, k, v = qkv.split(dim, dim=-1)
    split = lambda t: t.view(n, length, heads, dim // heads).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // heads), dim=-1)
    attended = (weights @ v).transpose(1, 2).reshape(n, length, dim)
    h = x + attended @ block.attn.proj.weight.T + block.attn.proj.bias
    r = F.layer_norm(h, (dim,), block.norm1.weight, block.norm1.bias, eps=block.norm1.eps)
    hidden = F.gelu(r @ block.mlp.fc1.weight.T + block.mlp.fc1.bias, approximate="none")
    m = hidden @ block.mlp.fc2.weight.T + block.mlp.fc2.bias
    out = F.layer_norm(r + m, (dim,), block.norm2.weight, block.norm2.bias, eps=block.norm2.eps)
    return out, m


def randomise(module):
    """Random non-trivial weights everywhere (LayerNorm affine included)."""
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0, 0.2)


def test_positional_table_layout(tiny_config):
    table = sincos_table(tiny_config.embed_dim, tiny_config.max_time_patches, tiny_config.freq_patches)
    dim, freq_patches = tiny_config.embed_dim, tiny_config.freq_patches
    assert table.shape == (1, tiny_config.max_time_patches * freq_patches, dim)
    quarter = dim // 4
    for row in [0, 1, freq_patches + 2, table.shape[1] - 1]:
        t, f = divmod(row, freq_patches)
        for k in range(quarter):
            omega = 10000 ** (-k / quarter)
            expected = [math.sin(f * omega), math.cos(f * omega), math.sin(t * omega), math.cos(t * omega)]
            got = [table[0, row, k + j * quarter].item() for j in range(4)]
            assert got == pytest.approx(expected, abs=1e-6), (row, k)


def test_embed_is_time_major_patch_conv_plus_positions(tiny_config):
    encoder = AudioEncoder(tiny_config)
    x = torch.randn(2, TARGET_FRAMES, tiny_config.num_mel_bins)
    tokens = encoder.embed(x)
    p, freq_patches = tiny_config.patch_size, tiny_config.freq_patches
    time_patches = TARGET_FRAMES // p
    assert tokens.shape == (2, time_patches * freq_patches, tiny_config.embed_dim)
    weight = encoder.patch_embed.weight.flatten(1)
    for t, f in [(0, 0), (0, 3), (1, 0), (time_patches - 1, 2)]:
        patch = x[:, t * p : (t + 1) * p, f * p : (f + 1) * p].reshape(2, -1)
        expected = patch @ weight.T + encoder.patch_embed.bias + encoder.pos_embed[0, t * freq_patches + f]
        torch.testing.assert_close(tokens[:, t * freq_patches + f], expected, rtol=1e-4, atol=1e-5)
    # (N, 1, T, F) input gives the same tokens
    torch.testing.assert_close(encoder.embed(x.unsqueeze(1)), tokens)


def test_forward_matches_hand_written_post_norm_reference(tiny_config):
    encoder = AudioEncoder(tiny_config).eval()
    randomise(encoder)
    x = torch.randn(2, TARGET_FRAMES, tiny_config.num_mel_bins)
    out, ffn = encoder.forward_features(x, return_ffn=True)

    tokens = encoder.embed(x)
    seq = torch.cat([encoder.cls_token.expand(2, -1, -1), tokens], dim=1)  # CLS without position
    seq = F.layer_norm(seq, (tiny_config.embed_dim,), encoder.pre_norm.weight, encoder.pre_norm.bias, eps=1e-6)
    for block, block_ffn in zip(encoder.blocks, ffn):
        seq, expected_ffn = reference_block(block, seq)
        # FFN outputs are the raw MLP outputs: before the residual and before LN2
        torch.testing.assert_close(block_ffn, expected_ffn, rtol=1e-4, atol=1e-4)
    # no final LayerNorm: the output is LN2 of the last block
    torch.testing.assert_close(out, seq, rtol=1e-4, atol=1e-4)
    assert out.shape == (2, 1 + tokens.shape[1], tiny_config.embed_dim)
    assert len(ffn) == tiny_config.depth


def test_masked_gather_equals_running_on_the_subset(tiny_config):
    encoder = AudioEncoder(tiny_config).eval()
    x = torch.randn(3, TARGET_FRAMES, tiny_config.num_mel_bins)
    num_tokens = encoder.embed(x).shape[1]
    keep = torch.stack([torch.randperm(num_tokens)[:7] for _ in range(3)])
    out = encoder.forward_features(x, keep_index=keep)
    assert out.shape == (3, 8, tiny_config.embed_dim)
    for n in range(3):
        subset = encoder.embed(x[n : n + 1])[:, keep[n]]  # positions were added before dropping
        expected = encoder.forward_blocks(encoder.add_cls_and_norm(subset))
        torch.testing.assert_close(out[n : n + 1], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gather_tokens(encoder.embed(x), keep)[1], encoder.embed(x)[1, keep[1]])


def test_init_follows_bert_and_official_recipe():
    encoder = AudioEncoder(EncoderConfig(embed_dim=128, depth=2, num_heads=2))
    fc1 = encoder.blocks[0].mlp.fc1
    assert fc1.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.count_nonzero(fc1.bias) == 0
    assert encoder.cls_token.std().item() == pytest.approx(1.0, rel=0.2)
    assert torch.equal(encoder.pre_norm.weight, torch.ones(128))
    bound = math.sqrt(6 / (128 + 16 * 16))  # Xavier on the flattened (D, 256) view
    assert encoder.patch_embed.weight.abs().max() <= bound
    assert encoder.patch_embed.weight.abs().max() > 0.9 * bound
    assert "pos_embed" in encoder.state_dict()
    assert "pos_embed" not in dict(encoder.named_parameters())


def test_drop_path_schedule_and_train_eval(tiny_config):
    encoder = AudioEncoder(tiny_config)
    encoder.set_drop_path(0.5)
    assert [b.drop_path.rate for b in encoder.blocks] == pytest.approx([0.0, 0.5])
    x = torch.randn(8, TARGET_FRAMES, tiny_config.num_mel_bins)
    encoder.eval()
    torch.testing.assert_close(encoder(x), encoder(x))
    encoder.train()
    assert not torch.allclose(encoder(x), encoder(x))
    with pytest.raises(ModelInputError):
        encoder.set_drop_path(1.5)


def test_bad_inputs_raise_clear_errors(tiny_config):
    encoder = AudioEncoder(tiny_config)
    too_long = (tiny_config.max_time_patches + 1) * tiny_config.patch_size
    with pytest.raises(ModelInputError, match="positional table"):
        encoder(torch.zeros(1, too_long, tiny_config.num_mel_bins))
    with pytest.raises(ModelInputError, match="multiple of the patch size"):
        encoder(torch.zeros(1, 40, tiny_config.num_mel_bins))
    with pytest.raises(ModelInputError, match="expected fbank"):
        encoder(torch.zeros(1, TARGET_FRAMES, tiny_config.num_mel_bins + 16))
    with pytest.raises(ModelInputError, match="num_heads"):
        EncoderConfig(embed_dim=64, num_heads=3)


def test_flops_formula_matches_torch_flop_counter(tiny_config):
    encoder = AudioEncoder(tiny_config).eval()
    x = torch.randn(1, TARGET_FRAMES, tiny_config.num_mel_bins)
    # The math backend decomposes attention into matmuls the counter sees on any device.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        sequence_length = encoder(x).shape[1]
    counted = counter.get_total_flops()
    assert encoder.flops_per_forward(sequence_length) == pytest.approx(counted, rel=0.01)


def test_parameter_count_counts_the_table_only_on_request(tiny_config):
    encoder = AudioEncoder(tiny_config)
    trainable = sum(p.numel() for p in encoder.parameters())
    assert encoder.num_parameters() == trainable
    assert encoder.num_parameters(include_pos_table=True) == trainable + encoder.pos_embed.numel()
