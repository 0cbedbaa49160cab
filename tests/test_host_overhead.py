"""The host side of a training update (docs/performance.md): no device syncs in a steady-state update of any
of the four loops, the Python calls of a ViT-B-structured pretraining update, no graph breaks in the compiled
step, bf16 autocast. Counted, never timed: benchmarks/host_overhead.py prints the times."""
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.host_overhead import LOOPS, PythonCallCounter, StepClock, SyncCounter, build_loop  # noqa: E402
from sslam.model import DecoderConfig, EncoderConfig  # noqa: E402
from sslam.objective.config import ObjectiveConfig, variant_config  # noqa: E402
from sslam.objective.masking import keep_index  # noqa: E402
from sslam.objective.pretraining import ObjectiveStep, PretrainingObjective  # noqa: E402

WARMUP, UPDATES = 2, 5


def proxy_args(**overrides) -> Namespace:
    """The benchmark's CPU proxy: the ViT-B block structure (12 blocks, 6 decoder layers, 16/8 clones), width 16."""
    values = dict(preset="proxy", width=16, device="cpu", dtype="fp32", compile=False, warmup=WARMUP,
                  updates=UPDATES, recorder=None)
    values.update(overrides)
    return Namespace(**values)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_steady_state_update_never_waits_for_the_device(loop, tmp_path):
    counter = SyncCounter("cpu")
    per_update = []

    def start():
        counter.ops = counter.syncs = 0
        counter.active = True

    def tick():
        per_update.append((counter.ops, counter.syncs))
        counter.ops = counter.syncs = 0

    clock = StepClock(WARMUP, UPDATES, on_start=start, on_tick=tick)
    with counter.mode:
        build_loop(loop, proxy_args(), clock, tmp_path)()
    assert len(per_update) == UPDATES
    assert all(ops > 100 for ops, _ in per_update)  # the counter did see the updates
    assert [syncs for _, syncs in per_update] == [0] * UPDATES, dict(counter.where)


def test_the_sync_counter_sees_reads_and_data_sized_ops_but_not_host_draws():
    counter = SyncCounter("cpu")
    values = torch.randn(4, 3)
    mask = values[:, 0] > 0
    with counter.mode:
        counter.active = True
        float(values.sum())                                   # a read
        values[mask]                                          # boolean indexing: sized by the data
        keep_index(torch.zeros(2, 8, dtype=torch.bool))      # counts and compares the kept cells: two reads
        coin = float(torch.rand(1, generator=torch.Generator().manual_seed(0)))  # a host draw: not a sync
    assert counter.syncs == 4 and counter.host_reads == 1 and 0 <= coin < 1, dict(counter.where)


@pytest.mark.parametrize("loop", ("stage1", "stage2"))
def test_an_eager_vit_b_structured_pretraining_update_makes_at_most_3000_python_calls(loop, tmp_path):
    counter = PythonCallCounter()
    clock = StepClock(WARMUP, 3, on_start=counter.start, on_tick=counter.tick)
    try:
        build_loop(loop, proxy_args(updates=3), clock, tmp_path)()
    finally:
        counter.stop()
    per_update = counter.per_update
    # The lower bound only shows that the counter counts: 24 blocks alone make ~9 calls each.
    assert len(per_update) == 3 and all(300 < calls <= 3000 for calls in per_update), per_update


def tiny_objective(stage: int, variant: str | None = None) -> PretrainingObjective:
    encoder = EncoderConfig(embed_dim=16, depth=2, num_heads=2, num_mel_bins=32, max_time_patches=8)
    objective_cfg = ObjectiveConfig(clones_stage1=4, clones_stage2=2)
    if stage == 2:
        objective_cfg = variant_config(variant or "SSLAM", objective_cfg, {})
    torch.manual_seed(0)
    return PretrainingObjective(encoder, DecoderConfig(depth=2, groups=16), objective_cfg, stage, seed=0)


@pytest.mark.parametrize("stage, variant", [(1, None), (2, "SSLAM"), (2, "MB-UA-PMA"), (2, "MB-PMA")])
def test_the_compiled_step_has_no_graph_break_and_compiles_once_for_every_draw(stage, variant):
    objective = tiny_objective(stage, variant)
    fbank = torch.randn(3, 128, 32)
    explanation = torch._dynamo.explain(ObjectiveStep(objective))(objective.prepare(fbank))
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0, explanation.break_reasons

    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    step = torch.compile(ObjectiveStep(objective), backend=counting_backend)
    eager = tiny_objective(stage, variant)
    for _ in range(4):  # new masks, noise and (Stage 2) mixing regions at every step
        inputs = objective.prepare(fbank)
        loss, summary, names, weights = step(inputs)
        expected = eager.compute(inputs)
        torch.testing.assert_close(summary, expected[1], rtol=1e-5, atol=1e-6)
        assert names == expected[2] and weights == expected[3]
    assert len(graphs) == 1
    torch._dynamo.reset()


@pytest.mark.parametrize("level", ("patch", "cls", "both"))
def test_the_mixit_step_compiles_without_graph_break(level):
    objective = tiny_objective(2, "MixIT")
    objective = PretrainingObjective(objective.student.config, objective.decoder.config,
                                     variant_config("MixIT", objective.config, {"mixit_level": level}), 2, seed=0)
    explanation = torch._dynamo.explain(ObjectiveStep(objective))(objective.prepare(torch.randn(3, 128, 32)))
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_the_classifier_forward_compiles_without_graph_break():
    from sslam.evaluation.heads import ClassificationHead, EncoderClassifier
    from sslam.model.encoder import AudioEncoder

    encoder = AudioEncoder(EncoderConfig(embed_dim=16, depth=2, num_heads=2, num_mel_bins=32, max_time_patches=8))
    for frozen in (False, True):
        classifier = EncoderClassifier(encoder, ClassificationHead(16, 5), frozen_backbone=frozen).train()
        explanation = torch._dynamo.explain(classifier)(torch.randn(2, 128, 32))
        assert explanation.graph_break_count == 0, explanation.break_reasons


def test_a_stage2_update_under_bf16_autocast_stays_within_1_percent_of_fp32():
    """CPU bf16 autocast (the CUDA default's precision) against fp32 on the same weights and random inputs:
    the loss, every term and the gradient norm finite and within 1 % (measured: 0.2 %; bf16 keeps 8 bits of
    mantissa, targets and losses are computed in fp32), and the updated weights finite."""
    results = {}
    for dtype in (None, torch.bfloat16):
        objective = tiny_objective(2)
        fbank = torch.randn(3, 128, 32, generator=torch.Generator().manual_seed(1))
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            output = objective(fbank)
        output.loss.backward()
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in objective.parameters() if p.grad is not None]))
        optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=1e-3)
        optimizer.step()
        objective.update_teacher(0.99)
        assert all(torch.isfinite(p).all() for p in objective.parameters())
        results[dtype] = (output.summary, norm)
    (fp32, fp32_norm), (bf16, bf16_norm) = results[None], results[torch.bfloat16]
    assert torch.isfinite(bf16).all()
    torch.testing.assert_close(bf16, fp32, rtol=1e-2, atol=0)
    torch.testing.assert_close(bf16_norm, fp32_norm, rtol=1e-2, atol=0)
