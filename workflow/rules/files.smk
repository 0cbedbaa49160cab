# Which files each stage reads and writes, and the per-job arguments derived from them: no rules here
# (the rules live in data.smk, pretrain.smk, evaluate.smk, report.smk), only the helpers they share.
# Relies on the validated config and the helpers of common.smk.


# --- data: which manifests and shards each dataset gets (rules in data.smk) ---

SYNTHETIC_SETS = sorted({synthetic_set(d) for d in used_datasets() if is_synthetic(d)})
AUDIOSET_DATASETS = [d for d in used_datasets() if dataset_entry(d)["adapter"] == "audioset"]
ADAPTER_DATASETS = [d for d in used_datasets()
                    if not is_synthetic(d) and dataset_entry(d)["adapter"] != "polyphony_bins"]
POLYPHONY_DATASETS = [d for d in used_datasets() if dataset_entry(d)["adapter"] == "polyphony_bins"]
DOWNLOAD_DIR = f"{RESULTS}/data/audioset_download"
MANIFEST_CODE = {name: manifest_code(name) for name in used_datasets() if not is_synthetic(name)}


def audioset_metadata_options():
    """The AudioSet metadata folder and the options that locate its class list / ontology, shared by
    every AudioSet dataset of the study (the download manifest covers all of them at once)."""
    roots = {dataset_entry(d)["root"] for d in AUDIOSET_DATASETS}
    if len(roots) > 1:
        raise ConfigError(f"datasets using the audioset adapter must share one metadata root, got {sorted(roots)}")
    options = dataset_entry(AUDIOSET_DATASETS[0]).get("options", {})
    shared = {key: options[key] for key in ("class_list", "ontology") if key in options}
    return roots.pop(), " ".join(f"--option {key}={value}" for key, value in shared.items())


POLYPHONY_ROOT = None
if POLYPHONY_DATASETS:
    POLYPHONY_ROOTS = {dataset_entry(name)["root"] for name in POLYPHONY_DATASETS}
    if len(POLYPHONY_ROOTS) != 1 or None in POLYPHONY_ROOTS:
        raise ConfigError(f"datasets using the polyphony_bins adapter need one shared root folder (the workflow "
                          f"fills it with their source manifests), got {sorted(map(str, POLYPHONY_ROOTS))}")
    POLYPHONY_ROOT = POLYPHONY_ROOTS.pop()


def manifest_inputs(wildcards):
    """AudioSet manifests are availability scans: they wait for the download manifest (and the download
    itself when enabled). Other adapters read their folder directly."""
    inputs = {}
    if wildcards.dataset in AUDIOSET_DATASETS:
        inputs["download_manifest"] = f"{DOWNLOAD_DIR}/manifest.tsv"
        if audioset_download_enabled():
            inputs["downloaded"] = f"{DOWNLOAD_DIR}/download.done"
    if wildcards.dataset in POLYPHONY_DATASETS:
        inputs["sources"] = [f"{POLYPHONY_ROOT}/{source}.tsv" for source in polyphony_sources(wildcards.dataset)]
    return inputs


# --- pretraining (rules in pretrain.smk) ---

PRETRAIN_SHARDS = shard_paths(STUDY["pretrain_dataset"])
PRETRAIN_RESOURCES = resources_of("pretrain")
PRETRAIN_SETTINGS = settings("model", "objective", f"datasets.{STUDY['pretrain_dataset']}")
# torchrun starts one process per GPU: the job's CPU threads are shared among them.
PRETRAIN_THREAD_ENV = thread_env(max(1, PRETRAIN_RESOURCES["threads"] // max(1, PRETRAIN_RESOURCES["gpu"])))


def pretrain_resources():
    """gpu= (not gres, not tasks: tasks would become --ntasks-per-gpu) is what the SLURM plugin maps to
    --gpus; a CPU-only run (the demo) asks for none."""
    extra = {"gpu": PRETRAIN_RESOURCES["gpu"]} if PRETRAIN_RESOURCES["gpu"] else {}
    return dict(mem_mb=PRETRAIN_RESOURCES["mem_mb"], runtime=PRETRAIN_RESOURCES["runtime"], **extra)


def stage1_checkpoint():
    """Stage 1 trained here (the paper), or a released EAT checkpoint given in study.stage1_checkpoint
    (what the official SSLAM code does: "we use the EAT checkpoint as the Stage 1 checkpoint")."""
    return STAGE1_CHECKPOINT or f"{RESULTS}/pretrain/stage1/checkpoint.pt"


# --- evaluation (rules in evaluate.smk) ---

EVALUATE_RESOURCES = resources_of("evaluate")


def model_checkpoint(wildcards):
    if wildcards.model == STAGE1:
        return stage1_checkpoint()
    return f"{RESULTS}/pretrain/stage2/{wildcards.model}/checkpoint.pt"


def evaluation_inputs(wildcards):
    test_dataset, train_dataset = benchmark_datasets(wildcards.benchmark)
    inputs = {"checkpoint": model_checkpoint(wildcards), "tracking": TRACKING, "shards": shard_paths(test_dataset)}
    if train_dataset != test_dataset:
        inputs["train_shards"] = shard_paths(train_dataset)
    return inputs


def evaluation_arguments(wildcards, input):
    """--train-shards only where the benchmark trains on another dataset (the polyphony bins train on poly)."""
    return f"--train-shards {' '.join(input.train_shards)}" if "train_shards" in input.keys() else ""


def evaluation_settings(wildcards):
    test_dataset, train_dataset = benchmark_datasets(wildcards.benchmark)
    return settings(f"evaluation.benchmarks.{wildcards.benchmark}", f"datasets.{test_dataset}",
                    f"datasets.{train_dataset}", "model.encoder")


def evaluation_resources():
    extra = {"gpu": EVALUATE_RESOURCES["gpu"]} if EVALUATE_RESOURCES["gpu"] else {}
    return dict(mem_mb=EVALUATE_RESOURCES["mem_mb"], runtime=EVALUATE_RESOURCES["runtime"], **extra)


EVALUATION_WILDCARDS = dict(
    model="|".join(map(re.escape, MODELS)),
    benchmark="|".join(map(re.escape, BENCHMARKS)),
    seed=r"\d+",
)
EVALUATION_SHELL = (
    "{params.env} {params.sslam} {params.command} --config {params.study} --benchmark {wildcards.benchmark} "
    "--checkpoint {input.checkpoint} --seed {wildcards.seed} --variant {wildcards.model} "
    "--shards {input.shards} {params.train_shards} --out {params.out} --tracking {input.tracking} > {log} 2>&1"
)


def evaluation_rule_params(regime):
    return dict(
        code=CODE["evaluate"],
        settings=evaluation_settings,
        train_shards=evaluation_arguments,
        out=lambda wildcards: f"{RESULTS}/eval/{wildcards.model}/{wildcards.benchmark}/{regime}/seed{wildcards.seed}",
        command=REGIME_COMMAND[regime],
        sslam=SSLAM,
        study=STUDY_CONFIG,
        env=thread_env(EVALUATE_RESOURCES["threads"]),
    )


def evaluation_results():
    return expand(f"{RESULTS}/eval/{{model}}/{{benchmark}}/{{regime}}/seed{{seed}}/metrics.json",
                  model=MODELS, benchmark=BENCHMARKS, regime=REGIMES, seed=SEEDS)


# --- tables and figures (rules in report.smk) ---

TABLES_DIR = f"{RESULTS}/tables"
TABLE_SPECS = section(config, "study.tables.specs", [])
POLYPHONY_ANALYSIS = f"{RESULTS}/analysis/audioset_polyphony.json"
# Figure 3 needs the AudioSet ontology and segment CSVs; run it whenever the study points at them.
POLYPHONY_SEGMENTS = [str(Path(AUDIOSET["metadata"]) / name) for name in AUDIOSET.get("polyphony_segments", [])] \
    if AUDIOSET.get("metadata") else []


def pretraining_metrics():
    stage1 = [] if STAGE1_CHECKPOINT else [f"{RESULTS}/pretrain/stage1/metrics.jsonl"]
    return stage1 + expand(f"{RESULTS}/pretrain/stage2/{{variant}}/metrics.jsonl", variant=VARIANTS)


def table_files():
    files = {}
    for spec in TABLE_SPECS:
        for suffix in ("md", "csv", "tex"):
            files[f"{spec['name']}_{suffix}"] = f"{TABLES_DIR}/{spec['name']}.{suffix}"
    return files


def figure_files():
    figures = {f"{spec['name']}_figure": f"{TABLES_DIR}/{spec['name']}_polyphony.png"
               for spec in TABLE_SPECS if spec.get("kind") == "polyphony_bins"}
    figures["pretrain_loss"] = f"{TABLES_DIR}/pretrain_loss.png"
    if POLYPHONY_SEGMENTS:
        figures["audioset_polyphony"] = f"{TABLES_DIR}/audioset_polyphony.png"
    return figures
