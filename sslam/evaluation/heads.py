"""Classifier on top of the pretrained encoder, and its optimiser parameter groups.

Official fine-tuning head (spec §9): the final-layer CLS token (mean pooling of the patch tokens
is an option) -> LayerNorm(eps 1e-6, affine; "fc_norm") -> Linear, weight trunc-normal(std 0.02),
bias 0. The linear probe trains the same head on a frozen backbone.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sslam.errors import ConfigError

HEAD_INIT_STD = 0.02


class ClassificationHead(nn.Module):
    """Pooled encoder features (N, 1+L, D), CLS first -> logits (N, num_classes)."""

    def __init__(self, embed_dim: int, num_classes: int, pooling: str = "cls", norm: bool = True,
                 norm_eps: float = 1e-6) -> None:
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ConfigError(f"pooling must be cls or mean, got {pooling!r}")
        self.pooling = pooling
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps) if norm else nn.Identity()
        self.linear = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.linear.weight, std=HEAD_INIT_STD)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = features[:, 0] if self.pooling == "cls" else features[:, 1:].mean(dim=1)
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
