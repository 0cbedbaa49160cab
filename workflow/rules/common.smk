# Config validation, paths and helpers shared by every rules file. Nothing here does science: the
# rules only call the `sslam` command line, and these helpers only decide file names and arguments.

import json
import re
import os
import sys
from pathlib import Path

import jsonschema
import yaml
from snakemake.settings.types import DeploymentMethod

# The package of THIS checkout (not another installed copy) hashes and validates the config; the jobs
# run `python -m sslam.cli` from the same root, so parse time and run time see the same code.
sys.path.insert(0, str(Path(workflow.basedir).parent))

from sslam.configuration import from_dict, section
from sslam.data.datasets import study_shard_paths
from sslam.errors import ConfigError
from sslam.provenance import code_hash

SCHEMA = Path(workflow.basedir) / "schemas" / "config.schema.yaml"
VARIANT_PRESETS = ["MB-UA", "MB-PMA", "MB-UA-PMA", "SSLAM"]
STAGE1 = "stage1"  # the model name of the Stage-1 baseline rows in the evaluation and the tables
REGIME_COMMAND = {"finetune": "finetune", "linear": "probe"}
SYNTHETIC_ADAPTER = "synthetic"  # a dataset written by `sslam synth` rather than read by an adapter


# --- 1. validation: everything that can be wrong with the config fails here, before any job starts ---

# Without --configfile the workflow runs the embedded demo (a `configfile:` directive would be MERGED
# with a --configfile given on the command line, mixing the demo into the paper study, so the default
# is applied here instead). `snakemake --profile slurm` gets config/config.yaml from the profile.
if not config:
    config.update(yaml.safe_load((Path(workflow.basedir).parent / "config" / "demo.yaml").read_text()))


def validate_against_schema(config):
    """JSON-schema check with messages that name the offending key (study.seeds[0], datasets.x.root...)."""
    schema = yaml.safe_load(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in error.absolute_path)
        where = where.replace(".[", "[") or "<top level>"
        problems.append(f"{where}: {error.message}")
    if problems:
        raise ConfigError("config does not match workflow/schemas/config.schema.yaml:\n  " + "\n  ".join(problems))


def build_every_section(config):
    """Build each section's own dataclass with from_dict (as the jobs will), so an unknown or mistyped
    key in any module's section fails at parse time instead of hours later inside a job."""
    from sslam.data.config import CacheConfig, DatasetConfig
    from sslam.data.synthetic import SyntheticConfig
    from sslam.evaluation.config import BenchmarkConfig
    from sslam.front_end import FrontEndConfig
    from sslam.model.config import DecoderConfig, EncoderConfig
    from sslam.objective.config import ObjectiveConfig
    from sslam.train.config import train_config_for_stage
    from sslam.train.pretrain import objective_config

    for where, dataclass in [("front_end", FrontEndConfig), ("synthetic", SyntheticConfig), ("cache", CacheConfig),
                             ("model.encoder", EncoderConfig), ("model.decoder", DecoderConfig),
                             ("objective", ObjectiveConfig)]:
        from_dict(dataclass, section(config, where), where=where)
    for name, entry in config["datasets"].items():
        from_dict(DatasetConfig, entry, where=f"datasets.{name}")
    for name, entry in section(config, "evaluation.benchmarks").items():
        from_dict(BenchmarkConfig, entry, where=f"evaluation.benchmarks.{name}")
    stage1, stage2 = train_config_for_stage(config, 1), train_config_for_stage(config, 2)
    objective_config(config, None, stage1)
    for variant in config["study"]["variants"]:  # exactly what `sslam pretrain --stage 2 --variant V` builds
        objective_config(config, variant, stage2)


def check_study(config):
    """Cross-references the schema cannot express: names that must exist elsewhere in the config."""
    study, datasets = config["study"], config["datasets"]
    benchmarks = section(config, "evaluation.benchmarks")
    defined = set(section(config, "variants"))
    for i, variant in enumerate(study["variants"]):
        if variant not in VARIANT_PRESETS and variant not in defined:
            raise ConfigError(f"study.variants[{i}]: unknown variant {variant!r}; use one of {VARIANT_PRESETS} "
                              f"or define it under `variants:`")
    if study["pretrain_dataset"] not in datasets:
        raise ConfigError(f"study.pretrain_dataset: {study['pretrain_dataset']!r} is not under `datasets:`")
    for i, name in enumerate(study["benchmarks"]):
        if name not in benchmarks:
            raise ConfigError(f"study.benchmarks[{i}]: {name!r} is not under evaluation.benchmarks")
        for key in ("dataset", "train_dataset"):
            if benchmarks[name].get(key) and benchmarks[name][key] not in datasets:
                raise ConfigError(f"evaluation.benchmarks.{name}.{key}: {benchmarks[name][key]!r} is not under `datasets:`")
    for i, spec in enumerate(section(config, "study.tables.specs", [])):
        for benchmark in spec.get("benchmarks", []):
            if benchmark not in study["benchmarks"]:
                raise ConfigError(f"study.tables.specs[{i}] ({spec.get('name')}): benchmark {benchmark!r} is not "
                                  f"in study.benchmarks, so it would never have results")


validate_against_schema(config)
check_study(config)
build_every_section(config)

STUDY = config["study"]
RESULTS = STUDY["results"]
SEEDS = STUDY["seeds"]
VARIANTS = STUDY["variants"]
BENCHMARKS = STUDY["benchmarks"]
REGIMES = STUDY["regimes"]
STAGE1_CHECKPOINT = STUDY.get("stage1_checkpoint")  # official route: start Stage 2 from a released EAT checkpoint
MODELS = ([STAGE1] if STUDY.get("evaluate_stage1", True) else []) + VARIANTS
AUDIOSET = STUDY.get("audioset") or {}
# The exact config every job reads (with any --config overrides applied), written by `onstart` below.
STUDY_CONFIG = f"{RESULTS}/study-config.yaml"
TRACKING = f"{RESULTS}/mlflow/tracking.json"


# --- 2. datasets: which ones the study needs, where their manifests and shards live ---

def dataset_entry(name):
    return config["datasets"][name]


def benchmark_entry(name):
    return section(config, f"evaluation.benchmarks.{name}")


def benchmark_datasets(name):
    """(test dataset, training dataset) of a benchmark; they differ for the polyphony bins (trained on poly)."""
    entry = benchmark_entry(name)
    return entry["dataset"], entry.get("train_dataset") or entry["dataset"]


def polyphony_sources(name):
    """Datasets whose manifests a polyphony_bins dataset merges (its `sources` are <dataset>.tsv files)."""
    return [Path(source).stem for source in dataset_entry(name).get("options", {}).get("sources", [])]


def used_datasets():
    names = [STUDY["pretrain_dataset"]] + [d for b in BENCHMARKS for d in benchmark_datasets(b)]
    for name in list(names):
        if dataset_entry(name)["adapter"] == "polyphony_bins":
            names += polyphony_sources(name)
    return list(dict.fromkeys(names))  # unique, in first-use order


def is_synthetic(name):
    return dataset_entry(name)["adapter"] == SYNTHETIC_ADAPTER


def synthetic_set(name):
    return dataset_entry(name).get("options", {}).get("set", name)


def manifest_path(name):
    if is_synthetic(name):
        return f"{RESULTS}/data/synthetic/{synthetic_set(name)}/manifest.tsv"
    return f"{RESULTS}/data/{name}/manifest.tsv"


def shard_paths(name):
    return [str(path) for path in study_shard_paths(RESULTS, name, dataset_entry(name).get("shards", 1))]


def target_length(name):
    from sslam.data.config import DatasetConfig

    return from_dict(DatasetConfig, dataset_entry(name), where=f"datasets.{name}").target_length


def audioset_download_enabled():
    return bool(AUDIOSET.get("download", False))


def check_data_roots():
    """Every dataset read from disk must have its folder; produced folders (downloads, polyphony
    sources) are exempt. Checked at parse time so a typo fails before any job runs."""
    for name in used_datasets():
        entry = dataset_entry(name)
        if entry["adapter"] in (SYNTHETIC_ADAPTER, "polyphony_bins"):
            continue
        if not entry.get("root"):
            raise ConfigError(f"datasets.{name}.root: not set (adapter {entry['adapter']!r} reads a folder)")
        if not Path(entry["root"]).expanduser().is_dir():
            raise ConfigError(f"datasets.{name}.root: folder not found: {entry['root']}")
        audio_dir = entry.get("options", {}).get("audio_dir")
        if audio_dir and not audioset_download_enabled() and not Path(audio_dir).expanduser().is_dir():
            raise ConfigError(f"datasets.{name}.options.audio_dir: folder not found: {audio_dir} "
                              f"(or set study.audioset.download: true on a networked cluster)")


check_data_roots()


# --- 3. provenance: a hash of each rule's slice of the package, as a plain parse-time string ---
# Snakemake re-runs a job when its params change. Editing a module a rule imports changes nothing
# in the rule's text, so each rule carries the hash of the code it runs (see sslam/provenance.py).

def adapter_module(name):
    from sslam.data.adapters import ADAPTERS

    return ADAPTERS[dataset_entry(name)["adapter"]][0]


CODE = {
    "synth": code_hash("sslam.data.synthetic"),
    "cache": code_hash("sslam.audio", "sslam.data.cache"),
    "pretrain": code_hash("sslam.train.pretrain", "sslam.model", "sslam.objective"),
    "evaluate": code_hash("sslam.evaluation", "sslam.model"),
    "tables": code_hash("sslam.tables"),
    "tracking": code_hash("sslam.tracking"),
    "polyphony": code_hash("sslam.data.polyphony"),
}


def manifest_code(name):
    return code_hash("sslam.data.commands", adapter_module(name))


def settings(*wheres):
    """The config sections a job reads, as a canonical string: editing them re-runs just those jobs."""
    return json.dumps({where: section(config, where) for where in wheres}, sort_keys=True, default=str)


# --- 4. commands and resources ---

# `--sdm conda` users get the environment's own python; everyone else the interpreter running snakemake
# (the Makefile calls .venv/bin/snakemake without activating the venv, so a bare `python` may be another).
PYTHON = "python" if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method else sys.executable
SSLAM = f"{PYTHON} -m sslam.cli"
CONDA_ENV = "../../envs/sslam.yaml"


def resources_of(group):
    """Portable resources from study.resources.<group> (threads, mem_mb, runtime in minutes, gpu)."""
    defaults = {"threads": 1, "mem_mb": 4000, "runtime": 60, "gpu": 0}
    return {**defaults, **section(config, f"study.resources.{group}")}


def launcher(gpus):
    """`sslam` for one process; torchrun for a multi-GPU single-node job (all GPUs visible to the task)."""
    if gpus > 1:
        return f"{PYTHON} -m torch.distributed.run --standalone --nproc-per-node={gpus} -m sslam.cli"
    return SSLAM


def thread_env(threads):
    # Torch and BLAS default to every core of the node; a job must stay within its own allocation.
    return f"OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"


def resume_guard(out_dir, *keys):
    """Shell prefix that keeps `--resume` honest: a training state left by a killed attempt of the SAME
    job (same code and settings) is resumed; one left by another code/config version is discarded, so a
    re-run after a code change starts from scratch instead of 'resuming' a finished, stale run."""
    import hashlib

    key = hashlib.sha256("\0".join(keys).encode()).hexdigest()[:16]
    stamp = f"{out_dir}/state/resume-key"
    return (f"if [ -f {stamp} ] && [ \"$(cat {stamp})\" != {key} ]; then rm -rf {out_dir}/state; fi; "
            f"mkdir -p {out_dir}/state && echo {key} > {stamp}; ")


def write_study_config():
    """Write the effective config once per run, only when its content changed (so its mtime stays put)."""
    text = yaml.safe_dump(dict(config), sort_keys=False)
    path = Path(STUDY_CONFIG)
    if path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


onstart:
    write_study_config()
