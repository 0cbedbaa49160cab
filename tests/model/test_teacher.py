import pytest
import torch

from sslam.model import AudioEncoder, Decoder2d, EMATeacher, ema_decay


def test_ema_decay_schedule():
    start, end, steps = 0.9998, 0.99999, 100_000
    assert ema_decay(0, start, end, steps) == pytest.approx(start)
    assert ema_decay(steps // 2, start, end, steps) == pytest.approx((start + end) / 2)
    assert ema_decay(steps, start, end, steps) == pytest.approx(end)
    assert ema_decay(steps * 3, start, end, steps) == pytest.approx(end)
    assert ema_decay(10, 0.5, 0.9, 0) == 0.9
    values = [ema_decay(s, start, end, steps) for s in range(0, 120_000, 10_000)]
    assert values == sorted(values)
    with pytest.raises(ValueError):
        ema_decay(-1, start, end, steps)


def test_teacher_is_a_frozen_fp32_eval_copy(tiny_config):
    student = AudioEncoder(tiny_config).to(torch.bfloat16)
    teacher = EMATeacher(student)
    teacher.train()
    assert not teacher.encoder.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.dtype == torch.float32 for p in teacher.parameters())
    assert set(teacher.encoder.state_dict()) == set(student.state_dict())


def test_update_rule_is_an_exponential_moving_average(tiny_config):
    student = AudioEncoder(tiny_config)
    teacher = EMATeacher(student)
    before = {k: v.clone() for k, v in teacher.encoder.state_dict().items()}
    with torch.no_grad():
        for param in student.parameters():
            param.add_(torch.randn_like(param))
        student.pos_embed.mul_(2.0)  # a fixed buffer: copied, never averaged
    decay = 0.75
    teacher.update(student, decay)
    after = teacher.encoder.state_dict()
    for name, student_param in student.named_parameters():
        expected = decay * before[name] + (1 - decay) * student_param
        torch.testing.assert_close(after[name], expected)
    torch.testing.assert_close(after["pos_embed"], student.pos_embed)


def test_decoder_is_never_part_of_the_teacher(tiny_config):
    student = AudioEncoder(tiny_config)
    teacher = EMATeacher(student)
    decoder = Decoder2d(embed_dim=tiny_config.embed_dim)
    assert not any(name.startswith("decoder") for name in teacher.state_dict())
    with pytest.raises(KeyError, match="no parameter"):
        teacher.update(decoder, 0.9)


def test_state_dict_round_trip_accepts_bare_encoder_layout(tiny_config):
    teacher = EMATeacher(AudioEncoder(tiny_config))
    other = EMATeacher(AudioEncoder(tiny_config))
    other.load_state_dict(teacher.encoder.state_dict())  # checkpoint layout
    for name, value in teacher.state_dict().items():
        torch.testing.assert_close(other.state_dict()[name], value)
    other.load_state_dict(teacher.state_dict())  # nn.Module layout


def test_the_fused_update_is_bit_identical_to_one_lerp_per_tensor(tiny_config):
    torch.manual_seed(0)
    student = AudioEncoder(tiny_config)
    fused, looped = EMATeacher(student), EMATeacher(student)
    for decay in (0.9998, 0.75, 0.5):
        with torch.no_grad():
            for param in student.parameters():
                param.add_(torch.randn_like(param))
        fused.update(student, decay)
        # The update as it was written before: one lerp per parameter, matched by name at every call.
        with torch.no_grad():
            student_params = dict(student.named_parameters())
            for name, teacher_param in looped.encoder.named_parameters():
                teacher_param.lerp_(student_params[name].detach().to(teacher_param.dtype), 1.0 - decay)
        for (name, a), (_, b) in zip(fused.encoder.state_dict().items(), looped.encoder.state_dict().items()):
            assert torch.equal(a, b), name


def test_the_pairing_follows_the_student_it_is_given(tiny_config):
    first, second = AudioEncoder(tiny_config), AudioEncoder(tiny_config).to(torch.bfloat16)
    teacher = EMATeacher(first)
    teacher.update(first, 0.5)
    teacher.update(second, 0.0)  # decay 0: the teacher becomes the (converted) second student
    for name, param in second.named_parameters():
        assert torch.equal(teacher.encoder.state_dict()[name], param.float()), name
