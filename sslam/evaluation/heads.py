"""Classifier on top of the pretrained encoder, and its optimiser parameter groups.

Official fine-tuning head (spec §9): the final-layer CLS token (mean pooling of the patch tokens
is an option) -> LayerNorm(eps 1e-6, affine; "fc_norm") -> Linear, weight trunc-normal(std 0.02),
bias 0. The linear probe trains the same head on a frozen backbone.

`feature_norm: batch` (MAE's linear-probing recipe) puts a BatchNorm without affine parameters in
front: it standardises every feature across clips. The per-clip LayerNorm cannot do that, and it
matters when the pooled features share a large common part and differ across clips only by a
small one, as the CLS token of a randomly initialised or briefly pretrained encoder does
(post-norm blocks, 0.02-std weights: the CLS output varies by <1 % across clips). A 0.02-init
linear head then sees near-identical inputs, learns only the class bias and predicts one class.

`pooling: attentive` is the patch-token probe: a learned query attends over the patch tokens
(`AttentivePooling`), so the pooled vector can weight the patches where each sound is, instead of
the CLS token or a uniform mean. CLS and mean-pool probes can misrepresent what frozen audio
encoders hold on multi-label sets ("Unmute the Patch Tokens", ICLR 2026), SSLAM's polyphonic case.

`pooling: time` (`pool_features`) keeps the frequency rows of patches apart: the mean over time of each
row, rows concatenated. It has no parameters, so the converged probe (sslam.evaluation.logistic), which
extracts features once, reads it as the head does; a learned pooling (`attentive`) it cannot read.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sslam.runtime.errors import ConfigError

HEAD_INIT_STD = 0.02


POOLINGS = ("cls", "mean", "time", "attentive")
FIXED_POOLINGS = ("cls", "mean", "time")        # no parameters: what features extracted once can be pooled by


def pooled_dim(embed_dim: int, pooling: str, freq_patches: int) -> int:
    return embed_dim * freq_patches if pooling == "time" else embed_dim


def pool_features(features: torch.Tensor, pooling: str, freq_patches: int = 1) -> torch.Tensor:
    """Encoder output (N, 1+L, D), CLS first, patches time-major -> the pooled features: `cls` the CLS token
    (N, D); `mean` the mean of the patch tokens (N, D); `time` the mean over time of each frequency row of
    patches, rows concatenated (N, freq_patches·D). A mean over all patches averages the frequency rows
    together, so a linear read-out of it sees the spectral envelope only through what the blocks mixed into
    every token; `time` keeps the rows apart (the lowest row first). `attentive` has learned parameters:
    ClassificationHead pools it."""
    if pooling == "cls":
        return features[:, 0]
    if pooling == "mean":
        return features[:, 1:].mean(dim=1)
    if pooling != "time":
        raise ConfigError(f"pool_features pools {', '.join(FIXED_POOLINGS)}, not {pooling!r} (a learned pooling)")
    patches = features[:, 1:]
    count, tokens, dim = patches.shape
    if tokens % freq_patches:
        raise ConfigError(f"pooling time: {tokens} patch tokens are not whole rows of {freq_patches} frequency patches")
    return patches.reshape(count, tokens // freq_patches, freq_patches, dim).mean(dim=1).reshape(count, -1)


class AttentivePooling(nn.Module):
    """Patch tokens (N, L, D) -> (N, D): one learned query attends over the LayerNormed tokens with
    `num_heads` heads (multi-head cross-attention, the query and the projections trained, the tokens
    frozen under the linear probe); the heads' outputs are concatenated and projected back to D."""

    def __init__(self, embed_dim: int, num_heads: int, norm_eps: float = 1e-6) -> None:
        super().__init__()
        if num_heads < 1 or embed_dim % num_heads:
            raise ConfigError(f"attentive_heads must divide the encoder width {embed_dim}, got {num_heads}")
        self.token_norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.query = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.attention = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        nn.init.trunc_normal_(self.query, std=HEAD_INIT_STD)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = self.token_norm(tokens)
        pooled, _ = self.attention(self.query.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens, tokens,
                                   need_weights=False)
        return pooled[:, 0]


class ClassificationHead(nn.Module):
    """Encoder features (N, 1+L, D), CLS first -> pooled (`pool_features`) -> logits (N, num_classes)."""

    def __init__(self, embed_dim: int, num_classes: int, pooling: str = "cls", norm: bool = True,
                 norm_eps: float = 1e-6, feature_norm: str = "none", freq_patches: int = 1,
                 attentive_heads: int = 1) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if feature_norm not in ("none", "batch"):
            raise ConfigError(f"feature_norm must be none or batch, got {feature_norm!r}")
        self.pooling, self.freq_patches = pooling, freq_patches
        self.attentive = AttentivePooling(embed_dim, attentive_heads, norm_eps) if pooling == "attentive" else None
        embed_dim = pooled_dim(embed_dim, pooling, freq_patches)
        # momentum None: the running statistics are the plain average over all training batches.
        # An exponential average (momentum 0.1) still carries 1.5 % of its zero initial mean after
        # 40 steps, more than the cross-clip spread of such features: test-time inputs would be off.
        self.feature_norm = (nn.BatchNorm1d(embed_dim, eps=norm_eps, momentum=None, affine=False)
                             if feature_norm == "batch" else nn.Identity())
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps) if norm else nn.Identity()
        self.linear = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.linear.weight, std=HEAD_INIT_STD)
        nn.init.zeros_(self.linear.bias)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        if self.attentive is not None:
            return self.attentive(features[:, 1:])
        return pool_features(features, self.pooling, self.freq_patches)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(features)
        if isinstance(self.feature_norm, nn.BatchNorm1d) and self.training and pooled.shape[0] == 1:
            # A batch of one has no spread to standardise with: use the running statistics.
            bn = self.feature_norm
            pooled = nn.functional.batch_norm(pooled, bn.running_mean, bn.running_var, training=False, eps=bn.eps)
        else:
            pooled = self.feature_norm(pooled)
        return self.linear(self.norm(pooled))


class EncoderClassifier(nn.Module):
    """Encoder + head. With `frozen_backbone` the encoder gets requires_grad False and runs under
    no_grad; `backbone_train_mode` decides whether it follows .train() (official linear eval:
    yes, so drop path stays active) or stays in eval mode (paper's linear evaluation)."""

    def __init__(self, encoder: nn.Module, head: ClassificationHead, frozen_backbone: bool = False,
                 backbone_train_mode: bool = True) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head
        self.frozen_backbone = frozen_backbone
        self.backbone_train_mode = backbone_train_mode
        if frozen_backbone:
            self.encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> "EncoderClassifier":
        super().train(mode)
        if not self.backbone_train_mode:
            self.encoder.eval()
        return self

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        if self.frozen_backbone:
            with torch.no_grad():
                features = self.encoder.forward_features(fbank)
        else:
            features = self.encoder.forward_features(fbank)
        return self.head(features)


def layer_decay_groups(classifier: EncoderClassifier, weight_decay: float, layer_decay: float
                       ) -> list[dict[str, Any]]:
    """AdamW parameter groups with layer-wise lr decay (spec §9).

    Block i (0-based) of a depth-d encoder gets lr · layer_decay^(d − i), so the last block gets
    layer_decay¹ and the first layer_decay^d; everything outside the blocks (patch embedding, CLS
    token, pre-blocks LayerNorm, head) keeps the full lr. Every group gets the same weight decay:
    the official per-parameter exemptions never take effect (spec §8), and this reproduces that.
    Frozen parameters are left out. Each group's "lr_scale" is read by the lr schedule.
    """
    blocks = list(classifier.encoder.blocks)
    depth = len(blocks)
    in_block: dict[int, int] = {}
    for index, block in enumerate(blocks):
        for parameter in block.parameters():
            in_block[id(parameter)] = index
    grouped: dict[float, list[nn.Parameter]] = {}
    for parameter in classifier.parameters():
        if not parameter.requires_grad:
            continue
        block_index = in_block.get(id(parameter))
        scale = 1.0 if block_index is None else layer_decay ** (depth - block_index)
        grouped.setdefault(scale, []).append(parameter)
    if not grouped:
        raise ConfigError("the classifier has no trainable parameter")
    return [{"params": params, "lr_scale": scale, "weight_decay": weight_decay}
            for scale, params in sorted(grouped.items(), reverse=True)]
