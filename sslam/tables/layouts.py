"""Which tables the study prints and how each one is laid out (YAML `study.tables`).

A table is a grid of cells "mean ± std over seeds": one block per regime (the paper's "Linear
Evaluation" / "Fine-tuning" halves), one row per model (a Stage-2 variant, or `stage1` for the
Stage-1 baseline), and one column per benchmark (Tables 1, 2 and the ablations) or per degree-of-
polyphony bin of a single benchmark (Table 3). The paper's published numbers for the same cells
are added as rows labelled "(paper)" when `paper_numbers` is on and the table names a paper table.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from sslam.errors import ConfigError
from sslam.tables.paper_numbers import PAPER_TABLES, paper_cells

STAGE1_MODEL = "stage1"
MODEL_LABELS = {STAGE1_MODEL: "Stage 1 (EAT-style baseline)"}
REGIME_LABELS = {"linear": "Linear evaluation", "finetune": "Fine-tuning"}
PAPER_SUFFIX = " (paper)"
PAPER_RUNS = 3       # paper Appendix F: its ± values are over three independent runs
OVERALL = "overall"  # the `column` of a run's headline number; per-bin numbers use the bin label


@dataclass
class TableSpec:
    """One output table; `name` becomes the file stem (table2.md, table2.csv, table2.tex)."""

    name: str
    title: str = ""
    kind: Literal["benchmarks", "polyphony_bins"] = "benchmarks"
    benchmarks: list[str] = field(default_factory=list)   # columns; polyphony_bins: exactly one benchmark
    regimes: list[str] = field(default_factory=lambda: ["linear", "finetune"])
    models: list[str] | None = None                        # rows in order; None = every model with results
    paper: str | None = None                               # key of sslam.tables.paper_numbers.PAPER_TABLES
    paper_rows: dict[str, str] = field(default_factory=dict)  # our model -> the paper's row label
    decimals: int | None = None                            # None = TablesConfig.decimals

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ConfigError(f"study.tables: table name {self.name!r} must be usable as a file name")
        if not self.benchmarks:
            raise ConfigError(f"study.tables.{self.name}: benchmarks must list at least one benchmark")
        if self.kind == "polyphony_bins" and len(self.benchmarks) != 1:
            raise ConfigError(f"study.tables.{self.name}: a polyphony_bins table reads exactly one benchmark")
        unknown = [r for r in self.regimes if r not in REGIME_LABELS]
        if unknown:
            raise ConfigError(f"study.tables.{self.name}: unknown regime(s) {unknown}; known: {list(REGIME_LABELS)}")
        if self.paper is not None and self.paper not in PAPER_TABLES:
            raise ConfigError(f"study.tables.{self.name}: paper table {self.paper!r} unknown; "
                              f"known: {sorted(PAPER_TABLES)}")


@dataclass
class TablesConfig:
    paper_numbers: bool = False      # print the paper's numbers beside ours (only meaningful on the real data)
    percent: bool = True             # metrics.json holds fractions; the paper prints percent
    decimals: int = 1
    specs: list[TableSpec] = field(default_factory=list)


def natural_key(label: str) -> tuple:
    """'{2,3}' < '{4,5}' < '{10,11}' < '{14+}' (bins sort by their first number, not as strings)."""
    match = re.search(r"\d+", str(label))
    return (0, int(match.group()), str(label)) if match else (1, 0, str(label))


def model_order(models: list[str], variants: list[str]) -> list[str]:
    """Stage 1 first, then the study's variants in config order, then anything else."""
    ordered = [m for m in [STAGE1_MODEL, *variants] if m in models]
    return ordered + sorted(set(models) - set(ordered))


def format_cell(mean: float, std: float, count: int, decimals: int) -> str:
    if np.isnan(mean):
        return "–"
    if count > 1 and not np.isnan(std):
        return f"{mean:.{decimals}f} ± {std:.{decimals}f}"
    return f"{mean:.{decimals}f}"


def build_table(spec: TableSpec, summary: pd.DataFrame, variants: list[str], config: TablesConfig) -> pd.DataFrame:
    """Long table of the cells of one TableSpec.

    `summary` has one row per (benchmark, regime, model, column) with mean/std/n over seeds (see
    aggregate.summarise). Returns columns: block, model, source ('ours'|'paper'), column, mean, std, n.
    """
    rows = []
    for regime in spec.regimes:
        if spec.kind == "polyphony_bins":
            ours = summary[(summary.benchmark == spec.benchmarks[0]) & (summary.regime == regime)
                           & (summary.column != OVERALL)]
        else:
            ours = summary[summary.benchmark.isin(spec.benchmarks) & (summary.regime == regime)
                           & (summary.column == OVERALL)]
            ours = ours.assign(column=ours.benchmark)
        models = spec.models if spec.models is not None else model_order(sorted(ours.model.unique()), variants)
        for model in models:
            for record in ours[ours.model == model].itertuples():
                rows.append(dict(block=regime, model=model, source="ours", column=record.column,
                                 mean=record.mean, std=record.std, n=record.n))
            if config.paper_numbers and spec.paper:
                published, published_std = paper_cells(spec.paper, regime)
                label = spec.paper_rows.get(model, model)
                for column, value in published.get(label, {}).items():
                    std = published_std.get(label, {}).get(column, np.nan)
                    rows.append(dict(block=regime, model=model, source="paper", column=column,
                                     mean=value, std=std, n=1 if np.isnan(std) else PAPER_RUNS))
    return pd.DataFrame(rows, columns=["block", "model", "source", "column", "mean", "std", "n"])


def wide_table(spec: TableSpec, cells: pd.DataFrame, config: TablesConfig) -> pd.DataFrame:
    """The printable grid: index (block label, row label), columns in spec/bin order, 'mean ± std' strings."""
    if cells.empty:
        return pd.DataFrame()
    if spec.kind == "polyphony_bins":
        columns = sorted(cells.column.unique(), key=natural_key)
    else:
        columns = [b for b in spec.benchmarks if b in set(cells.column)]
    decimals = config.decimals if spec.decimals is None else spec.decimals
    printable = []
    for (block, model, source), group in cells.groupby(["block", "model", "source"], sort=False):
        label = MODEL_LABELS.get(model, model)
        if source == "paper":
            label = spec.paper_rows.get(model, label) + PAPER_SUFFIX
        row = {"block": REGIME_LABELS[block], "model": label}
        for record in group.itertuples():
            row[record.column] = format_cell(record.mean, record.std, record.n, decimals)
        printable.append(row)
    table = pd.DataFrame(printable).set_index(["block", "model"])
    return table.reindex(columns=columns).fillna("–")
