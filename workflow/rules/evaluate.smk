# Downstream evaluation: every model (the Stage-1 baseline, each Stage-2 variant, the random-init baseline)
# × benchmark × regime × seed; `finetune` fine-tunes the whole encoder, `linear` probes the frozen one.
# metrics.json is the source of truth of every table; predictions.npz feeds the significance tests.
# A job stopped by SIGUSR1/SIGTERM (time limit, preemption) writes its state and exits 75; the retried job
# resumes it and ends identical to an uninterrupted run (docs/evaluation.md, "Preemption").


from sslam.evaluation.config import SELECTIONS, selection_predictions

EVAL = JobFolder("eval/{model}/{benchmark}/{regime}/seed{seed}", log="eval/{model}/{benchmark}/{regime}-seed{seed}")


rule evaluate:
    """One model on one benchmark, in one regime, with one seed."""
    input:
        unpack(lambda wildcards: STUDY.evaluation_inputs(wildcards.model, wildcards.benchmark)),
    output:
        metrics=EVAL / "metrics.json",
        predictions=EVAL / "predictions.npz",
        **{f"predictions_{name}": EVAL / selection_predictions(name) for name in SELECTIONS},   # each selection's
        code=EVAL / "metrics.code.json",
    wildcard_constraints:
        model=one_of(STUDY.models),
        benchmark=one_of(STUDY.benchmarks),
        regime=one_of(STUDY.regimes),
        seed=r"\d+",
    params:
        code=code("evaluate", EVAL / "metrics.json"),
        tracking=TRACKING,
        settings=lambda wildcards: STUDY.evaluation_settings(wildcards.benchmark),
        command=lambda wildcards: REGIME_COMMAND[wildcards.regime],
        arguments=lambda wildcards: STUDY.evaluation_arguments(wildcards.model, wildcards.benchmark),
        device=EXECUTOR.device_argument("evaluate"),
        env=EXECUTOR.thread_environment("evaluate"),
    threads: STUDY.resources("evaluate")["threads"]
    resources:
        **EXECUTOR.job_resources("evaluate"),
    log:
        EVAL.log,
    benchmark:
        EVAL.benchmark
    conda:
        CONDA_ENV
    shell:
        f"{RECORD} {{params.env}} {SSLAM} {{params.command}} --config {q(STUDY_CONFIG)} --benchmark {{wildcards.benchmark}} "
        "{params.arguments} --seed {wildcards.seed} --variant {wildcards.model} {params.device} "
        '--out "$(dirname {output.metrics:q})" --tracking {params.tracking:q} --no-progress > {log:q} 2>&1'
