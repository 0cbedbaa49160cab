"""From cells to files: bold and significance markers, then Markdown, CSV and LaTeX; the "Δ vs Stage 1" tables.

Bold marks, in every column of a block, the best of our rows and every row not significantly below
it (the 95 % interval of row − best from the paired bootstrap reaches 0). The marker (default †)
marks a cell whose difference from the reference model (Stage 1) is significant. Paper rows are
printed as published: never bold, never marked.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from sslam.runtime.io import atomic_write_text
from sslam.tables.layouts import (DIFFERENCE_SUFFIX, HEADLINE, METRIC_LABELS, PAPER_SUFFIX, REGIME_LABELS, TablesConfig,
                                  TableSpec, format_cell, row_label, table_columns)
from sslam.tables.paper_numbers import PAPER_TABLES
from sslam.tables.significance import Bootstrap, Delta

LATEX_MARKERS = {"†": r"\dagger", "‡": r"\ddagger", "*": "*", "§": r"\S"}
_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def metric_label(metric: str, percent: bool) -> str:
    return f"{METRIC_LABELS.get(metric, metric)} ({'%' if percent else 'fraction'})"


def latex_escape(text: str) -> str:
    text = "".join(_LATEX_SPECIALS.get(character, character) for character in str(text))
    return text.replace("±", r"$\pm$").replace("–", "--").replace("−", "$-$").replace("Δ", r"$\Delta$")


class Decorator:
    """Adds to a table's cells: bold, marker, and the difference from the reference with its interval."""

    def __init__(self, spec: TableSpec, config: TablesConfig, bootstrap: Bootstrap) -> None:
        self.spec, self.config, self.bootstrap = spec, config, bootstrap
        self.untested: list[str] = []   # "label (column, regime)" of cells bold could not be decided for

    def decorate(self, cells: pd.DataFrame) -> pd.DataFrame:
        cells = cells.assign(bold=False, marker="", delta=np.nan, low=np.nan, high=np.nan, significant=pd.NA)
        cells["significant"] = cells["significant"].astype("boolean")
        ours = cells.source == "ours"
        testing = self.config.significance.enabled
        reference = self.config.significance.reference
        for (block, column), group in cells[ours].groupby(["block", "column"], sort=False):
            best = group.loc[group["mean"].idxmax()]
            has_reference = reference in set(group.model)
            for index, cell in group.iterrows():
                if cell["mean"] == best["mean"]:
                    cells.loc[index, "bold"] = True
                elif testing:
                    versus_best = self.bootstrap.compare(cell.benchmark, block, cell.key, cell.model, best.model)
                    if versus_best is None:
                        self.untested.append(f"{cell.label} ({column}, {REGIME_LABELS[block].lower()})")
                    else:
                        cells.loc[index, "bold"] = versus_best.high >= 0
                if not testing or cell.model == reference:
                    continue
                versus_reference = self.bootstrap.compare(cell.benchmark, block, cell.key, cell.model, reference)
                if versus_reference is None:
                    continue
                cells.loc[index, ["delta", "low", "high"]] = [versus_reference.delta, versus_reference.low,
                                                              versus_reference.high]
                cells.loc[index, "significant"] = versus_reference.significant
                if self.spec.markers and has_reference and versus_reference.significant:
                    cells.loc[index, "marker"] = self.config.significance.marker
        return cells


# --- one table ---------------------------------------------------------------------------------------


def _typical(counts: pd.Series) -> int | None:
    counts = counts.dropna().astype(int)
    return Counter(counts.tolist()).most_common(1)[0][0] if len(counts) else None


def _metrics(cells: pd.DataFrame, summary_metrics: dict[str, str]) -> dict[str, str]:
    return {column: summary_metrics[benchmark] for column, benchmark in
            cells[["column", "benchmark"]].drop_duplicates().itertuples(index=False) if benchmark in summary_metrics}


def _clips_text(values: pd.Series) -> str:
    values = values.dropna().astype(int)
    if values.empty:
        return ""
    low, high = values.min(), values.max()
    return (f"{low} clip{'s' if low != 1 else ''}") if low == high else f"{low}–{high} clips"


class Layout:
    """The printable grid of one table (one format-neutral description, rendered per format)."""

    def __init__(self, spec: TableSpec, cells: pd.DataFrame, config: TablesConfig, metrics: dict[str, str]) -> None:
        self.spec, self.cells, self.config = spec, cells, config
        self.decimals = config.decimals if spec.decimals is None else spec.decimals
        self.columns = table_columns(spec, cells) if not cells.empty else []
        ours = cells[cells.source == "ours"]
        self.seeds = _typical(ours.n)
        found = _metrics(ours, metrics)
        self.column_metrics = {column: found[column] for column in self.columns if column in found}
        used = sorted(set(self.column_metrics.values()))
        self.metric = used[0] if len(used) == 1 else None
        self.clips = {column: _clips_text(ours[ours.column == column].clips) for column in self.columns}
        # Bins scored on fewer clips than study.tables.min_bin_clips: marked, because their cells are noise.
        fewest = {column: ours[ours.column == column].clips.dropna().min() for column in self.columns}
        self.few_clips = [column for column in self.columns if spec.kind == "polyphony_bins"
                          and not pd.isna(fewest[column]) and fewest[column] < config.min_bin_clips]

    @property
    def title(self) -> str:
        title = self.spec.title or self.spec.name
        return f"{title} — {metric_label(self.metric, self.config.percent)}" if self.metric else title

    def header(self, column: str, latex: bool = False) -> str:
        if self.spec.kind == "polyphony_bins":
            text = f"{column} ({self.clips[column]})" if self.clips.get(column) else column
            if latex:
                text = latex_escape(text)
            if column in self.few_clips:
                marker = self.config.few_clips_marker
                text += rf"$^{{{LATEX_MARKERS.get(marker, latex_escape(marker))}}}$" if latex else f" {marker}"
            return text
        if self.metric is None and column in self.column_metrics:
            return f"{column} ({METRIC_LABELS.get(self.column_metrics[column], self.column_metrics[column])})"
        return column

    def cell(self, record, latex: bool) -> str:
        if record.source == "difference":
            text = "–" if np.isnan(record.mean) else f"{record.mean:+.{self.decimals}f}"
            return latex_escape(text) if latex else text
        text = format_cell(record.mean, record.std, record.n, self.decimals)
        if record.source == "ours" and self.seeds is not None and record.n != self.seeds:
            text += f" ({int(record.n)} seed{'s' if record.n != 1 else ''})"
        marker = record.marker if isinstance(record.marker, str) else ""
        if latex:
            text = latex_escape(text)
            if record.bold:
                text = rf"\textbf{{{text}}}"
            return text + (rf"$^{{{LATEX_MARKERS.get(marker, latex_escape(marker))}}}$" if marker else "")
        text += marker
        return f"**{text}**" if record.bold else text

    def grid(self, latex: bool) -> pd.DataFrame:
        rows = []
        for (block, model, source), group in self.cells.groupby(["block", "model", "source"], sort=False):
            label = group.label.iloc[0]
            row = {"regime": REGIME_LABELS[block], "model": latex_escape(label) if latex else label}
            for record in group.itertuples():
                row[record.column] = self.cell(record, latex)
            rows.append(row)
        grid = pd.DataFrame(rows).set_index(["regime", "model"]).reindex(columns=self.columns).fillna("–")
        grid.columns = [self.header(c, latex=latex) if self.spec.kind == "polyphony_bins" else
                        latex_escape(self.header(c)) if latex else self.header(c) for c in self.columns]
        return grid

    def coverage_notes(self, ours: pd.DataFrame) -> list[str]:
        """What a number does not cover: classes mAP left out (no test positive: no AP), bins of few clips."""
        notes, left = [], []
        bins = self.spec.kind == "polyphony_bins"
        for column in self.columns:
            name = f"bin {column}" if bins else column
            cells = ours[(ours.column == column) & ours.left_out.notna()]
            if self.column_metrics.get(column) != "map" or cells.empty or not (cells.left_out > 0).any():
                continue
            low, high = int(cells.left_out.min()), int(cells.left_out.max())
            total = cells.classes.dropna()
            missing = f"{low}" if low == high else f"{low}–{high}"
            if total.empty:
                left.append(f"{name}: {missing} class(es) without test positives left out")
            else:
                classes = int(total.max())
                scored = f"{classes - high}" if low == high else f"{classes - high}–{classes - low}"
                left.append(f"{name} over {scored} of {classes} classes ({missing} without test positives)")
        if left:
            notes.append(f"{'mAP per bin' if bins else 'mAP'}: classes without a positive test clip have no AP and are left out: "
                         f"{'; '.join(left)}.")
        if self.few_clips:
            counts = ", ".join(f"{column} ({self.clips[column]})" for column in self.few_clips)
            notes.append(f"{self.config.few_clips_marker}: fewer than {self.config.min_bin_clips} test clips "
                         f"(study.tables.min_bin_clips) in bin{'s' if len(self.few_clips) > 1 else ''} {counts}; their cells say little about the "
                         "models (a single clip scores 100.0 for every model that ranks its classes first).")
        return notes

    def selection_note(self) -> str:
        """Which model of each run the cells hold (sslam.evaluation.selection)."""
        if self.spec.selection == HEADLINE:
            return ("Model selection: each run's headline (its `selection`): the evaluation point with the best "
                    "score on held-out validation rows where the benchmark has them, else the last model.")
        return (f"Model selection: {self.spec.selection}, the evaluation point with the best score ON THE TEST SET, "
                "as every official fine-tuning run selects (valid_subset: eval); it flatters the numbers and is "
                "printed only to compare with the paper's. Rows ending in "
                f"'{DIFFERENCE_SUFFIX.strip()}': our mean minus the published number.")

    def notes(self, bootstrap: Bootstrap, decorator: Decorator) -> list[str]:
        config, significance = self.config, self.config.significance
        ours = self.cells[self.cells.source == "ours"]
        unit = "percent" if config.percent else "fractions"
        notes = [self.selection_note()]
        if self.seeds is not None:
            seeds = sorted({int(s) for text in ours.seeds.dropna() for s in str(text).split()})
            listed = f" (seeds {', '.join(map(str, seeds))})" if seeds else ""
            fewer = "; a cell with another number of seeds says so" if (ours.n != self.seeds).any() else ""
            notes.append(f"Cells: mean ± sample std over {self.seeds} seed{'s' if self.seeds != 1 else ''}{listed}, "
                         f"in {unit}{fewer}.")
        if self.metric is None and self.column_metrics:
            used = sorted(set(self.column_metrics.values()))
            columns_of = {m: ", ".join(c for c, v in self.column_metrics.items() if v == m) for m in used}
            notes.append("Metrics: " + "; ".join(f"{metric_label(m, config.percent)} for {columns_of[m]}"
                                                 for m in used) + ".")
        if self.spec.kind != "polyphony_bins":
            clips = [f"{column} {self.clips[column]}" for column in self.columns if self.clips.get(column)]
            if clips:
                notes.append(f"Test clips: {', '.join(clips)}.")
        elif self.columns:
            notes.append("Each bin's cell is scored on that bin's test clips only (the count is in its header).")
        notes += self.coverage_notes(ours)
        if significance.enabled:
            notes.append(f"Bold: the best of our rows in each column and every row not significantly below it "
                         f"({significance.level:.0%} paired bootstrap interval of the difference, "
                         f"{significance.replicates} replicates over test clips and seeds).")
            reference_label = row_label(significance.reference, self.spec, config)
            if self.spec.markers and (ours.marker != "").any():
                notes.append(f"{significance.marker}: significantly different from {reference_label} (the "
                             f"{significance.level:.0%} interval of the difference excludes 0; differences and "
                             f"intervals in significance.md).")
            elif self.spec.markers and significance.reference in set(ours.model):
                notes.append(f"No cell differs significantly from {reference_label} "
                             f"({significance.level:.0%} paired bootstrap; see significance.md).")
            if decorator.untested:
                notes.append(f"Not tested against the column's best (no usable predictions, see significance.md): "
                             f"{'; '.join(decorator.untested)}.")
        else:
            notes.append("Bold: the best of our rows in each column (significance tests off).")
        shown = (self.cells.source == "paper").any()
        citations = [PAPER_TABLES[paper].citation for paper in self.spec.paper_tables] if shown else []
        if citations:
            notes.append(f"Rows marked '{PAPER_SUFFIX.strip()}' are published numbers, not ours: "
                         f"{'; '.join(citations)}.")
        return notes


def _markdown(grid: pd.DataFrame) -> str:
    flat = grid.reset_index()
    flat.loc[flat.regime.duplicated(), "regime"] = ""  # print each block's name once, as the paper does
    return flat.to_markdown(index=False, disable_numparse=True)  # keep "39.0", not 39


def _latex(grid: pd.DataFrame) -> str:
    return grid.to_latex(escape=False, multirow=True)


def _to_csv(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, lineterminator="\n")


def write_table(spec: TableSpec, cells: pd.DataFrame, config: TablesConfig, bootstrap: Bootstrap,
                out_dir: Path, metrics: dict[str, str], decorator: Decorator) -> list[Path]:
    layout = Layout(spec, cells, config, metrics)
    notes = layout.notes(bootstrap, decorator) if not cells.empty else []
    paths = [out_dir / f"{spec.name}.md", out_dir / f"{spec.name}.csv", out_dir / f"{spec.name}.tex"]
    body = _markdown(layout.grid(latex=False)) if not cells.empty else "_no results for this table yet_"
    atomic_write_text(paths[0], f"# {layout.title}\n\n{body}\n\n" + "".join(f"- {note}\n" for note in notes))
    atomic_write_text(paths[1], _to_csv(cells.assign(few_clips=cells.column.isin(layout.few_clips))
                                        if spec.kind == "polyphony_bins" and not cells.empty else cells))
    latex = _latex(layout.grid(latex=True)) if not cells.empty else "% no results for this table yet\n"
    comments = "".join(f"% {line}\n" for line in [layout.title, *notes])
    atomic_write_text(paths[2], comments + latex)
    return paths


# --- Δ tables ----------------------------------------------------------------------------------------

SIGNIFICANCE_FILES = ("significance.md", "significance.csv", "significance.tex")


def _comparisons(models: list[str], config: TablesConfig) -> list[tuple[str, str]]:
    reference = config.significance.reference
    pairs = [(model, reference) for model in models if model != reference]
    pairs += [(a, b) for a, b in config.significance.pairs if a in models and b in models]
    return list(dict.fromkeys(pairs))


def _delta_text(delta: Delta | None, decimals: int, marker: str, latex: bool = False) -> str:
    if delta is None:
        return "--" if latex else "–"
    text = f"{delta.delta:+.{decimals}f} [{delta.low:+.{decimals}f}, {delta.high:+.{decimals}f}]"
    if not delta.significant:
        return text
    return text + (rf"$^{{{LATEX_MARKERS.get(marker, latex_escape(marker))}}}$" if latex else marker)


def significance_tables(decorated: list[tuple[TableSpec, pd.DataFrame]], config: TablesConfig,
                        bootstrap: Bootstrap, out_dir: Path) -> list[Path]:
    """significance.md/.tex: per table, model − Stage 1 (and the configured pairs, e.g. SSLAM − MB-UA) with
    the interval, in the table's layout; significance.csv: every comparison, long format."""
    significance = config.significance
    unit = "percentage points" if config.percent else "fraction"
    markdown = ["# Δ vs Stage 1: paired bootstrap differences", ""]
    latex, records = [], []
    if not significance.enabled:
        markdown.append("_Significance tests are off (study.tables.significance.enabled: false or --replicates 0)._")
    else:
        markdown.append(
            f"Each cell: mean over seeds of (row model − compared model), in {unit}, with its "
            f"{significance.level:.0%} interval from a paired bootstrap ({significance.replicates} replicates): "
            f"test clips drawn with replacement within each fold and polyphony bin, the same draw for both models "
            f"and all seeds; the seeds both models have drawn with replacement, seed s of one paired with seed s "
            f"of the other. {significance.marker}: the interval excludes 0.")
    for spec, cells in decorated if significance.enabled else []:
        ours = cells[cells.source == "ours"]
        if ours.empty:
            continue
        decimals = (config.decimals if spec.decimals is None else spec.decimals) + 1
        columns = table_columns(spec, cells)
        keys = ours.drop_duplicates("column").set_index("column")[["benchmark", "key"]]
        rows = []   # (regime, comparison, {column: Delta or None})
        for block in spec.regimes:
            models = list(dict.fromkeys(ours[ours.block == block].model))
            for model, reference in _comparisons(models, config):
                deltas = {}
                for column in columns:
                    benchmark, key = keys.loc[column, "benchmark"], keys.loc[column, "key"]
                    deltas[column] = delta = bootstrap.compare(benchmark, block, key, model, reference)
                    if delta is not None:
                        records.append(dict(table=spec.name, regime=block, benchmark=benchmark, column=column,
                                            model=model, reference=reference, delta=delta.delta, low=delta.low,
                                            high=delta.high, significant=delta.significant,
                                            seeds=" ".join(map(str, delta.seeds)), clips=delta.clips,
                                            replicates=delta.replicates))
                if any(d is not None for d in deltas.values()):
                    comparison = f"{row_label(model, spec, config)} − {row_label(reference, spec, config)}"
                    rows.append((REGIME_LABELS[block], comparison, deltas))
        if not rows:
            continue

        def grid(latex: bool) -> pd.DataFrame:
            text = latex_escape if latex else str
            frame = pd.DataFrame([{"regime": text(regime), "comparison": text(comparison),
                                   **{text(c): _delta_text(d, decimals, significance.marker, latex)
                                      for c, d in deltas.items()}} for regime, comparison, deltas in rows])
            return frame.set_index(["regime", "comparison"])

        markdown += ["", f"## {spec.title or spec.name}", "", _markdown(grid(latex=False))]
        latex += [f"% {spec.title or spec.name}", _latex(grid(latex=True))]
    problems = bootstrap.problems()
    if problems:
        markdown += ["", "## Left out of the tests", ""] + [f"- {problem}" for problem in problems]
    paths = [out_dir / name for name in SIGNIFICANCE_FILES]
    atomic_write_text(paths[0], "\n".join(markdown) + "\n")
    columns = ["table", "regime", "benchmark", "column", "model", "reference", "delta", "low", "high",
               "significant", "seeds", "clips", "replicates"]
    atomic_write_text(paths[1], _to_csv(pd.DataFrame(records, columns=columns)))
    atomic_write_text(paths[2], "% Δ vs Stage 1: paired bootstrap differences (see significance.md)\n"
                      + ("\n".join(latex) if latex else "% no comparisons\n"))
    return paths
