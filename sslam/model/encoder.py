"""The SSLAM/EAT audio encoder: a ViT over 16×16 spectrogram patches with POST-norm blocks.

The layer order follows the official data2vec-multi "IMAGE" encoder that EAT and SSLAM use
(spec algorithm.md §2), which differs from a timm ViT in four ways a reader might not expect:

* the fixed 2-D sin-cos table encodes the FREQUENCY index in its first half of channels and the
  TIME index in its second half (a quirk inherited from MAE's meshgrid order);
* the CLS token carries no position and is prepended only after masking;
* one LayerNorm runs over the whole sequence before the first block, and there is none after
  the last one;
* the blocks are post-norm: ``r = LN1(x + attn(x)); out = LN2(r + mlp(r))``. The teacher's
  regression targets are the raw MLP outputs ``mlp(r)`` (``return_ffn=True``).

Token order is time-major: token ``t·F_p + f`` is time patch ``t``, frequency patch ``f``.

Inside `forward_blocks` the tokens of all sequences travel as one flat (N·L, D) matrix: every linear layer
is then one matrix product (a 3-D input costs two reshapes around it, forward and backward), and a block
calls its layers' functions with their parameters instead of calling the layer modules (a module call costs
about a microsecond of Python; a ViT-B pretraining update makes ~30 blocks' worth of them). Both matter where
the host's per-operation cost decides the step time (docs/performance.md); the numbers are the same, a linear
layer flattens a contiguous 3-D input to exactly this matrix. For the same reason the blocks read their
submodules and parameters from the module tables (`_modules`, `_parameters`) rather than through
nn.Module.__getattr__. Hooks on the blocks, and on the Linear/LayerNorm modules inside them, do not run in
`forward_blocks` (`hidden_states` calls the blocks as modules, so block hooks run there); parametrisations
(torch.nn.utils.parametrize) of the layers inside a block are not supported.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from sslam.model.config import EncoderConfig, ModelInputError


def sincos_1d(channels: int, positions: torch.Tensor) -> torch.Tensor:
    """(P,) positions -> (P, channels) = [sin(p·ω_k) for k < C/2, cos(p·ω_k) for k < C/2],
    ω_k = 10000^(−k/(C/2)) (the MAE/Transformer table), computed in float64 for exactness."""
    half = channels // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / half)
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_table(embed_dim: int, time_patches: int, freq_patches: int) -> torch.Tensor:
    """Fixed 2-D position table (1, time_patches·freq_patches, embed_dim), rows time-major.

    Channels [0, D/2) encode the frequency index and [D/2, D) the time index, as in the official
    table (MAE builds its grid with the width coordinate first, and EAT's width is frequency).
    """
    time_index = torch.arange(time_patches).repeat_interleave(freq_patches)
    freq_index = torch.arange(freq_patches).repeat(time_patches)
    table = torch.cat([sincos_1d(embed_dim // 2, freq_index), sincos_1d(embed_dim // 2, time_index)], dim=1)
    return table.float().unsqueeze(0)


class DropPath(nn.Module):
    """Stochastic depth: zero a residual branch per sample with probability `rate` (training only)."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor, batch: int | None = None) -> torch.Tensor:
        """x: (N, ...) per sample, or the flat (N·L, D) tokens of `batch` = N sequences."""
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        per_sample = x if batch is None else x.view(batch, -1, x.shape[-1])
        mask = per_sample.new_empty((per_sample.shape[0],) + (1,) * (per_sample.ndim - 1)).bernoulli_(keep)
        return (per_sample * mask / keep).view(x.shape)

    def extra_repr(self) -> str:
        return f"rate={self.rate:.3f}"


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (outputs ordered q|k|v, heads contiguous)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        return self.attend(x.reshape(batch * length, dim), batch, length).view(batch, length, dim)

    def attend(self, tokens: torch.Tensor, batch: int, length: int) -> torch.Tensor:
        """The flat (N·L, D) tokens of N sequences of L tokens -> (N·L, D)."""
        dim, layers = tokens.shape[-1], self._modules  # submodules without nn.Module.__getattr__ (see `linear`)
        qkv = linear(layers["qkv"], tokens).view(batch, length, 3, self.num_heads, dim // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, heads, L, head_dim)
        # SDPA scales by 1/sqrt(head_dim) and accumulates the softmax in fp32 under autocast,
        # which is what the official "fp32 softmax" attention does explicitly.
        out = F.scaled_dot_product_attention(query, key, value)
        return linear(layers["proj"], out.transpose(1, 2).reshape(batch * length, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()  # exact (erf) GELU, as timm's Mlp
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = self._modules  # (see `linear`)
        return linear(layers["fc2"], F.gelu(linear(layers["fc1"], x), approximate=layers["act"].approximate))


class PostNormBlock(nn.Module):
    """The official "AltBlock" with layer_norm_first=False. Returns (block output, raw MLP output)."""

    def __init__(self, config: EncoderConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        self.attn = Attention(config.embed_dim, config.num_heads, config.qkv_bias)
        self.norm1 = nn.LayerNorm(config.embed_dim, eps=config.norm_eps)
        self.mlp = Mlp(config.embed_dim, config.mlp_hidden_dim)
        self.norm2 = nn.LayerNorm(config.embed_dim, eps=config.norm_eps)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, length, dim = x.shape
        out, ffn_out = self.forward_flat(x.reshape(batch * length, dim), batch, length)
        return out.view(batch, length, dim), ffn_out.view(batch, length, dim)

    def forward_flat(self, tokens: torch.Tensor, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` on the flat (N·L, D) tokens of N sequences of L tokens."""
        parts = self._modules  # submodules without nn.Module.__getattr__ (see `linear`)
        drop_path = parts["drop_path"] if parts["drop_path"].rate and parts["drop_path"].training else None
        attended = parts["attn"].attend(tokens, batch, length)
        residual = layer_norm(parts["norm1"], tokens + (attended if drop_path is None else drop_path(attended, batch)))
        ffn_out = parts["mlp"].forward(residual)
        out = layer_norm(parts["norm2"], residual + (ffn_out if drop_path is None else drop_path(ffn_out, batch)))
        return out, ffn_out


class AudioEncoder(nn.Module):
    """Spectrogram ViT. Input: normalised fbank (N, T, F) or (N, 1, T, F); see the module docstring."""

    def __init__(self, config: EncoderConfig | None = None) -> None:
        super().__init__()
        # A private copy: set_drop_path edits it, and callers may share their config object.
        self.config = config = dataclasses.replace(config or EncoderConfig())
        self.patch_embed = nn.Conv2d(1, config.embed_dim, kernel_size=config.patch_size, stride=config.patch_size)
        # Fixed, never trained: a persistent buffer keeps it in the state_dict (like the official
        # requires_grad=False parameter) while keeping it out of optimisers and the EMA average.
        self.register_buffer(
            "pos_embed", sincos_table(config.embed_dim, config.max_time_patches, config.freq_patches)
        )
        self.cls_token = nn.Parameter(torch.empty(1, 1, config.embed_dim))
        self.pre_norm = nn.LayerNorm(config.embed_dim, eps=config.norm_eps)
        self.blocks = nn.ModuleList(PostNormBlock(config) for _ in range(config.depth))
        self.set_drop_path(config.drop_path)
        self.reset_parameters()

    # ------------------------------------------------------------------ setup
    def reset_parameters(self) -> None:
        """BERT init for every Linear (N(0, 0.02), bias 0); LayerNorm 1/0; CLS ~ N(0, 1);
        Xavier-uniform patch conv."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # Xavier on the flattened (D, patch²) view, so fan-in counts the pixels of one patch;
        # the conv bias keeps its PyTorch default, as in the official code.
        self.patch_embed.reset_parameters()
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.config.embed_dim, -1))
        nn.init.normal_(self.cls_token, std=1.0)

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth rising linearly from 0 (first block) to `rate` (last block)."""
        if not 0.0 <= rate < 1.0:
            raise ModelInputError(f"drop_path must be in [0, 1), got {rate}")
        self.config.drop_path = rate
        rates = torch.linspace(0.0, rate, len(self.blocks)).tolist() if self.blocks else []
        for block, block_rate in zip(self.blocks, rates):
            block.drop_path.rate = block_rate

    # ------------------------------------------------------------------ shapes
    def grid(self, num_frames: int) -> tuple[int, int]:
        """(time_patches, freq_patches) for an input of `num_frames` frames."""
        if num_frames % self.config.patch_size:
            raise ModelInputError(f"{num_frames} frames is not a multiple of the patch size {self.config.patch_size}")
        time_patches = num_frames // self.config.patch_size
        if time_patches > self.config.max_time_patches:
            raise ModelInputError(
                f"{num_frames} frames = {time_patches} time patches exceed the positional table "
                f"({self.config.max_time_patches} time patches); truncate the input"
            )
        return time_patches, self.config.freq_patches

    # ------------------------------------------------------------------ forward steps
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, F) or (N, 1, T, F) fbank -> (N, L, D) patch tokens + fixed positions, time-major."""
        if x.ndim == 3:
            x = x.unsqueeze(1)
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[-1] != self.config.num_mel_bins:
            raise ModelInputError(
                f"expected fbank (N, T, {self.config.num_mel_bins}) or (N, 1, T, {self.config.num_mel_bins}), "
                f"got {tuple(x.shape)}"
            )
        self.grid(x.shape[-2])  # validates the length
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, D, Tp, Fp) -> (N, Tp·Fp, D)
        return tokens + self.pos_embed[:, : tokens.shape[1]].to(tokens.dtype)

    def add_cls_and_norm(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, L', D) -> (N, 1+L', D): prepend the CLS token (no position), then the pre-blocks LayerNorm."""
        cls = self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        return self.pre_norm(torch.cat([cls, tokens], dim=1))

    def forward_blocks(
        self, seq: torch.Tensor, return_ffn: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Run all blocks. With return_ffn, also return each block's raw MLP output (N, 1+L', D)."""
        batch, length, dim = seq.shape
        tokens = seq.reshape(batch * length, dim)
        ffn_outputs = []
        for block in self.blocks:
            tokens, ffn_out = block.forward_flat(tokens, batch, length)
            if return_ffn:
                ffn_outputs.append(ffn_out.view(batch, length, dim))
        seq = tokens.view(batch, length, dim)
        return (seq, ffn_outputs) if return_ffn else seq

    def forward_features(
        self, x: torch.Tensor, keep_index: torch.Tensor | None = None, return_ffn: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """fbank -> (N, 1+K, D), CLS first. keep_index (N, K) selects the visible tokens (masking
        happens after the positional embedding, so kept tokens keep their positions)."""
        tokens = self.embed(x)
        if keep_index is not None:
            tokens = gather_tokens(tokens, keep_index)
        return self.forward_blocks(self.add_cls_and_norm(tokens), return_ffn=return_ffn)

    def forward(self, x: torch.Tensor, keep_index: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_features(x, keep_index)

    # ------------------------------------------------------------------ accounting
    def num_parameters(self, include_pos_table: bool = False) -> int:
        """Trainable parameter count; `include_pos_table` adds the fixed sin-cos table, which the
        paper's "93M during pre-training" counts (the official code stores it as a parameter)."""
        count = sum(p.numel() for p in self.parameters())
        return count + (self.pos_embed.numel() if include_pos_table else 0)

    def flops_per_forward(self, num_tokens: int, num_patches: int | None = None) -> int:
        """Forward FLOPs of one sequence (see EncoderConfig.flops_per_forward)."""
        return self.config.flops_per_forward(num_tokens, num_patches)


def linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` without the module call (see the module docstring). The parameters are read from the
    module's parameter table: `layer.weight` goes through nn.Module.__getattr__, a Python function, and an
    update reads ~24 blocks' worth of them."""
    parameters = layer._parameters
    return F.linear(x, parameters["weight"], parameters["bias"])


def layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """`norm(x)` without the module call and its __getattr__ (see `linear`)."""
    parameters = norm._parameters
    return torch.layer_norm(x, norm.normalized_shape, parameters["weight"], parameters["bias"], norm.eps)


# Module functions rather than AudioEncoder methods: a method would change the class every pretraining and
# evaluation job records (docs/fingerprints.md) and re-run them all, for code none of them runs.
def layer_index(encoder: AudioEncoder, layer: int) -> int:
    """A layer number -> 0..depth. Layer 0 is the sequence entering the first block (patch embeddings with their
    positions, CLS prepended, after the pre-blocks LayerNorm); layer k the output of block k; negative numbers
    count from the end, so -1 is the last block's output, what `AudioEncoder.forward` returns."""
    depth = len(encoder.blocks)
    if not -(depth + 1) <= layer <= depth:
        raise ModelInputError(f"layer {layer} does not exist: this encoder has layers 0..{depth} "
                              f"(or -{depth + 1}..-1 counted from the last)")
    return layer % (depth + 1)


def hidden_states(encoder: AudioEncoder, x: torch.Tensor, layers: list[int] | tuple[int, ...]) -> torch.Tensor:
    """fbank -> (N, len(layers), 1+L, D): the encoder's hidden states at the given layers (see `layer_index`), in
    the order asked for; layer -1 is exactly `encoder(x)`. The blocks after the deepest layer asked for do not run."""
    wanted = [layer_index(encoder, layer) for layer in layers]
    if not wanted:
        raise ModelInputError("no layer asked for")
    seq = encoder.add_cls_and_norm(encoder.embed(x))
    states = {0: seq} if 0 in wanted else {}
    for number, block in enumerate(encoder.blocks[: max(wanted)], start=1):
        seq, _ = block(seq)
        if number in wanted:  # only what was asked for stays in memory
            states[number] = seq
    return torch.stack([states[number] for number in wanted], dim=1)


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tokens (N, L, D), index (N, K) -> (N, K, D) = tokens[n, index[n, k]]."""
    if index.ndim != 2 or index.shape[0] != tokens.shape[0]:
        raise ModelInputError(f"keep_index must be (N={tokens.shape[0]}, K), got {tuple(index.shape)}")
    return tokens.gather(1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


__all__ = [
    "AudioEncoder",
    "EncoderConfig",
    "ModelInputError",
    "PostNormBlock",
    "gather_tokens",
    "sincos_table",
]
