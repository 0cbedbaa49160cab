"""Which tables the study prints and what goes in their cells (YAML `study.tables`).

A table is a grid of cells "mean ± std over seeds": one block per regime (the paper's "Linear
Evaluation" / "Fine-tuning" halves), one row per model (see sslam.tables.models for the ids), and one
column per benchmark (Tables 1, 2, 4, 9, 12 and the ablations) or per degree-of-polyphony bin of a
single benchmark (Table 3). The study's baselines (`study.baselines`, default `[random]`) get a row in
every table. The paper's published numbers for the same cells are added as rows labelled "(paper)"
when `paper_numbers` is on and the table names a paper table.

Every table has a paper-protocol twin `<name>_paper_protocol` (`paper_protocol: true`, the default): the same
rows and columns, but each run's `best_on_eval` selection, the model chosen on the TEST set as every official
fine-tuning run chooses it, next to the paper's numbers and the difference (ours − paper) per cell. The study's
own tables print each run's headline selection (best_on_valid where a benchmark has validation rows, else last).

A spec may start from a paper layout (`layout: table4|table9|table12|mixit`, PAPER_LAYOUTS): its keys
fill whatever the spec leaves out. With `paper_layouts: true` (the default) those layouts are also
added on their own whenever the study has their models and one of their benchmarks.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from sslam.runtime.configuration import check_ranges, from_dict, section
from sslam.runtime.errors import ConfigError
from sslam.tables.models import DEFAULT_BASELINES, STAGE1, default_label, is_valid_model_id, model_order, stage1_id
from sslam.tables.paper_numbers import PAPER_TABLES, SPASS, paper_cells
from sslam.tables.significance import OVERALL, SignificanceConfig

REGIME_LABELS = {"linear": "Linear evaluation", "finetune": "Fine-tuning"}
METRIC_LABELS = {"map": "mAP", "accuracy": "accuracy"}
PAPER_SUFFIX = " (paper)"
PAPER_RUNS = 3       # paper Appendix F: its ± values are over three independent runs
HEADLINE = "headline"                   # a table of each run's headline value (metrics.json `value`)
PAPER_PROTOCOL = "best_on_eval"         # metrics.json `selections` key of the official protocol (selected on test)
PROTOCOL_SUFFIX = "_paper_protocol"
DIFFERENCE_SUFFIX = " − paper"


@dataclass
class TableSpec:
    """One output table; `name` becomes the file stem (table2.md, table2.csv, table2.tex)."""

    name: str
    title: str = ""
    kind: Literal["benchmarks", "polyphony_bins"] = "benchmarks"
    layout: str | None = None                              # a PAPER_LAYOUTS preset the spec started from
    benchmarks: list[str] = field(default_factory=list)   # columns; polyphony_bins: exactly one benchmark
    regimes: list[str] = field(default_factory=lambda: ["linear", "finetune"])
    models: list[str] | None = None                        # rows in order; None = every model with results
    labels: dict[str, str] = field(default_factory=dict)  # model id -> row label
    baselines: bool = True                                 # add the study's baseline rows (random init)
    markers: bool = True                                   # mark cells that differ significantly from Stage 1
    paper: str | list[str] | None = None                   # key(s) of paper_numbers.PAPER_TABLES, first wins
    paper_rows: dict[str, str] = field(default_factory=dict)  # our model id -> the paper's row label
    decimals: int | None = None                            # None = TablesConfig.decimals
    # Which number of each run the cells hold: its headline, or (paper-protocol twins) a metrics.json selection.
    selection: Literal["headline", "best_on_eval"] = HEADLINE

    def __post_init__(self) -> None:
        where = f"study.tables.{self.name}"
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ConfigError(f"study.tables: table name {self.name!r} must be usable as a file name")
        if not self.benchmarks:
            raise ConfigError(f"{where}: benchmarks must list at least one benchmark")
        if self.kind == "polyphony_bins" and len(self.benchmarks) != 1:
            raise ConfigError(f"{where}: a polyphony_bins table reads exactly one benchmark")
        unknown = [r for r in self.regimes if r not in REGIME_LABELS]
        if unknown or not self.regimes:
            raise ConfigError(f"{where}: unknown regime(s) {unknown or '[]'}; known: {list(REGIME_LABELS)}")
        for paper in self.paper_tables:
            if paper not in PAPER_TABLES:
                raise ConfigError(f"{where}.paper: paper table {paper!r} unknown; known: {sorted(PAPER_TABLES)}")
        bad = [m for m in [*(self.models or []), *self.labels, *self.paper_rows] if not is_valid_model_id(m)]
        if bad:
            raise ConfigError(f"{where}: {bad[0]!r} is not a model id (NAME or NAME@STAGE1_VARIANT)")
        if self.decimals is not None and not 0 <= self.decimals <= 6:
            raise ConfigError(f"{where}.decimals must be in [0, 6], got {self.decimals}")

    @property
    def paper_tables(self) -> list[str]:
        if self.paper is None:
            return []
        return [self.paper] if isinstance(self.paper, str) else list(self.paper)


@dataclass
class TablesConfig:
    """YAML `study.tables`."""

    paper_numbers: bool = False      # print the paper's numbers beside ours (only meaningful on the real data)
    percent: bool = True             # metrics.json holds fractions; the paper prints percent
    decimals: int = 1
    paper_layouts: bool = True       # add the paper's Table 4/9/12 and MixIT layouts when the study has their models
    paper_protocol: bool = True      # add a `<name>_paper_protocol` twin of every table (best_on_eval vs the paper)
    labels: dict[str, str] = field(default_factory=dict)  # model id -> row label, for every table
    significance: SignificanceConfig = field(default_factory=SignificanceConfig)
    specs: list[TableSpec] = field(default_factory=list)
    # A polyphony bin with fewer test clips than this is marked (header and note): one clip whose classes a
    # model ranks first scores 100.0 for every model, which says nothing about the models.
    min_bin_clips: int = 10
    few_clips_marker: str = "§"

    def __post_init__(self) -> None:
        check_ranges(self, min_bin_clips=">= 1")
        if not 0 <= self.decimals <= 6:
            raise ConfigError(f"study.tables.decimals must be in [0, 6], got {self.decimals}")
        names = [spec.name for spec in self.specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"study.tables.specs: table names must be unique, got {names}")


@dataclass(frozen=True)
class StudyRows:
    """The parts of the study (sslam.study.dag.StudyRows) that decide a table's rows and their order."""

    variants: list[str]
    benchmarks: list[str]
    stage1_variants: list[str]
    baselines: list[str]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> StudyRows:
        study = section(config, "study")
        return cls(list(study.get("variants", [])), list(study.get("benchmarks", [])),
                   list(study.get("stage1_variants", [])), list(study.get("baselines", DEFAULT_BASELINES)))

    def order(self, models: list[str]) -> list[str]:
        return model_order(models, self.variants, self.stage1_variants, self.baselines)


# --- the paper's layouts ------------------------------------------------------------------------------

PAPER_LAYOUTS: dict[str, dict[str, Any]] = {
    "table4": dict(
        title="Partial vs full mixing in Stage 1 and Stage 2, fine-tuning (paper Table 4 layout)",
        benchmarks=["as20k"], regimes=["finetune"], paper="table4",
        paper_rows={STAGE1: "Stage 1 with unmixed audio", "MB-UA": "Stage 2 with unmixed audio",
                    "MB-PMA": "Stage 2 with partial mixed audio"}),
    "table9": dict(
        title="MB-PMA vs MB-UA-PMA on monophonic sets and AS-20K, fine-tuning (paper Table 9 layout)",
        benchmarks=["esc50", "ks2", "as20k"], regimes=["finetune"], models=["MB-PMA", "MB-UA-PMA"], paper="table9"),
    "table12": dict(
        title="SPASS, mean ± std over seeds (paper Table 12 layout)",
        benchmarks=SPASS, regimes=["linear", "finetune"], models=["MB-UA", "SSLAM"], paper="table12", decimals=2,
        labels={"MB-UA": "MB-UA (Baseline)"}),
    "mixit": dict(
        title="Concept separation with MixIT vs SSLAM, fine-tuning (paper Appendix C)",
        benchmarks=["as20k"], regimes=["finetune"], models=["SSLAM", "MixIT"], paper="appendix_c"),
}


def _table4_rows(study: StudyRows) -> tuple[list[str], dict[str, str]]:
    """Stage 1 unmixed, each Stage-1 variant, then the Stage-2 variants from each Stage 1, with Table 4's wording."""
    models, labels = [STAGE1], {STAGE1: "Stage 1 with unmixed audio"}
    for name in study.stage1_variants:
        models.append(stage1_id(name))
        labels[stage1_id(name)] = f"Stage 1 with {name}"
    for variant in study.variants:
        models.append(variant)
        labels[variant] = f"Stage 2: {variant}"
    for name in study.stage1_variants:
        for variant in study.variants:
            models.append(f"{variant}@{name}")
            labels[f"{variant}@{name}"] = f"Stage 2: {variant}, from Stage 1 with {name}"
    return models, labels


def _preset(layout: str, study: StudyRows) -> dict[str, Any]:
    if layout not in PAPER_LAYOUTS:
        raise ConfigError(f"study.tables.specs: layout {layout!r} unknown; known: {sorted(PAPER_LAYOUTS)}")
    preset = dict(PAPER_LAYOUTS[layout], layout=layout)
    if layout == "table4":
        preset["models"], preset["labels"] = _table4_rows(study)
    return preset


def _wanted(layout: str, study: StudyRows) -> bool:
    """Whether a paper layout applies to the study on its own (its models and one of its benchmarks)."""
    preset = PAPER_LAYOUTS[layout]
    if not set(preset["benchmarks"]) & set(study.benchmarks):
        return False
    if layout == "table4":
        return bool(study.stage1_variants)
    return set(preset["models"]) <= set(study.variants)


def _merge(preset: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """The spec's keys win; its `labels` and `paper_rows` extend the preset's instead of replacing them."""
    merged = {**preset, **spec}
    for key in ("labels", "paper_rows"):
        if isinstance(spec.get(key), dict):
            merged[key] = {**preset.get(key, {}), **spec[key]}
    return merged


def table_specs(config: dict[str, Any]) -> list[TableSpec]:
    """Every table the study prints: `study.tables.specs` (layouts merged) plus the paper layouts that apply.

    The workflow calls this at parse time to declare the output files, so it reads only the config."""
    raw = section(config, "study.tables", {})
    raw = dict(raw) if isinstance(raw, dict) else {}
    study = StudyRows.from_config(config)
    specs = []
    for i, entry in enumerate(raw.get("specs") or []):
        if not isinstance(entry, dict):
            raise ConfigError(f"study.tables.specs[{i}]: expected a mapping, got {entry!r}")
        if entry.get("layout"):
            merged = _merge(_preset(entry["layout"], study), entry)
            if "benchmarks" not in entry and study.benchmarks:   # the layout's columns this study has
                merged["benchmarks"] = [b for b in merged["benchmarks"] if b in study.benchmarks]
                if not merged["benchmarks"]:
                    raise ConfigError(f"study.tables.specs[{i}] ({entry.get('name')}): none of layout "
                                      f"{entry['layout']}'s benchmarks {PAPER_LAYOUTS[entry['layout']]['benchmarks']} "
                                      f"is in study.benchmarks; list the columns under `benchmarks:`")
            entry = merged
        specs.append(entry)
    if raw.get("paper_layouts", True):
        taken = {spec.get("name") for spec in specs} | {spec.get("layout") for spec in specs}
        for layout in PAPER_LAYOUTS:
            if layout not in taken and _wanted(layout, study):
                preset = _preset(layout, study)
                preset["benchmarks"] = [b for b in preset["benchmarks"] if b in study.benchmarks]
                specs.append(dict(preset, name=layout))
    if raw.get("paper_protocol", True):
        specs += [protocol_twin(spec) for spec in specs]
    return from_dict(TablesConfig, {**raw, "specs": specs}, where="study.tables").specs


def protocol_twin(spec: dict[str, Any]) -> dict[str, Any]:
    """The paper-protocol version of a table spec: its runs' best_on_eval cells, the paper's rows and the
    differences; no Stage-1 markers (the cells were chosen on the test set)."""
    title = spec.get("title") or spec["name"]
    return dict(spec, name=spec["name"] + PROTOCOL_SUFFIX, selection=PAPER_PROTOCOL, markers=False,
                title=f"{title} — paper protocol: selected on the test set (best_on_eval)")


def tables_config(config: dict[str, Any]) -> TablesConfig:
    raw = section(config, "study.tables", {})
    raw = dict(raw) if isinstance(raw, dict) else {}
    return from_dict(TablesConfig, {**raw, "specs": []}, where="study.tables")


# --- cells --------------------------------------------------------------------------------------------

CELL_COLUMNS = ["block", "model", "label", "source", "column", "benchmark", "key", "mean", "std", "n", "seeds", "clips",
                "classes", "left_out"]


def natural_key(label: str) -> tuple:
    """'{2,3}' < '{4,5}' < '{10,11}' < '{14+}' (bins sort by their first number, not as strings)."""
    match = re.search(r"\d+", str(label))
    return (0, int(match.group()), str(label)) if match else (1, 0, str(label))


def row_label(model: str, spec: TableSpec, config: TablesConfig) -> str:
    return spec.labels.get(model) or config.labels.get(model) or default_label(model)


def table_models(spec: TableSpec, present: list[str], study: StudyRows) -> list[str]:
    """The rows of one block: the spec's models (or every model with results, in study order), with the
    study's baselines first unless the spec lists them itself or turns them off."""
    models = list(spec.models) if spec.models is not None else study.order(present)
    if spec.baselines:
        models = [b for b in study.baselines if b not in models] + models
    elif spec.models is None:
        models = [m for m in models if m not in study.baselines]
    return [m for m in models if m in set(present)]


def build_table(spec: TableSpec, summary: pd.DataFrame, study: StudyRows, config: TablesConfig) -> pd.DataFrame:
    """Long table of the cells of one TableSpec (columns CELL_COLUMNS), each model's paper row after its own.

    `summary` has one row per (benchmark, regime, model, column) with mean/std/n over seeds (see
    aggregate.summarise). `column` is what the table prints as its column (a benchmark, or a bin label);
    (benchmark, key) is what the bootstrap compares (key 'overall' or the bin label).
    """
    rows = []
    for regime in spec.regimes:
        if spec.kind == "polyphony_bins":
            ours = summary[(summary.benchmark == spec.benchmarks[0]) & (summary.regime == regime)
                           & (summary.column != OVERALL)]
            ours = ours.assign(key=ours.column)
        else:
            ours = summary[summary.benchmark.isin(spec.benchmarks) & (summary.regime == regime)
                           & (summary.column == OVERALL)]
            ours = ours.assign(key=OVERALL, column=ours.benchmark)
        present = sorted(ours.model.unique())
        models = table_models(spec, present, study)
        if config.paper_numbers and spec.models is not None:  # the paper's row even before ours exist
            models = table_models(spec, sorted(set(present) | set(spec.models)), study)
        for model in models:
            label = row_label(model, spec, config)
            for record in ours[ours.model == model].itertuples():
                rows.append(dict(block=regime, model=model, label=label, source="ours", column=record.column,
                                 benchmark=record.benchmark, key=record.key, mean=record.mean, std=record.std,
                                 n=record.n, seeds=record.seeds, clips=record.clips, classes=record.classes,
                                 left_out=record.left_out))
            if config.paper_numbers:
                rows += _paper_rows(spec, regime, model)
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


def with_differences(cells: pd.DataFrame) -> pd.DataFrame:
    """After each model's paper row, a row of ours − paper for every column both have (paper-protocol tables)."""
    rows = []
    for (block, model), group in cells.groupby(["block", "model"], sort=False):
        rows += group.to_dict("records")
        ours = group[group.source == "ours"].set_index("column")
        paper = group[group.source == "paper"].set_index("column")
        for column in [c for c in ours.index if c in paper.index]:
            record = ours.loc[column]
            rows.append(dict(record, source="difference", label=record["label"] + DIFFERENCE_SUFFIX, column=column,
                             mean=record["mean"] - paper.loc[column, "mean"], std=np.nan, n=1, seeds="",
                             clips=np.nan, classes=np.nan, left_out=np.nan))
    return pd.DataFrame(rows, columns=cells.columns)


def _paper_rows(spec: TableSpec, regime: str, model: str) -> list[dict[str, Any]]:
    """The published cells of one model from the first of the spec's paper tables that has its row."""
    label = spec.paper_rows.get(model, model)
    for paper in spec.paper_tables:
        published, published_std = paper_cells(paper, regime)
        if label not in published:
            continue
        rows = []
        for column, value in published[label].items():
            std = published_std.get(label, {}).get(column, np.nan)
            bins = spec.kind == "polyphony_bins"
            rows.append(dict(block=regime, model=model, label=label + PAPER_SUFFIX, source="paper", column=column,
                             benchmark=spec.benchmarks[0] if bins else column, key=column if bins else OVERALL,
                             mean=value, std=std, n=1 if np.isnan(std) else PAPER_RUNS, seeds="", clips=np.nan,
                             classes=np.nan, left_out=np.nan))
        return rows
    return []


def table_columns(spec: TableSpec, cells: pd.DataFrame) -> list[str]:
    ours = cells[cells.source == "ours"]
    present = set(ours.column) or set(cells.column)
    if spec.kind == "polyphony_bins":
        return sorted(present, key=natural_key)
    return [b for b in spec.benchmarks if b in present]


def format_cell(mean: float, std: float, count: int, decimals: int) -> str:
    if np.isnan(mean):
        return "–"
    if count > 1 and not np.isnan(std):
        return f"{mean:.{decimals}f} ± {std:.{decimals}f}"
    return f"{mean:.{decimals}f}"
