# Pretraining: Stage 1 (EAT-style, unmixed audio) once, then Stage 2 once per variant from the Stage-1
# checkpoint. Multi-GPU jobs launch torchrun on one node (all requested GPUs visible to the one task).


localrules:
    track_init,


rule track_init:
    """Create the MLflow store, experiment and the study's parent run ONCE, before any job logs to it
    (concurrent first writers can leave a fresh SQLite store half-migrated). MLFLOW_TRACKING_URI wins
    over the embedded default store."""
    output:
        TRACKING,
    params:
        code=CODE["tracking"],
        uri=section(config, "tracking.uri", None) or f"sqlite:///{Path(RESULTS).resolve()}/mlflow/mlflow.db",
        experiment=section(config, "tracking.experiment", None) or STUDY["name"],
        study=STUDY["name"],
        sslam=SSLAM,
    log:
        f"{RESULTS}/logs/track_init.log",
    conda:
        CONDA_ENV
    shell:
        "{params.sslam} track init --uri {params.uri} --experiment {params.experiment} "
        "--study {params.study} --out {output} > {log} 2>&1"


if not STAGE1_CHECKPOINT:

    rule pretrain_stage1:
        """Stage 1: masked latent bootstrapping on unmixed audio (global + local losses)."""
        input:
            shards=PRETRAIN_SHARDS,
            tracking=TRACKING,
        output:
            checkpoint=f"{RESULTS}/pretrain/stage1/checkpoint.pt",
            metrics=f"{RESULTS}/pretrain/stage1/metrics.jsonl",
        params:
            code=CODE["pretrain"],
            settings=PRETRAIN_SETTINGS + settings("pretrain.stage1"),
            out=lambda wildcards, output: str(Path(output.checkpoint).parent),
            launch=launcher(PRETRAIN_RESOURCES["gpu"]),
            env=PRETRAIN_THREAD_ENV,
            study=STUDY_CONFIG,
            guard=resume_guard(f"{RESULTS}/pretrain/stage1", CODE["pretrain"], PRETRAIN_SETTINGS, settings("pretrain.stage1")),
        threads: PRETRAIN_RESOURCES["threads"]
        resources:
            **pretrain_resources(),
        log:
            f"{RESULTS}/logs/pretrain/stage1.log",
        benchmark:
            f"{RESULTS}/benchmarks/pretrain/stage1.tsv"
        conda:
            CONDA_ENV
        shell:
            # --resume continues from state/last.pt when a previous attempt was killed (time limit, preemption).
            "{params.guard}{params.env} {params.launch} pretrain --config {params.study} --stage 1 --out {params.out} "
            "--shards {input.shards} --tracking {input.tracking} --resume --no-progress > {log} 2>&1"


rule pretrain_stage2:
    """Stage 2 of one variant (MB-UA, MB-PMA, MB-UA-PMA, SSLAM or a study-defined ablation), starting
    from the Stage-1 student and teacher."""
    input:
        init=stage1_checkpoint(),
        shards=PRETRAIN_SHARDS,
        tracking=TRACKING,
    output:
        checkpoint=f"{RESULTS}/pretrain/stage2/{{variant}}/checkpoint.pt",
        metrics=f"{RESULTS}/pretrain/stage2/{{variant}}/metrics.jsonl",
    wildcard_constraints:
        variant="|".join(map(re.escape, VARIANTS)),
    params:
        code=CODE["pretrain"],
        settings=lambda wildcards: PRETRAIN_SETTINGS + settings("pretrain.stage2", f"variants.{wildcards.variant}"),
        out=lambda wildcards: f"{RESULTS}/pretrain/stage2/{wildcards.variant}",
        launch=launcher(PRETRAIN_RESOURCES["gpu"]),
        env=PRETRAIN_THREAD_ENV,
        study=STUDY_CONFIG,
        guard=lambda wildcards: resume_guard(f"{RESULTS}/pretrain/stage2/{wildcards.variant}", CODE["pretrain"],
                                                    PRETRAIN_SETTINGS, settings("pretrain.stage2", f"variants.{wildcards.variant}")),
    threads: PRETRAIN_RESOURCES["threads"]
    resources:
        **pretrain_resources(),
    log:
        f"{RESULTS}/logs/pretrain/stage2-{{variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain/stage2-{{variant}}.tsv"
    conda:
        CONDA_ENV
    shell:
        "{params.guard}{params.env} {params.launch} pretrain --config {params.study} --stage 2 --variant {wildcards.variant} "
        "--init {input.init} --out {params.out} --shards {input.shards} --tracking {input.tracking} "
        "--resume --no-progress > {log} 2>&1"
