"""Re-run scope, table-driven: each edit to the package, applied to a finished reduced study, re-schedules
exactly the jobs that execute the edited code (and what depends on their outputs) — no more, no less.

The study (workflow_helpers.rerun_scope_study): Stage 1, MB-UA (no mixing, no SRL) and SSLAM, the random-init
baseline; synth_mono (accuracy, 2 folds) and synth_polyphony (mAP per bin); both regimes; one seed."""
from __future__ import annotations

from pathlib import Path

import pytest

from workflow_helpers import planned_jobs

pytestmark = pytest.mark.slow

PRETRAINED = ("stage1", "MB-UA", "SSLAM")
EVALUATED = (*PRETRAINED, "random")
BENCHMARKS = ("synth_mono", "synth_polyphony")
TABLES = {("tables", ""), ("log_tables", "")}


def pretraining(*models: str) -> set[tuple[str, str]]:
    return {("pretrain", f"model={model}") for model in models}


def evaluation(models=EVALUATED, benchmarks=BENCHMARKS, regimes=("finetune", "linear")) -> set[tuple[str, str]]:
    return {("evaluate", f"model={model}, benchmark={benchmark}, regime={regime}, seed=0")
            for model in models for benchmark in benchmarks for regime in regimes}


def downstream_of(*models: str) -> set[tuple[str, str]]:
    """Pretraining of `models`, their evaluations and the tables."""
    return pretraining(*models) | evaluation(models) | TABLES


# Lines that only the jobs with a mixed half run (SSLAM in this study), for the edits below.
MIXED_EVERYWHERE = "    mixed_everywhere = combine_spectrograms(fbank, foreign_clips(fbank), op, norm_stats)"
SRL_REBUILT = "    rebuilt = base.index_copy(1, token_positions(mixed_tokens), foreign_mixed_tokens.to(base.dtype))"
FOREIGN_CLIPS = '''def foreign_clips(batch: torch.Tensor) -> torch.Tensor:
    """Clip i's mixing partner is clip i − 1 (wrap-around), the official roll by +1."""
    return torch.roll(batch, shifts=1, dims=0)
'''

# (what is edited, file, old text, new text, the jobs it must re-schedule), or (what, [edits], jobs) where an
# edit is (file, old, new[, "all"]), (file, None, new path) to move a file or (new file, None, its text).
MUTATIONS = [
    ("the SRL target", "sslam/objective/source_retention.py",
     SRL_REBUILT, SRL_REBUILT + " * 1.0", downstream_of("SSLAM")),
    ("mixing", "sslam/objective/mixing.py", MIXED_EVERYWHERE, MIXED_EVERYWHERE + " + 0", downstream_of("SSLAM")),
    ("masking", "sslam/objective/masking.py",
     "    noise = torch.rand(num_masks, num_cells, generator=generator)",
     "    noise = torch.rand(num_masks, num_cells, generator=generator) * 1.0", downstream_of(*PRETRAINED)),
    ("an encoder block", "sslam/model/encoder.py",
     '        ffn_out = parts["mlp"].forward(residual)', '        ffn_out = parts["mlp"].forward(residual) * 1.0',
     pretraining(*PRETRAINED) | evaluation() | TABLES),
    ("the decoder", "sslam/model/decoder.py",
     "            x = x + layer(x)", "            x = x + layer(x) * 1.0", downstream_of(*PRETRAINED)),
    ("the teacher targets", "sslam/objective/targets.py",
     "    averaged = normalised.mean(dim=0)", "    averaged = normalised.mean(dim=0) * 1.0",
     downstream_of(*PRETRAINED)),
    ("the local loss", "sslam/objective/losses.py",
     "    per_token = d2v_loss(prediction[mask], target[mask])",
     "    per_token = d2v_loss(prediction[mask], target[mask]) * 1.0", downstream_of(*PRETRAINED)),
    ("the EMA decay", "sslam/model/teacher.py", "    if step < 0:", "    if step < -1:", downstream_of(*PRETRAINED)),
    # The demo's linear regime is the L-BFGS probe, which runs no lr schedule: the random-init probe stays.
    ("the lr schedule (pretraining and fine-tuning share it)", "sslam/runtime/schedules.py",
     "    progress = min(1.0, (step - warmup_steps) / decay_steps)",
     "    progress = min(1.0, (step - warmup_steps) / decay_steps) * 1.0",
     pretraining(*PRETRAINED) | evaluation(PRETRAINED) | evaluation(("random",), regimes=("finetune",)) | TABLES),
    ("the pooling (the fine-tuning head and the L-BFGS probe share it)", "sslam/evaluation/heads.py",
     "    return patches.reshape(count, tokens // freq_patches, freq_patches, dim).mean(dim=1).reshape(count, -1)",
     "    return patches.reshape(count, tokens // freq_patches, freq_patches, dim).mean(dim=1).reshape(count, -1) * 1.0",
     evaluation() | TABLES),
    ("the L-BFGS probe's objective", "sslam/evaluation/logistic.py",
     "    loss = (np.logaddexp(0.0, logits) - targets * logits).sum() / count",
     "    loss = (np.logaddexp(0.0, logits) - targets * logits).sum() / count * 1.0",
     evaluation(regimes=("linear",)) | TABLES),          # one function for both tasks: both benchmarks
    ("a metric (accuracy: synth_mono only)", "sslam/evaluation/metrics.py",
     "    targets, scores = np.asarray(targets), np.asarray(scores)\n    _check_shapes(targets, scores)",
     "    targets, scores = np.asarray(targets), np.asarray(scores) + 0\n    _check_shapes(targets, scores)",
     evaluation(benchmarks=("synth_mono",)) | TABLES),
    ("a table layout", "sslam/tables/layouts.py",
     '        return f"{mean:.{decimals}f} ± {std:.{decimals}f}"', '        return f"{mean:.{decimals}f} +/- {std:.{decimals}f}"',
     TABLES),
    ("a module constant (the SRL's official factor)", "sslam/objective/source_retention.py",
     "OFFICIAL_SRL_LOCAL_FACTOR = 2.0", "OFFICIAL_SRL_LOCAL_FACTOR = 2.5", downstream_of("SSLAM")),
    ("a dataclass default (the objective's SRL aggregation)", "sslam/objective/config.py",
     '    srl_aggregation: SrlAggregation = "mean"', '    srl_aggregation: SrlAggregation = "max"',
     downstream_of(*PRETRAINED)),
    ("the tracking store's set-up (a side channel: no result re-runs)", "sslam/runtime/mlflow_tracking.py",
     '    found = store.call("get_experiment_by_name", experiment)',
     '    found = store.call("get_experiment_by_name", str(experiment))', {("track_init", ""), ("log_tables", "")}),
    # A job below a re-run `track_init` still has its own code checked (tracking.json is no input of results).
    ("the tracking store's set-up and the SRL target together", [
        ("sslam/runtime/mlflow_tracking.py", '    found = store.call("get_experiment_by_name", experiment)',
         '    found = store.call("get_experiment_by_name", str(experiment))'),
        ("sslam/objective/source_retention.py", SRL_REBUILT, SRL_REBUILT + " * 1.0")],
     {("track_init", "")} | downstream_of("SSLAM")),
    ("a comment only", "sslam/objective/source_retention.py",
     SRL_REBUILT, "    # the foreign map starts as the base map\n" + SRL_REBUILT + "  # see above", set()),
    ("a docstring only", "sslam/objective/targets.py",
     "    2. average over the k layers;", "    2. average over the k layers (a plain mean);", set()),
    ("formatting only", "sslam/objective/mixing.py",
     "    return torch.where(unmixed_frames[None, :, None], fbank, mixed_everywhere)",
     "    return (torch.where(unmixed_frames[None, :, None],\n\n                        fbank, mixed_everywhere))", set()),
    ("a new variant preset nobody uses", "sslam/objective/config.py",
     '    "SSLAM": {},', '    "SSLAM": {},\n    "SSLAM-max": dict(srl_aggregation="max"),', set()),
    ("a new CLI command nobody runs", "sslam/cli.py",
     '    "plan": "sslam.study.plan",', '    "hello": "sslam.study.plan",\n    "plan": "sslam.study.plan",', set()),
    ("a help text of a command the jobs run", "sslam/train/pretrain.py",
     'help="override pretrain.stageK.steps (the schedule follows)"',
     'help="the number of updates, instead of pretrain.stageK.steps (the schedule follows)"', set()),
    # Code that only moved keeps its fingerprint: units are identified by content (docs/fingerprints.md).
    ("a module moved (mixing.py -> blend.py, its importers follow)", [
        ("sslam/objective/mixing.py", None, "sslam/objective/blend.py"),
        *[(f"sslam/objective/{name}.py", "sslam.objective.mixing", "sslam.objective.blend", "all")
          for name in ("pretraining", "__init__", "source_retention", "mixit")]], set()),
    ("a function moved to a module of its own (foreign_clips)", [
        ("sslam/objective/mixing.py", FOREIGN_CLIPS + "\n\n", ""),
        ("sslam/objective/mixing.py", "from sslam.runtime.errors import",
         "from sslam.objective.partners import foreign_clips\nfrom sslam.runtime.errors import"),
        ("sslam/objective/partners.py", None, f'"""Who mixes with whom."""\nimport torch\n\n\n{FOREIGN_CLIPS}'),
        ("sslam/objective/source_retention.py", "MixedHalf, MixRegions, foreign_clips",
         "MixedHalf, MixRegions\nfrom sslam.objective.partners import foreign_clips"),
        ("sslam/objective/mixit.py", "MixedHalf, foreign_clips",
         "MixedHalf\nfrom sslam.objective.partners import foreign_clips")], set()),
]


def test_a_finished_study_plans_nothing(finished_study):
    repo, config_path = finished_study
    jobs, output = planned_jobs(repo, config_path)
    assert jobs == set(), output[-3000:]


def apply(repo: Path, edits: list[tuple]) -> dict[Path, str | None]:
    """Apply the edits; returns what restores the tree (a file's text, or None for a file to remove)."""
    saved: dict[Path, str | None] = {}
    for path, old, new, *mode in edits:
        source = repo / path
        if old is None and source.exists():          # a move
            target = repo / new
            saved.setdefault(source, source.read_text())
            saved.setdefault(target, None)
            source.rename(target)
        elif old is None:                             # a new file
            saved.setdefault(source, None)
            source.write_text(new)
        else:
            text = source.read_text()
            saved.setdefault(source, text)
            assert text.count(old) == 1 or (mode == ["all"] and old in text), f"{path}: the anchor {old!r} must occur once"
            source.write_text(text.replace(old, new))
    return saved


def restore(saved: dict[Path, str | None]) -> None:
    for path, text in saved.items():
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(text)


CASES = [(what, rest[0], rest[1]) if len(rest) == 2 else (what, [(rest[0], rest[1], rest[2])], rest[3])
         for what, *rest in MUTATIONS]


@pytest.mark.parametrize("what, edits, expected", CASES, ids=[case[0] for case in CASES])
def test_an_edit_reschedules_exactly_what_runs_it(finished_study, what, edits, expected):
    repo, config_path = finished_study
    saved = apply(repo, edits)
    try:
        jobs, output = planned_jobs(repo, config_path)
    finally:
        restore(saved)
    assert jobs == expected, (f"{what}: unexpected {sorted(jobs - expected)}; missing {sorted(expected - jobs)}\n"
                              + output[-2000:])
    if expected:
        assert "code changed for" in output and "Params have changed since last execution" in output


def test_sslam_why_names_the_changed_function(finished_study):
    import subprocess
    import sys

    repo, config_path = finished_study
    source = repo / "sslam" / "objective" / "source_retention.py"
    original = source.read_text()
    source.write_text(original.replace(SRL_REBUILT, SRL_REBUILT + " * 1.0"))
    try:
        result = subprocess.run([sys.executable, "-m", "sslam.cli", "why", "--config", str(config_path)], cwd=repo,
                                capture_output=True, text=True, timeout=300)
    finally:
        source.write_text(original)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "results/pretrain/SSLAM/checkpoint: 1 changed" in result.stdout
    assert "sslam.objective.source_retention:srl_target" in result.stdout
    assert "1 of " in result.stdout.splitlines()[-1]
