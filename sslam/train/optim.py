"""AdamW over the student encoder and the decoder (the EMA teacher is never optimised).

Weight decay (algorithm.md §8): the official model tags 1-D parameters and biases for no decay, but the
fairseq composite optimiser only honours that tag when a config key that is never set is present, so in the
released runs EVERY parameter is decayed with 0.05. `decay_all_parameters=True` reproduces that; False gives
the intended grouping (1-D parameters, biases and the CLS token undecayed).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def is_decay_exempt(name: str, parameter: torch.Tensor) -> bool:
    """The parameters the official model tags for no weight decay, plus the CLS token."""
    leaf = name.rsplit(".", 1)[-1]
    return parameter.ndim <= 1 or leaf == "bias" or "cls" in leaf.lower() or "extra_token" in leaf.lower()


def parameter_groups(named_modules: dict[str, nn.Module], weight_decay: float,
                     decay_all_parameters: bool = True) -> list[dict]:
    """AdamW param groups over the trainable parameters of `named_modules` ({"student": ..., ...}).

    Each group records its parameter names ("names") so that tests and logs can tell what is decayed.
    """
    decayed: list[tuple[str, nn.Parameter]] = []
    exempt: list[tuple[str, nn.Parameter]] = []
    for prefix, module in named_modules.items():
        for name, parameter in module.named_parameters():
            if not parameter.requires_grad:
                continue  # e.g. the fixed sin-cos table
            target = exempt if not decay_all_parameters and is_decay_exempt(name, parameter) else decayed
            target.append((f"{prefix}.{name}", parameter))
    groups = []
    for members, decay in ((decayed, weight_decay), (exempt, 0.0)):
        if members:
            groups.append({"params": [p for _, p in members], "names": [n for n, _ in members],
                           "weight_decay": decay})
    if not groups:
        raise ValueError("no trainable parameters to optimise")
    return groups


def build_optimizer(named_modules: dict[str, nn.Module], lr: float, betas: Iterable[float], eps: float,
                    weight_decay: float, decay_all_parameters: bool = True, fused: bool = False) -> torch.optim.AdamW:
    """AdamW (decoupled weight decay, as fairseq's `adam`) with every group at the peak lr; `fused` (CUDA
    only) runs the update of all parameters in one kernel."""
    groups = parameter_groups(named_modules, weight_decay, decay_all_parameters)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, **({"fused": True} if fused else {}))
