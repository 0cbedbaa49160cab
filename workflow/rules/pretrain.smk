# Pretraining: Stage 1 (EAT-style, unmixed audio) once, then Stage 2 once per variant from the Stage-1
# checkpoint. A multi-GPU job launches torchrun on one node; `--resume` continues a killed attempt of the
# same job (same code and settings) and starts afresh otherwise.


localrules:
    track_init,


rule track_init:
    """Create the MLflow store, experiment and the study's parent run ONCE, before any job logs to it
    (concurrent first writers can leave a fresh SQLite store half-migrated). MLFLOW_TRACKING_URI wins."""
    output:
        tracking=STUDY.tracking_file,
        code=record_path(STUDY.tracking_file),
    params:
        code=code("track", STUDY.tracking_file),
        uri=STUDY.tracking_uri(),
        experiment=(STUDY.config.get("tracking") or {}).get("experiment") or STUDY.name,
        deferred="--deferred" if (STUDY.config.get("tracking") or {}).get("deferred") else "",
    log:
        f"{RESULTS}/logs/track_init.log",
    conda:
        CONDA_ENV
    shell:
        f"{RECORD} {SSLAM} track init --uri {{params.uri:q}} --experiment {{params.experiment:q}} --study {q(STUDY.name)} "
        "{params.deferred} --out {output.tracking:q} > {log:q} 2>&1"


PRETRAIN = JobFolder("pretrain/{model}", log="pretrain/{model}")


rule pretrain:
    """Stage 1 (model `stage1`), or Stage 2 of one variant (MB-UA, MB-PMA, MB-UA-PMA, SSLAM or a study-defined
    ablation) starting from the Stage-1 student and teacher."""
    input:
        unpack(lambda wildcards: STUDY.pretrain_inputs(wildcards.model)),
    output:
        checkpoint=PRETRAIN / "checkpoint.pt",
        metrics=PRETRAIN / "metrics.jsonl",
        code=PRETRAIN / "checkpoint.code.json",
    wildcard_constraints:
        model=one_of(STUDY.pretrained_models),
    params:
        code=code("pretrain", PRETRAIN / "checkpoint.pt"),
        tracking=TRACKING,
        settings=lambda wildcards: STUDY.pretrain_settings(wildcards.model),
        stage=lambda wildcards: STUDY.pretrain_arguments(wildcards.model),
        init=lambda wildcards, input: f"--init {q(input.init)}" if "init" in input.keys() else "",
        launch=EXECUTOR.launcher("pretrain", '"$SSLAM_PYTHON"'),
        device=EXECUTOR.device_argument("pretrain"),
        env=EXECUTOR.thread_environment("pretrain"),
    threads: STUDY.resources("pretrain")["threads"]
    resources:
        **EXECUTOR.job_resources("pretrain"),
    log:
        PRETRAIN.log,
    benchmark:
        PRETRAIN.benchmark
    conda:
        CONDA_ENV
    shell:
        f"{RECORD} {{params.env}} {{params.launch}} pretrain --config {q(STUDY_CONFIG)} {{params.stage}} {{params.init}} "
        '--out "$(dirname {output.checkpoint:q})" --shards {input.shards:q} --tracking {params.tracking:q} '
        "{params.device} --resume --no-progress > {log:q} 2>&1"
