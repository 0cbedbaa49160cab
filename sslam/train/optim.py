"""AdamW over the student encoder and the decoder (the EMA teacher is never optimised).

Weight decay (algorithm.md §8): the official model tags 1-D parameters and biases for no decay, but the
fairseq composite optimiser only honours that tag when a config key that is never set is present, so in the
released runs EVERY parameter is decayed with 0.05. `decay_all_parameters=True` reproduces that; False gives
the intended grouping (1-D parameters, biases and the CLS token undecayed).

The pretraining loop optimises `FlatParameters`: each group's parameters laid end to end in one buffer and
their gradients in another, so that AdamW, gradient clipping and the EMA teacher each touch one tensor per
group instead of one per parameter (docs/performance.md).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

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
    """AdamW (decoupled weight decay, as fairseq's `adam`) with every group at the peak lr, over the parameters
    themselves; `fused` (CUDA only) runs the update of all parameters in one kernel."""
    return adamw(parameter_groups(named_modules, weight_decay, decay_all_parameters), lr, betas, eps, fused)


def adamw(groups: list[dict], lr: float, betas: Iterable[float], eps: float, fused: bool = False) -> torch.optim.AdamW:
    """AdamW over `groups` (from `parameter_groups`, or `FlatParameters.groups`) with every group at the peak lr."""
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, **({"fused": True} if fused else {}))


class FlatParameters:
    """The parameters of each group of `parameter_groups` laid end to end in one buffer, and their gradients in
    another: the modules keep their parameters (views into the buffers, still leaves, still in `state_dict`), and
    `groups` holds one flat parameter per group for the optimiser.

    AdamW is elementwise, so a step over a group's buffer is the per-parameter step, number for number; what
    changes is the host's work: one tensor per group for AdamW (whose CPU implementation otherwise dispatches
    about ten operations per parameter), for the clipping's scaling, and, through `EMATeacher`'s run matching,
    for the teacher's update (the gradient norm still takes one norm per parameter, `gradients`, so that its
    number is clip_grad_norm_'s to the bit). The one difference: a parameter the loss does not reach gets a zero
    gradient (AdamW then decays it like the others) where `zero_grad(set_to_none=True)` would leave it out of
    the step; the official fairseq trainer's flat fp32 copy does the same.

    The buffers must be made once the modules are where they will train (device, dtype): moving a module
    afterwards gives it new tensors that the buffers no longer hold, which `check_attached` reports.
    """

    def __init__(self, groups: list[dict]) -> None:
        self.parameters: list[nn.Parameter] = []   # the modules' parameters, in buffer order
        self.gradients: list[torch.Tensor] = []    # their slots in the gradient buffers, same order
        self.gradient_buffers: list[torch.Tensor] = []  # one per group
        self.groups: list[dict] = []
        self._addresses: list[int] = []
        for group in groups:
            members = list(group["params"])
            kinds = {(p.device, p.dtype) for p in members}
            if len(kinds) != 1:
                raise ValueError(f"a flat group needs one device and dtype, got {sorted(map(str, kinds))}")
            device, dtype = kinds.pop()
            values = torch.empty(sum(p.numel() for p in members), device=device, dtype=dtype)
            gradients = torch.zeros_like(values)
            offset = 0
            for parameter in members:
                end = offset + parameter.numel()
                values[offset:end].copy_(parameter.detach().reshape(-1))
                parameter.data = values[offset:end].view_as(parameter)  # the same leaf, on the buffer's storage
                parameter.grad = gradients[offset:end].view_as(parameter)
                self.parameters.append(parameter)
                self.gradients.append(parameter.grad)
                self._addresses.append(parameter.data_ptr())
                offset = end
            flat = nn.Parameter(values)
            flat.grad = gradients
            self.gradient_buffers.append(gradients)
            self.groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": [flat]})

    def take_gradients(self, gradients: Sequence[torch.Tensor | None]) -> None:
        """Copy each parameter's gradient (in `parameters` order; None: not reached, zero) into its slot."""
        slots, gradients = self.gradients, list(gradients)
        if type(None) in map(type, gradients):  # (a C-level scan: this runs every update)
            for slot, gradient in zip(slots, gradients):
                if gradient is None:
                    slot.zero_()
            present = [(slot, gradient) for slot, gradient in zip(slots, gradients) if gradient is not None]
            slots, gradients = [slot for slot, _ in present], [gradient for _, gradient in present]
        if slots:
            torch._foreach_copy_(slots, gradients)

    def check_attached(self) -> None:
        """Raise if a module's parameter is no longer the view of its buffer (the module was moved or converted
        after the buffers were made): the optimiser would update tensors the module does not use."""
        if any(parameter.data_ptr() != address for parameter, address in zip(self.parameters, self._addresses)):
            raise RuntimeError("a trainable parameter left its flat buffer (the module was moved or converted after "
                               "the optimiser was built); build the trainer after moving the model")

    def optimizer_state(self, saved: dict) -> dict:
        """An AdamW `state_dict` for `groups` from `saved`, which holds per group either one state of the whole
        buffer or one state per parameter (a snapshot written before the buffers): each state tensor is laid end to
        end in parameter order, like the buffer, and must then have the buffer's size."""
        saved_groups = saved["param_groups"]
        if len(saved_groups) != len(self.groups):
            raise ValueError(f"the saved optimiser has {len(saved_groups)} parameter groups, this run {len(self.groups)}")
        state, groups = {}, []
        for index, (saved_group, group) in enumerate(zip(saved_groups, self.groups)):
            members = [saved["state"].get(key, {}) for key in saved_group["params"]]
            if not members or not all(members):
                raise ValueError(f"the saved optimiser state of group {index} is incomplete")
            steps = {float(member["step"]) for member in members}
            if len(steps) != 1:
                raise ValueError("the saved parameters were stepped different numbers of times")
            laid_out = {key: torch.cat([member[key].reshape(-1) for member in members])
                        for key in members[0] if key != "step"}
            size = group["params"][0].numel()
            if any(tensor.numel() != size for tensor in laid_out.values()):
                raise ValueError(f"the saved optimiser state of group {index} does not cover this run's "
                                 f"{size} parameter values")
            state[index] = {"step": members[0]["step"], **laid_out}
            groups.append({**saved_group, "params": [index]})
        return {"state": state, "param_groups": groups}
