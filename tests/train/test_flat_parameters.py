"""FlatParameters: each optimiser group's parameters in one buffer, their gradients in another; AdamW, clipping
and the EMA teacher then touch one tensor per group, with the numbers of the per-parameter update."""
import copy

import pytest
import torch

from sslam.model.decoder import Decoder2d, DecoderConfig
from sslam.model.encoder import AudioEncoder, EncoderConfig
from sslam.model.teacher import EMATeacher
from sslam.train.loop import compact_on_cpu
from sslam.train.optim import FlatParameters, adamw, parameter_groups

TINY = EncoderConfig(embed_dim=16, depth=2, num_heads=2, num_mel_bins=32, max_time_patches=4)


def modules(seed: int = 0) -> dict[str, torch.nn.Module]:
    torch.manual_seed(seed)
    return {"student": AudioEncoder(TINY), "decoder": Decoder2d(DecoderConfig(depth=2, groups=4), TINY.embed_dim)}


def loss_of(named: dict[str, torch.nn.Module], step: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(step)
    fbank = torch.randn(2, 64, 32, generator=generator)
    tokens = named["student"](fbank)
    return tokens.square().mean() + sum(p.square().sum() for p in named["decoder"].parameters())


@pytest.mark.parametrize("optimiser", ["single_tensor", "foreach", "fused"])
@pytest.mark.parametrize("decay_all", [True, False])
def test_a_flat_update_is_the_per_parameter_update_to_the_bit(optimiser, decay_all):
    per_parameter, flat_modules = modules(), modules()
    options = {"single_tensor": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[optimiser]
    reference = torch.optim.AdamW(parameter_groups(per_parameter, 0.05, decay_all), lr=1e-2, betas=(0.9, 0.95),
                                  eps=1e-6, **options)
    flat = FlatParameters(parameter_groups(flat_modules, 0.05, decay_all))
    optimizer = torch.optim.AdamW(flat.groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-6, **options)
    assert len(optimizer.param_groups) == len(reference.param_groups) == (1 if decay_all else 2)
    assert all(len(group["params"]) == 1 for group in optimizer.param_groups)
    for step in range(4):
        reference.zero_grad(set_to_none=True)
        loss_of(per_parameter, step).backward()
        reference.step()
        flat.take_gradients(torch.autograd.grad(loss_of(flat_modules, step), flat.parameters))
        optimizer.step()
    for name in per_parameter:
        for (key, expected), (_, got) in zip(per_parameter[name].state_dict().items(),
                                             flat_modules[name].state_dict().items()):
            assert torch.equal(expected, got), f"{name}.{key}"


def test_the_modules_keep_their_leaves_and_see_the_buffers():
    named = modules()
    before = {name: {k: v.clone() for k, v in module.state_dict().items()} for name, module in named.items()}
    flat = FlatParameters(parameter_groups(named, 0.05, decay_all_parameters=False))
    for name, module in named.items():
        for key, value in module.state_dict().items():
            assert torch.equal(value, before[name][key]), key  # the values moved, unchanged
    buffers = [group["params"][0] for group in flat.groups]
    for parameter, gradient in zip(flat.parameters, flat.gradients):
        assert parameter.is_leaf and parameter.requires_grad and parameter.grad is gradient
        assert any(parameter.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() for b in buffers)
    with torch.no_grad():
        buffers[0].add_(1.0)  # what the optimiser writes is what the module computes with
    assert torch.equal(named["student"].patch_embed.weight, before["student"]["patch_embed.weight"] + 1)


def test_a_parameter_the_loss_does_not_reach_gets_a_zero_gradient():
    named = modules()
    flat = FlatParameters(parameter_groups(named, 0.05))
    for slot in flat.gradients:
        slot.fill_(7.0)
    loss = named["student"](torch.randn(1, 64, 32)).sum()
    flat.take_gradients(torch.autograd.grad(loss, flat.parameters, allow_unused=True))
    decoder = {id(p) for p in named["decoder"].parameters()}
    for parameter in flat.parameters:
        if id(parameter) in decoder:
            assert torch.count_nonzero(parameter.grad) == 0
    assert torch.count_nonzero(named["student"].patch_embed.weight.grad) > 0


def test_moving_a_module_after_the_buffers_are_made_is_reported():
    named = modules()
    flat = FlatParameters(parameter_groups(named, 0.05))
    flat.check_attached()
    named["decoder"].double()
    with pytest.raises(RuntimeError, match="left its flat buffer"):
        flat.check_attached()


def test_a_per_parameter_optimiser_state_resumes_into_the_flat_groups():
    """A snapshot written before the buffers (one state per parameter) continues the same run exactly."""
    per_parameter, flat_modules = modules(), modules()
    reference = adamw(parameter_groups(per_parameter, 0.05, False), lr=1e-2, betas=(0.9, 0.95), eps=1e-6)
    for step in range(2):
        reference.zero_grad(set_to_none=True)
        loss_of(per_parameter, step).backward()
        reference.step()
    saved = copy.deepcopy(reference.state_dict())
    for name in per_parameter:
        flat_modules[name].load_state_dict(per_parameter[name].state_dict())
    flat = FlatParameters(parameter_groups(flat_modules, 0.05, False))
    optimizer = adamw(flat.groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-6)
    optimizer.load_state_dict(flat.optimizer_state(saved))
    reference.zero_grad(set_to_none=True)
    loss_of(per_parameter, 2).backward()
    reference.step()
    flat.take_gradients(torch.autograd.grad(loss_of(flat_modules, 2), flat.parameters))
    optimizer.step()
    for name in per_parameter:
        for (key, expected), (_, got) in zip(per_parameter[name].state_dict().items(),
                                             flat_modules[name].state_dict().items()):
            assert torch.equal(expected, got), f"{name}.{key}"
    other = {"state": {}, "param_groups": [{**saved["param_groups"][0], "params": [0, 1]}]}
    with pytest.raises(ValueError, match="parameter groups"):
        flat.optimizer_state(other)
    short = copy.deepcopy(saved)  # a group that lost a parameter no longer fills its buffer
    short["param_groups"][0]["params"] = short["param_groups"][0]["params"][1:]
    with pytest.raises(ValueError, match="does not cover"):
        flat.optimizer_state(short)


def test_the_teacher_moves_with_one_lerp_per_buffer_run_to_the_bit():
    named = modules()
    looped_student = copy.deepcopy(named["student"])
    teacher, looped = EMATeacher(named["student"]), EMATeacher(looped_student)
    FlatParameters(parameter_groups(named, 0.05, decay_all_parameters=False))
    calls = []
    original = torch._foreach_lerp_

    def counting(targets, sources, weight):
        calls.append(len(targets))
        return original(targets, sources, weight)

    torch._foreach_lerp_ = counting
    try:
        for step, decay in enumerate((0.9, 0.5, 0.99)):
            with torch.no_grad():
                for parameter, twin in zip(named["student"].parameters(), looped_student.parameters()):
                    noise = torch.randn(parameter.shape, generator=torch.Generator().manual_seed(step))
                    parameter.add_(noise)
                    twin.add_(noise)
            teacher.update(named["student"], decay)
            with torch.no_grad():
                students = dict(looped_student.named_parameters())
                for name, teacher_param in looped.encoder.named_parameters():
                    teacher_param.lerp_(students[name].detach(), 1.0 - decay)
    finally:
        torch._foreach_lerp_ = original
    assert calls == [2, 2, 2]  # the decayed and the exempt group's student runs, not 40 tensors
    for (name, a), (_, b) in zip(teacher.encoder.state_dict().items(), looped.encoder.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_saved_weight_holds_its_own_elements_only():
    named = modules()
    FlatParameters(parameter_groups(named, 0.05))
    weight = named["student"].patch_embed.weight
    assert weight.untyped_storage().nbytes() > weight.numel() * weight.element_size()  # a view into the buffer
    saved = compact_on_cpu(weight)
    assert saved.untyped_storage().nbytes() == saved.numel() * saved.element_size()
    assert torch.equal(saved, weight) and not saved.requires_grad
