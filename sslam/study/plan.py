"""`sslam plan`: what a study costs before it is submitted — jobs, GPU-hours, cache disk, GPU memory per job.

    sslam plan --config config/config.yaml --gpu H100 [--mfu 0.35] [--json plan.json]

Everything is derived from the study config (sslam.study.dag.Study) and the model FLOP counts
(`EncoderConfig.flops_per_forward`, `DecoderConfig.flops_per_forward`); nothing here imports torch, so the
workflow uses the same numbers for the SLURM runtime of a job group whose `runtime` is `auto`.

* GPU-hours of a job = its model FLOPs / (the GPU's dense bf16 peak × MFU). The MFU is an assumption
  (default 0.35, about what fairseq reaches on an RTX 3090 and the goal the device check measures on an H100);
  `benchmarks/device_check.sh` measures the real one — pass it with `--mfu`.
* Training-set sizes come from the study's manifests when they exist (run the manifest rules first for exact
  figures), else from the datasets' published split sizes (marked "assumed").
* Peak GPU memory of a job is a model, not a measurement: fp32 weights, gradients and AdamW
  moments of the student and decoder (16 bytes per parameter), the fp32 teacher (4), and the activations the
  backward keeps — per student sequence per block ≈ 34·L·D bytes in bf16 (Korthikanti et al. 2022, without
  the attention matrix, which SDPA does not store), per decoder layer ≈ 12 bytes per grid element — plus the
  fp32 prediction and target grids of the loss. The device check prints the measured peak to compare with.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sslam.evaluation.config import BenchmarkConfig
from sslam.model.config import DecoderConfig, EncoderConfig
from sslam.objective.config import floor_count, stage1_variant_config, variant_config
from sslam.runtime.configuration import from_dict, section
from sslam.runtime.errors import ConfigError, first_line
from sslam.runtime.io import atomic_write_json
from sslam.study.dag import Study
from sslam.train.config import train_config_for_stage

# Dense bf16 peak FLOP/s and memory (GiB) of common accelerators (vendor data sheets, no sparsity).
GPUS: dict[str, tuple[float, float]] = {
    "H200": (989e12, 141), "H100": (989e12, 80), "A100": (312e12, 80), "A100-40GB": (312e12, 40),
    "L40S": (362e12, 48), "A10": (125e12, 24), "V100": (125e12, 32), "RTX3090": (71e12, 24),
    "RTX4090": (165e12, 24),
}
DEFAULT_GPU, DEFAULT_MFU = "H100", 0.35
RUNTIME_SAFETY = 1.5      # `runtime: auto` asks SLURM for this multiple of the estimate
# Training/test clips of the public datasets (their documentation), used before the study's manifests exist.
ASSUMED_CLIPS: dict[str, dict[str, int]] = {
    "audioset:as2m": {"train": 1_930_000}, "audioset:as20k": {"train": 20_550},
    "audioset:eval": {"eval": 18_886}, "esc50": {"train": 2_000},
    "ks1": {"train": 51_088, "valid": 6_798, "test": 6_835}, "ks2": {"train": 84_843, "valid": 9_981, "test": 11_005},
    "spass": {"train": 3_750, "eval": 1_250}, "urbansed": {"train": 6_000, "valid": 2_000, "test": 2_000},
}


@dataclass
class JobCost:
    group: str                     # pretrain | evaluate
    name: str                      # e.g. pretrain:stage1, evaluate:as20k:finetune
    jobs: int
    gpus_per_job: int
    steps: int
    tflop_per_job: float
    gpu_hours_per_job: float
    peak_memory_gib: float | None = None
    note: str = ""
    scoring_share: float | None = None   # evaluation: FLOPs of scoring its evaluation points / of its training

    @property
    def gpu_hours(self) -> float:
        return self.jobs * self.gpu_hours_per_job

    @property
    def wall_hours_per_job(self) -> float:
        return self.gpu_hours_per_job / self.gpus_per_job


@dataclass
class StudyPlan:
    gpu: str
    mfu: float
    jobs: list[JobCost] = field(default_factory=list)
    cache_gib: dict[str, float] = field(default_factory=dict)
    sizes_assumed: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)     # benchmarks whose sizes are not known before the manifest
    unsized: list[str] = field(default_factory=list)     # datasets without a manifest yet or a published size

    @property
    def gpu_hours(self) -> float:
        return sum(job.gpu_hours for job in self.jobs)


def pretraining_step_flops(encoder, decoder, objective, stage: int, batch: int, num_frames: int) -> dict[str, int]:
    """Model FLOPs of one pretraining update on `batch` clips (student and decoder forward + backward = 3×
    forward on CLS + kept tokens of every clone, the patch embedding once per clip; teacher forward only:
    one pass per half on all tokens, plus Stage 2's source-retention pass over the mixed-region tokens)."""
    time_patches = num_frames // encoder.patch_size
    positions = time_patches * encoder.freq_patches
    kept = floor_count(positions * (1.0 - objective.mask_prob))
    if stage == 1:
        halves, clones, srl = 1, objective.clones_stage1, False
        teacher_passes = 1
    else:
        halves = int(objective.student_sees_unmixed) + int(objective.student_sees_mixed)
        clones, srl = objective.clones_stage2, objective.srl_local or objective.srl_global
        # The teacher sees each half the student sees, and the unmixed clips whenever a term needs them.
        needs_unmixed = objective.student_sees_unmixed or srl or objective.mixit
        teacher_passes = int(needs_unmixed) + int(objective.student_sees_mixed)
    sequences = halves * batch * clones
    embed = 2 * positions * encoder.embed_dim * encoder.patch_size**2
    student = sequences * encoder.flops_per_forward(1 + kept, num_patches=0) + halves * batch * embed
    decoder_flops = sequences * decoder.flops_per_forward(encoder.embed_dim, positions)
    teacher = teacher_passes * batch * encoder.flops_per_forward(1 + positions)
    if srl:
        region_rows = round(objective.region_fraction * num_frames / encoder.patch_size)
        mixed_tokens = positions - 2 * region_rows * encoder.freq_patches
        teacher += batch * encoder.flops_per_forward(1 + mixed_tokens, num_patches=positions)
    return {"student": 3 * student, "decoder": 3 * decoder_flops, "teacher": teacher,
            "total": 3 * student + 3 * decoder_flops + teacher, "sequences": sequences, "kept": kept,
            "positions": positions}


def pretraining_memory_gib(encoder, decoder, flops: dict[str, int]) -> float:
    """The memory model of the module docstring (bytes → GiB)."""
    dim, depth = encoder.embed_dim, encoder.depth
    block = 4 * dim * dim + 2 * dim * encoder.mlp_hidden_dim
    encoder_params = depth * block + dim * encoder.patch_size**2 + 2 * dim
    decoder_params = decoder.depth * dim * (dim // decoder.groups) * decoder.kernel**2 + dim * dim
    weights = 16 * (encoder_params + decoder_params) + 4 * encoder_params
    sequences, kept, positions = flops["sequences"], flops["kept"], flops["positions"]
    student = depth * sequences * (1 + kept) * dim * 34
    decoder_activations = decoder.depth * sequences * positions * dim * 12
    loss = 2 * sequences * positions * dim * 4
    return (weights + student + decoder_activations + loss) / 2**30


def evaluation_memory_gib(encoder, regime_name: str, batch: int, tokens: int) -> float:
    """Fine-tuning: the memory model above for the whole encoder on `batch` full-length clips; linear probe:
    the frozen fp32 encoder, with no activations kept for a backward."""
    dim = encoder.embed_dim
    params = encoder.depth * (4 * dim * dim + 2 * dim * encoder.mlp_hidden_dim) + dim * encoder.patch_size**2
    if regime_name == "linear":
        return 4 * params / 2**30
    return (16 * params + encoder.depth * batch * tokens * dim * 34) / 2**30


def dataset_clips(study, name: str) -> tuple[dict[str, int], bool]:
    """{split: clips} of a dataset from its manifest, or the published sizes (second value True)."""
    manifest = Path(study.manifest_path(name))
    if manifest.is_file():
        import pandas as pd

        try:
            counts = pd.read_csv(manifest, sep="\t", usecols=["split"])["split"].value_counts()
        except (ValueError, KeyError, OSError) as error:  # a published size would hide a broken manifest
            raise ConfigError(f"cannot count the clips of {name}: {manifest}: {first_line(error)}") from None
        return {str(split): int(count) for split, count in counts.items()}, False
    entry = study.config["datasets"][name]
    key = entry["adapter"] + (f":{entry.get('options', {}).get('set')}" if entry["adapter"] == "audioset" else "")
    if entry["adapter"] == "synthetic":
        from sslam.data.synthetic import SyntheticConfig

        synthetic = from_dict(SyntheticConfig, section(study.config, "synthetic"), where="synthetic")
        per_set = {"pretrain": {"train": synthetic.pretrain_clips},
                   "mono": {"train": synthetic.mono_clips_per_class * 14},
                   "poly": {"train": synthetic.poly_train_clips, "test": synthetic.poly_test_clips},
                   "polyphony": {"test": synthetic.polyphony_clips}}
        return per_set.get(study.synthetic_set(name), {}), False
    if entry["adapter"] == "polyphony_bins":  # the sources' held-out clips, pooled under `eval`
        held_out = [dataset_clips(study, source) for source in study.polyphony_sources(name)]
        total = sum(clips.get("eval", 0) + clips.get("test", 0) for clips, _ in held_out)
        return ({"eval": total} if total else {}), any(assumed for _, assumed in held_out)
    return with_holdout(dict(ASSUMED_CLIPS.get(key, {})), float(entry.get("holdout") or 0.0)), True


def with_holdout(clips: dict[str, int], holdout: float) -> dict[str, int]:
    """Published split sizes after the study's hold-out (sslam.data.holdout) moved its share of train to valid."""
    if holdout and clips.get("train"):
        held = round(clips["train"] * holdout)
        clips = {**clips, "train": clips["train"] - held, "valid": clips.get("valid", 0) + held}
    return clips


def plan_study(study, gpu: str = DEFAULT_GPU, mfu: float = DEFAULT_MFU) -> StudyPlan:

    if gpu not in GPUS:
        raise ConfigError(f"unknown GPU {gpu!r}; known: {', '.join(GPUS)}")
    if not 0 < mfu <= 1:
        raise ConfigError(f"--mfu must lie in (0, 1], got {mfu}")
    peak, memory = GPUS[gpu]
    config = study.config
    encoder = from_dict(EncoderConfig, section(config, "model.encoder"), "model.encoder")
    decoder = from_dict(DecoderConfig, section(config, "model.decoder"), "model.decoder")
    plan = StudyPlan(gpu, mfu)
    gpu_hours = lambda flops: flops / (peak * mfu) / 3600  # noqa: E731  (one formula, read inline)
    gpus = study.resources("pretrain")["gpu"] or 1
    frames = study.datasets[study.pretrain_dataset].target_length
    for model in study.pretrained_models:
        own, stage1_variant = study.lineage(model)
        stage = 1 if own == "stage1" else 2
        train = train_config_for_stage(config, stage)
        objective = (stage1_variant_config(stage1_variant, section(config, "objective"),
                                           config["stage1_variants"][stage1_variant]) if stage1_variant and stage == 1
                     else variant_config(None if stage == 1 else own, section(config, "objective"),
                                         {} if stage == 1 else section(config, f"variants.{own}")))
        step = pretraining_step_flops(encoder, decoder, objective, stage, train.batch_size * gpus, frames)
        total = step["total"] * train.steps
        per_gpu = dict(step, sequences=step["sequences"] // gpus)
        plan.jobs.append(JobCost("pretrain", f"pretrain:{model}", 1, gpus, train.steps, total / 1e12,
                                 gpu_hours(total), pretraining_memory_gib(encoder, decoder, per_gpu)))
    evaluation_gpus = study.resources("evaluate")["gpu"] or 1
    models = len(study.models) * len(study.seeds)
    for benchmark in study.benchmarks:
        entry = from_dict(BenchmarkConfig, section(config, f"evaluation.benchmarks.{benchmark}"),
                          where=f"evaluation.benchmarks.{benchmark}")
        test_name, train_name = study.benchmark_datasets(benchmark)
        train_clips, assumed_train = dataset_clips(study, train_name)
        test_clips, assumed_test = dataset_clips(study, test_name)
        if assumed_train or assumed_test:
            plan.sizes_assumed.extend(sorted({train_name, test_name}))
        if not train_clips or not test_clips:
            plan.unknown.append(benchmark)
            continue
        tokens = 1 + study.datasets[test_name].target_length // encoder.patch_size * encoder.freq_patches
        forward = encoder.flops_per_forward(tokens)
        folds = max(1, len(entry.folds) or 5) if entry.protocol == "folds" else 1
        num_train = sum(count for split, count in train_clips.items() if split in entry.train_splits) or sum(train_clips.values())
        num_train = num_train * (folds - 1) // folds if folds > 1 else num_train
        num_test = test_clips.get(entry.eval_split, sum(test_clips.values()) // max(1, folds))
        num_valid = train_clips.get(entry.valid_split, 0) if entry.valid_split else 0
        # a round validates on the held-out clips of its training folds only
        num_valid = num_valid * (folds - 1) // folds if folds > 1 else num_valid
        for regime_name in study.regimes:
            regime = entry.regime(regime_name)
            draws = regime.weighted_sampling or num_train
            per_epoch = max(1, math.ceil(draws / regime.batch_size))
            steps = regime.total_steps(per_epoch) * folds
            train_flops = steps * regime.batch_size * forward * (3 if regime_name == "finetune" else 1)
            # Every evaluation point scores the test and the validation rows (sslam.evaluation.selection).
            evaluations = regime.evaluation_points(steps // folds, per_epoch)
            scoring = folds * evaluations * (num_test + num_valid) * forward
            total = train_flops + scoring
            plan.jobs.append(JobCost("evaluate", f"evaluate:{benchmark}:{regime_name}", models, evaluation_gpus, steps,
                                     total / 1e12, gpu_hours(total),
                                     evaluation_memory_gib(encoder, regime_name, regime.batch_size, tokens),
                                     note="sizes assumed" if assumed_train or assumed_test else "",
                                     scoring_share=scoring / train_flops))
    for name in study.used_datasets():
        clips, assumed = dataset_clips(study, name)
        if not clips:
            plan.unsized.append(name)
            continue
        dataset = study.datasets[name]
        plan.cache_gib[name] = sum(clips.values()) * dataset.target_length * encoder.num_mel_bins * 2 / 2**30
        if assumed:
            plan.sizes_assumed.append(name)
    plan.sizes_assumed = sorted(set(plan.sizes_assumed))
    return plan


def format_plan(plan: StudyPlan) -> str:
    memory = GPUS[plan.gpu][1]
    lines = [f"Plan for {plan.gpu} ({GPUS[plan.gpu][0] / 1e12:.0f} TFLOP/s bf16 dense, {memory:.0f} GiB) at an "
             f"assumed MFU of {plan.mfu:.0%} (benchmarks/device_check.sh measures it)", "",
             f"{'job':<36} {'jobs':>5} {'GPUs':>5} {'steps':>9} {'TFLOP/job':>11} {'GPU-h/job':>10} "
             f"{'wall h/job':>10} {'GPU-h':>9} {'peak GiB':>9}  fits  scoring"]
    for job in plan.jobs:
        peak = f"{job.peak_memory_gib:9.1f}" if job.peak_memory_gib is not None else f"{'-':>9}"
        fits = "" if job.peak_memory_gib is None else ("yes" if job.peak_memory_gib < memory * 0.95 else "NO")
        scoring = f"{job.scoring_share:+.0%}" if job.scoring_share is not None else ""
        lines.append(f"{job.name:<36} {job.jobs:>5} {job.gpus_per_job:>5} {job.steps:>9} {job.tflop_per_job:>11.3g} "
                     f"{job.gpu_hours_per_job:>10.3g} {job.wall_hours_per_job:>10.3g} {job.gpu_hours:>9.4g} {peak}  {fits:<4}  "
                     f"{scoring:>7} {job.note}".rstrip())
    lines += ["", "scoring: what scoring the evaluation points (test + validation rows, every selection of "
              "sslam.evaluation.selection) adds to a job's training FLOPs",
              f"total: {plan.gpu_hours:,.1f} GPU-hours over {sum(job.jobs for job in plan.jobs)} GPU jobs", "",
              "HDF5 cache (float16 log-mel):"]
    lines += [f"  {name:<28} {size:10.2f} GiB" for name, size in plan.cache_gib.items()]
    lines.append(f"  {'total':<28} {sum(plan.cache_gib.values()):10.2f} GiB")
    if plan.unsized:
        lines.append(f"cache size unknown (no manifest yet and no published size): {', '.join(plan.unsized)}")
    if plan.unknown:
        lines.append(f"not costed (clip counts unknown until their manifests exist: snakemake --until manifest): "
                     f"{', '.join(plan.unknown)}")
    if plan.sizes_assumed:
        lines.append(f"sizes assumed from the datasets' documentation (no manifest yet): {', '.join(plan.sizes_assumed)}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--config", required=True, help="the study YAML")
    parser.add_argument("--gpu", default=DEFAULT_GPU, choices=sorted(GPUS), help=f"accelerator (default {DEFAULT_GPU})")
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU, help="model-FLOPs utilisation to assume (default: %(default)s; benchmarks/device_check.sh measures it)")
    parser.add_argument("--json", help="also write the plan as JSON here")


def run(args: argparse.Namespace) -> int:
    plan = plan_study(Study.from_file(args.config, check_data_roots=False), args.gpu, args.mfu)
    print(format_plan(plan))
    if args.json:
        atomic_write_json(args.json, {"gpu": plan.gpu, "mfu": plan.mfu, "gpu_hours": plan.gpu_hours,
                                      "jobs": [asdict(job) | {"gpu_hours": job.gpu_hours} for job in plan.jobs],
                                      "cache_gib": plan.cache_gib, "sizes_assumed": plan.sizes_assumed,
                                      "not_costed": plan.unknown, "cache_unsized": plan.unsized})
    return 0


__all__ = ["GPUS", "StudyPlan", "plan_study", "pretraining_step_flops", "format_plan"]
