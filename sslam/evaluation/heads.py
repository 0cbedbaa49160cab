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
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sslam.runtime.errors import ConfigError

HEAD_INIT_STD = 0.02


POOLINGS = ("cls", "mean", "attentive")


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
    """Pooled encoder features (N, 1+L, D), CLS first -> logits (N, num_classes)."""

    def __init__(self, embed_dim: int, num_classes: int, pooling: str = "cls", norm: bool = True,
                 norm_eps: float = 1e-6, feature_norm: str = "none", attentive_heads: int = 1) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if feature_norm not in ("none", "batch"):
            raise ConfigError(f"feature_norm must be none or batch, got {feature_norm!r}")
        self.pooling = pooling
        self.attentive = AttentivePooling(embed_dim, attentive_heads, norm_eps) if pooling == "attentive" else None
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
        pooled = features[:, 0] if self.pooling == "cls" else features[:, 1:].mean(dim=1)
        return pooled

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
