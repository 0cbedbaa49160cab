"""The study: one model of the whole DAG, built once from the validated config, for the workflow and the CLI.

`Study(config)` knows the datasets and where their manifests and shards live, the pretrained models
(Stage 1, Stage 2 per variant), the models to evaluate, regimes × benchmarks × seeds, the tables, the
resources of each job group and the code fingerprint of every job. The Snakemake rules only ask it;
`sslam why` uses it to say which functions changed for which job. Everything that can be wrong with a
config fails in the constructor, naming the key, before any job starts (and without importing torch).

Paths are relative to the working directory (the repository root), as the config gives them, so that a
moved or copied checkout keeps every rule's parameters.
"""
from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sslam.audio.config import FrontEndConfig
from sslam.data.config import CacheConfig, DatasetConfig, study_shard_paths
from sslam.evaluation.config import BenchmarkConfig
from sslam.fingerprints import Scheduler
from sslam.model.config import DecoderConfig, EncoderConfig
from sslam.objective.config import VARIANT_PRESETS, stage1_variant_config, variant_config
from sslam.runtime.configuration import from_dict, load_yaml, section
from sslam.runtime.errors import ConfigError
from sslam.runtime.io import atomic_write_text
from sslam.tables.models import DEFAULT_BASELINES, RANDOM, SEPARATOR, STAGE1, parse_model_id
from sslam.train.config import train_config_for_stage

SCHEMA = Path(__file__).with_name("schema.yaml")
# Model ids (their grammar: sslam.tables.models): stage1 (the EAT-style baseline), a Stage-2 variant (SSLAM),
# a Stage-1 variant `stage1@S` (Table 4) and its Stage-2 descendants `SSLAM@S`, and the baselines (`random`:
# a randomly initialised encoder of the study's shape).
RANDOM_BASELINE, DESCENDS = RANDOM, SEPARATOR
REGIME_COMMAND = {"finetune": "finetune", "linear": "probe"}
SYNTHETIC_ADAPTER = "synthetic"    # a dataset written by `sslam synth` rather than read by an adapter
POLYPHONY_ADAPTER = "polyphony_bins"
DEFAULT_RESOURCES = {"threads": 1, "mem_mb": 4000, "runtime": 60, "gpu": 0, "nodes": 1, "signal_lead_s": 300}
# The module a job's command runs: what a never-run job's static fingerprint covers.
JOB_MODULES = {"synth": "sslam.data.synthetic", "manifest": "sslam.data.commands", "cache": "sslam.data.cache",
               "pretrain": "sslam.train.pretrain", "evaluate": "sslam.evaluation.run",
               "tables": "sslam.tables.aggregate", "track": "sslam.runtime.mlflow_tracking", "polyphony": "sslam.data.polyphony"}


def validate_against_schema(config: dict[str, Any]) -> None:
    """JSON-schema check with messages that name the offending key (study.seeds[0], datasets.x.root...)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(yaml.safe_load(SCHEMA.read_text()))
    problems = []
    for error in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in error.absolute_path)
        problems.append(f"{where.replace('.[', '[') or '<top level>'}: {error.message}")
    if problems:
        raise ConfigError("the study config does not match sslam/study/schema.yaml:\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class EvaluationJob:
    model: str
    benchmark: str
    regime: str
    seed: int


class Study:
    def __init__(self, config: dict[str, Any], check_data_roots: bool = True) -> None:
        validate_against_schema(config)
        self.config = config
        self.scheduler = Scheduler()                   # compares the jobs' code records with today's code
        self._shards: dict[str, list[str]] = {}
        study = config["study"]
        self.name: str = study["name"]
        self.results: str = study["results"]
        _check_path_for_rules("study.results", self.results)
        self.seeds: list[int] = study["seeds"]
        self.variants: list[str] = study["variants"]
        self.benchmarks: list[str] = study["benchmarks"]
        self.regimes: list[str] = study["regimes"]
        self.baselines: list[str] = list(study.get("baselines", DEFAULT_BASELINES))
        self.stage1_checkpoint: str | None = study.get("stage1_checkpoint")
        self.pretrain_dataset: str = study["pretrain_dataset"]
        self.audioset: dict[str, Any] = study.get("audioset") or {}
        self.stage1_variants: list[str] = study.get("stage1_variants", [])
        self._check_references()
        self.datasets = self._build_sections()
        if check_data_roots:
            self._check_data_roots()
        self.changed_code: dict[str, list[str]] = {}   # record path -> changed units, filled by fingerprint()

    @classmethod
    def from_file(cls, path: str | Path, **options: Any) -> "Study":
        return cls(load_yaml(path), **options)

    # ------------------------------------------------------------------ validation
    def _check_references(self) -> None:
        """Cross-references the schema cannot express: names that must exist elsewhere in the config."""
        config = self.config
        datasets, benchmarks = config["datasets"], section(config, "evaluation.benchmarks")
        defined = set(section(config, "variants") or {})
        for i, variant in enumerate(self.variants):
            if variant not in VARIANT_PRESETS and variant not in defined:
                raise ConfigError(f"study.variants[{i}]: unknown variant {variant!r}; use one of "
                                  f"{list(VARIANT_PRESETS)} or define it under `variants:`")
        defined_stage1 = config.get("stage1_variants") or {}
        for i, name in enumerate(self.stage1_variants):
            if name not in defined_stage1:
                raise ConfigError(f"study.stage1_variants[{i}]: {name!r} is not defined under `stage1_variants:`")
            for variant in defined_stage1[name].get("stage2", []):
                if variant not in self.variants:
                    raise ConfigError(f"stage1_variants.{name}.stage2: {variant!r} is not in study.variants")
        if self.stage1_variants and self.stage1_checkpoint:
            raise ConfigError("study.stage1_variants needs Stage 1 trained here; study.stage1_checkpoint is set")
        if self.pretrain_dataset not in datasets:
            raise ConfigError(f"study.pretrain_dataset: {self.pretrain_dataset!r} is not under `datasets:`")
        for i, name in enumerate(self.benchmarks):
            if name not in benchmarks:
                raise ConfigError(f"study.benchmarks[{i}]: {name!r} is not under evaluation.benchmarks")
            for key in ("dataset", "train_dataset"):
                if benchmarks[name].get(key) and benchmarks[name][key] not in datasets:
                    raise ConfigError(f"evaluation.benchmarks.{name}.{key}: {benchmarks[name][key]!r} "
                                      f"is not under `datasets:`")
        for i, spec in enumerate(section(config, "study.tables.specs", [])):
            for benchmark in spec.get("benchmarks", []) if isinstance(spec, dict) else []:
                if benchmark not in self.benchmarks:
                    raise ConfigError(f"study.tables.specs[{i}] ({spec.get('name')}): benchmark {benchmark!r} "
                                      f"is not in study.benchmarks, so it would never have results")
        for name in self.used_datasets():
            if datasets[name]["adapter"] == POLYPHONY_ADAPTER:
                for source in self.polyphony_sources(name):
                    if source not in datasets:
                        raise ConfigError(f"datasets.{name}.options.sources: {source}.tsv names no dataset")

    def _build_sections(self) -> dict[str, Any]:
        """Build each section's own dataclass (as the jobs will), so an unknown, mistyped or out-of-range
        key fails now instead of hours later inside a job."""
        from sslam.data.synthetic import SyntheticConfig
        from sslam.tables.layouts import table_specs, tables_config

        config = self.config
        sections = [("front_end", FrontEndConfig), ("synthetic", SyntheticConfig), ("cache", CacheConfig),
                    ("model.encoder", EncoderConfig), ("model.decoder", DecoderConfig)]
        for where, settings_class in sections:
            from_dict(settings_class, section(config, where), where=where)
        tables_config(config)
        self._table_specs = table_specs(config)  # the study's tables plus the paper layouts that apply
        datasets = {name: from_dict(DatasetConfig, entry, where=f"datasets.{name}")
                    for name, entry in config["datasets"].items()}
        for name, dataset in datasets.items():
            # The hold-out runs after an adapter (sslam manifest); `sslam synth` writes its sets without one.
            if dataset.holdout and dataset.adapter == SYNTHETIC_ADAPTER:
                raise ConfigError(f"datasets.{name}.holdout: the synthetic corpus has no hold-out; set it to 0")
        for name, entry in section(config, "evaluation.benchmarks").items():
            from_dict(BenchmarkConfig, entry, where=f"evaluation.benchmarks.{name}")
        for stage in (1, 2):
            train_config_for_stage(config, stage)
        base = section(config, "objective")
        variant_config(None, base)      # what Stage 1 builds (a key that moved elsewhere is named as such)
        for name in self.stage1_variants:
            stage1_variant_config(name, base, config["stage1_variants"][name])
        for variant in self.variants:  # exactly what `sslam pretrain --stage 2 --variant V` builds
            variant_config(variant, base, section(config, f"variants.{variant}"))
        return datasets

    def _check_data_roots(self) -> None:
        """Every dataset read from disk must have its folder; produced folders are exempt."""
        for name in self.used_datasets():
            entry = self.config["datasets"][name]
            if entry["adapter"] in (SYNTHETIC_ADAPTER, POLYPHONY_ADAPTER):
                continue
            if not entry.get("root"):
                raise ConfigError(f"datasets.{name}.root: not set (adapter {entry['adapter']!r} reads a folder)")
            if not Path(entry["root"]).expanduser().is_dir():
                raise ConfigError(f"datasets.{name}.root: folder not found: {entry['root']}")
            audio_dir = entry.get("options", {}).get("audio_dir")
            if audio_dir and not self.audioset.get("download") and not Path(audio_dir).expanduser().is_dir():
                raise ConfigError(f"datasets.{name}.options.audio_dir: folder not found: {audio_dir} "
                                  f"(or set study.audioset.download: true on a networked cluster)")

    # ------------------------------------------------------------------ datasets
    def adapter(self, dataset: str) -> str:
        return self.config["datasets"][dataset]["adapter"]

    def benchmark_datasets(self, benchmark: str) -> tuple[str, str]:
        """(test dataset, training dataset): they differ for the polyphony bins (trained on poly)."""
        entry = section(self.config, f"evaluation.benchmarks.{benchmark}")
        return entry["dataset"], entry.get("train_dataset") or entry["dataset"]

    def polyphony_sources(self, dataset: str) -> list[str]:
        """Datasets whose manifests a polyphony_bins dataset merges (its `sources` are <dataset>.tsv files)."""
        options = self.config["datasets"][dataset].get("options", {})
        return [Path(source).stem for source in options.get("sources", [])]

    def used_datasets(self) -> list[str]:
        names = [self.pretrain_dataset] + [d for b in self.benchmarks for d in self.benchmark_datasets(b)]
        for name in list(names):
            if self.adapter(name) == POLYPHONY_ADAPTER:
                names += self.polyphony_sources(name)
        return list(dict.fromkeys(names))

    def datasets_with(self, *adapters: str, exclude: tuple[str, ...] = ()) -> list[str]:
        return [d for d in self.used_datasets()
                if (not adapters or self.adapter(d) in adapters) and self.adapter(d) not in exclude]

    def synthetic_set(self, dataset: str) -> str:
        return self.config["datasets"][dataset].get("options", {}).get("set", dataset)

    def synthetic_sets(self) -> list[str]:
        return sorted({self.synthetic_set(d) for d in self.datasets_with(SYNTHETIC_ADAPTER)})

    def manifest_path(self, dataset: str) -> str:
        if self.adapter(dataset) == SYNTHETIC_ADAPTER:
            return f"{self.results}/data/synthetic/{self.synthetic_set(dataset)}/manifest.tsv"
        return f"{self.results}/data/{dataset}/manifest.tsv"

    def shard_paths(self, dataset: str) -> list[str]:
        if dataset not in self._shards:  # asked for by every evaluation job of a parse
            self._shards[dataset] = [str(path) for path in
                                     study_shard_paths(self.results, dataset, self.datasets[dataset].shards)]
        return self._shards[dataset]

    def polyphony_root(self) -> str:
        """The folder the workflow fills with the source manifests a polyphony_bins dataset merges."""
        roots = {self.config["datasets"][d].get("root") for d in self.datasets_with(POLYPHONY_ADAPTER)}
        if not roots:
            return f"{self.results}/data/polyphony_sources"
        if len(roots) != 1 or None in roots:
            raise ConfigError(f"datasets using the polyphony_bins adapter need one shared root folder (the workflow "
                              f"fills it with their source manifests), got {sorted(map(str, roots))}")
        return roots.pop()

    def audioset_metadata(self) -> tuple[str, dict[str, str]]:
        """The AudioSet metadata folder and the options locating its class list / ontology, shared by every
        AudioSet dataset (the download manifest covers all of them at once)."""
        names = self.datasets_with("audioset")
        roots = {self.config["datasets"][d]["root"] for d in names}
        if len(roots) > 1:
            raise ConfigError(f"datasets using the audioset adapter must share one metadata root, got {sorted(roots)}")
        options = self.config["datasets"][names[0]].get("options", {})
        return roots.pop(), {key: options[key] for key in ("class_list", "ontology") if key in options}

    # ------------------------------------------------------------------ models
    def descendants(self, stage1_variant: str) -> list[str]:
        """The Stage-2 variants trained from a Stage-1 variant (all of study.variants unless it lists some)."""
        return (self.config.get("stage1_variants") or {})[stage1_variant].get("stage2", self.variants)

    @property
    def stage1_models(self) -> list[str]:
        return [STAGE1] + [f"{STAGE1}{DESCENDS}{name}" for name in self.stage1_variants]

    @property
    def stage2_models(self) -> list[str]:
        return list(self.variants) + [f"{variant}{DESCENDS}{name}" for name in self.stage1_variants
                                      for variant in self.descendants(name)]

    @property
    def pretrained_models(self) -> list[str]:
        """Models trained by this DAG (Stage 1 unless given as a checkpoint, then every Stage-2 variant)."""
        return ([] if self.stage1_checkpoint else self.stage1_models) + self.stage2_models

    @property
    def models(self) -> list[str]:
        """Every model evaluated: the Stage-1 models, the Stage-2 models and the baselines."""
        stage1 = self.stage1_models if self.config["study"].get("evaluate_stage1", True) else []
        return stage1 + self.stage2_models + self.baselines

    @staticmethod
    def lineage(model: str) -> tuple[str, str | None]:
        """`SSLAM@mixed` -> ("SSLAM", "mixed"): the model's own variant and the Stage-1 variant it descends from."""
        parsed = parse_model_id(model)
        return parsed.name, parsed.stage1_variant

    def pretrain_dir(self, model: str) -> str:
        return f"{self.results}/pretrain/{model}"

    def checkpoint(self, model: str) -> str | None:
        """The checkpoint a model is evaluated from; None for a baseline built in the job itself."""
        if model in self.baselines:
            return None
        if model == STAGE1 and self.stage1_checkpoint:
            return self.stage1_checkpoint
        return f"{self.pretrain_dir(model)}/checkpoint.pt"

    def init_of(self, model: str) -> str:
        """The Stage-1 checkpoint a Stage-2 model starts from."""
        _, stage1_variant = self.lineage(model)
        return self.checkpoint(f"{STAGE1}{DESCENDS}{stage1_variant}" if stage1_variant else STAGE1)

    # ------------------------------------------------------------------ evaluation
    def evaluation_jobs(self) -> list[EvaluationJob]:
        return [EvaluationJob(m, b, r, s) for m in self.models for b in self.benchmarks
                for r in self.regimes for s in self.seeds]

    def evaluation_dir(self, model: str, benchmark: str, regime: str, seed: int | str) -> str:
        return f"{self.results}/eval/{model}/{benchmark}/{regime}/seed{seed}"

    def metrics_files(self) -> list[str]:
        return [f"{self.evaluation_dir(j.model, j.benchmark, j.regime, j.seed)}/metrics.json"
                for j in self.evaluation_jobs()]

    def pretraining_metrics(self) -> list[str]:
        return [f"{self.pretrain_dir(model)}/metrics.jsonl" for model in self.pretrained_models]

    # ------------------------------------------------------------------ tables, tracking, resources
    @property
    def tables_dir(self) -> str:
        return f"{self.results}/tables"

    def table_files(self) -> dict[str, str]:
        """Every table file the `tables` rule writes (the study's tables, the paper layouts, significance)."""
        from sslam.tables.aggregate import STUDY_PAGE
        from sslam.tables.render import SIGNIFICANCE_FILES

        files = {f"{spec.name}_{suffix}": f"{self.tables_dir}/{spec.name}.{suffix}"
                 for spec in self._table_specs for suffix in ("md", "csv", "tex")}
        files.update({Path(name).name.replace(".", "_"): f"{self.tables_dir}/{name}" for name in SIGNIFICANCE_FILES})
        files["study_md"] = f"{self.tables_dir}/{STUDY_PAGE}"
        # every Markdown page has an HTML twin (sslam.tables.html): what the report shows inline
        files.update({key[:-len("_md")] + "_html": str(Path(path).with_suffix(".html"))
                      for key, path in list(files.items()) if key.endswith("_md")})
        return files

    def figure_files(self) -> dict[str, str]:
        figures = {f"{spec.name}_figure": f"{self.tables_dir}/{spec.name}_polyphony.png"
                   for spec in self._table_specs if spec.kind == "polyphony_bins"}
        figures["pretrain_loss"] = f"{self.tables_dir}/pretrain_loss.png"
        if self.polyphony_segments():
            figures["audioset_polyphony"] = f"{self.tables_dir}/audioset_polyphony.png"
        return figures

    def polyphony_segments(self) -> list[str]:
        """Figure 3 (App. B.1) needs the AudioSet ontology and segment CSVs: run it when the study names them."""
        metadata = self.audioset.get("metadata")
        return [str(Path(metadata) / name) for name in self.audioset.get("polyphony_segments", [])] if metadata else []

    @property
    def tracking_file(self) -> str:
        return f"{self.results}/mlflow/tracking.json"

    def tracking_uri(self) -> str:
        """The configured URI, else a SQLite store beside tracking.json (relative: the checkout may move)."""
        return section(self.config, "tracking.uri", None) or "sqlite:///mlflow.db"

    def resources(self, group: str) -> dict[str, int]:
        """Portable resources of a job group from study.resources.<group> (threads, mem_mb, runtime, gpu)."""
        return {**DEFAULT_RESOURCES, **section(self.config, f"study.resources.{group}")}

    def settings(self, *wheres: str) -> str:
        """The config sections a job reads, as a canonical string: editing them re-runs just those jobs."""
        return json.dumps({where: section(self.config, where) for where in wheres}, sort_keys=True, default=str)

    def write_config(self, path: str | Path) -> None:
        """The effective config (with any --config overrides), rewritten only when its content changed so
        that its modification time stays put."""
        text = yaml.safe_dump(dict(self.config), sort_keys=False)
        path = Path(path)
        if not (path.is_file() and path.read_text() == text):
            atomic_write_text(path, text)

    # ------------------------------------------------------------------ what each job reads and runs
    def manifest_inputs(self, dataset: str) -> dict[str, Any]:
        """AudioSet manifests are availability scans: they wait for the download manifest (and the download
        itself when enabled). A polyphony_bins dataset waits for its sources' manifests."""
        inputs: dict[str, Any] = {}
        if self.adapter(dataset) == "audioset":
            inputs["download_manifest"] = f"{self.results}/data/audioset_download/manifest.tsv"
            if self.audioset.get("download"):
                inputs["downloaded"] = f"{self.results}/data/audioset_download/download.done"
        if self.adapter(dataset) == POLYPHONY_ADAPTER:
            inputs["sources"] = [f"{self.polyphony_root()}/{source}.tsv" for source in self.polyphony_sources(dataset)]
        return inputs

    def pretrain_inputs(self, model: str) -> dict[str, Any]:
        inputs: dict[str, Any] = {"shards": self.shard_paths(self.pretrain_dataset)}
        if self.lineage(model)[0] != STAGE1:
            inputs["init"] = self.init_of(model)
        return inputs

    def pretrain_arguments(self, model: str) -> str:
        own, stage1_variant = self.lineage(model)
        if own == STAGE1:
            return "--stage 1" + (f" --variant {stage1_variant}" if stage1_variant else "")
        return f"--stage 2 --variant {own}"

    def pretrain_settings(self, model: str) -> str:
        own, stage1_variant = self.lineage(model)
        sections = ["model", "objective", f"datasets.{self.pretrain_dataset}"]
        if own == STAGE1:
            sections += ["pretrain.stage1"] + ([f"stage1_variants.{stage1_variant}"] if stage1_variant else [])
        else:
            sections += ["pretrain.stage2", f"variants.{own}"]
        return self.settings(*sections)

    def evaluation_inputs(self, model: str, benchmark: str) -> dict[str, Any]:
        test, train = self.benchmark_datasets(benchmark)
        inputs: dict[str, Any] = {"shards": self.shard_paths(test)}
        if self.checkpoint(model) is not None:
            inputs["checkpoint"] = self.checkpoint(model)
        if train != test:
            inputs["train_shards"] = self.shard_paths(train)
        return inputs

    def evaluation_arguments(self, model: str, benchmark: str) -> str:
        """--checkpoint (or `random` for the baseline), and --train-shards where the benchmark trains on
        another dataset (the polyphony bins train on poly)."""
        test, train = self.benchmark_datasets(benchmark)
        checkpoint = self.checkpoint(model) or RANDOM_BASELINE
        # Pasted into a shell command: every path quoted (shlex.quote leaves plain paths, hence old records, as they are).
        arguments = f"--checkpoint {shlex.quote(checkpoint)} --shards {' '.join(map(shlex.quote, self.shard_paths(test)))}"
        if train != test:
            arguments += f" --train-shards {' '.join(map(shlex.quote, self.shard_paths(train)))}"
        return arguments

    def evaluation_settings(self, benchmark: str) -> str:
        test, train = self.benchmark_datasets(benchmark)
        return self.settings(f"evaluation.benchmarks.{benchmark}", f"datasets.{test}", f"datasets.{train}",
                             "model.encoder")

    # ------------------------------------------------------------------ code fingerprints
    def fingerprint(self, job: str, record: str) -> str:
        """The fingerprint a job is scheduled with (sslam.fingerprints.Scheduler), from its code record `record`."""
        scheduled = self.scheduler.scheduled(record, JOB_MODULES[job])
        if scheduled.changed and record not in self.changed_code:
            # `snakemake -n` thereby says, per re-scheduled job, which of the functions it ran changed.
            self.changed_code[record] = scheduled.changed
            shown = ", ".join(scheduled.changed[:6]) + (f" (+{len(scheduled.changed) - 6} more)"
                                                         if len(scheduled.changed) > 6 else "")
            print(f"code changed for {record.removesuffix('.code.json')}: {shown}", file=sys.stderr)
        return scheduled.value


# Snakemake reads braces in an output path as wildcards, and a rule's log and shell lines end at a line break:
# these are the characters a path the rules write under cannot hold (spaces, quotes, non-ASCII letters can).
_UNWORKABLE_PATH_CHARACTERS = {"{": "a brace", "}": "a brace", "\n": "a line break", "\r": "a line break",
                               "\0": "a NUL byte"}


def _check_path_for_rules(key: str, path: str) -> None:
    """ConfigError (one line) for a path the workflow cannot write under, before any job starts."""
    for character, what in _UNWORKABLE_PATH_CHARACTERS.items():
        if character in path:
            raise ConfigError(f"{key}: {path!r} contains {what}, which Snakemake cannot take in an output path; "
                              "choose another folder name")


def one_of(names: list[str]) -> str:
    """A wildcard constraint matching exactly these names (and nothing when there are none)."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


def record_path(output: str) -> str:
    """The code record of a job sits beside its primary output: X.ext -> X.code.json."""
    return re.sub(r"\.[A-Za-z0-9]+$", "", output) + ".code.json"


# ------------------------------------------------------------------------------ `sslam why`


