"""Figures of the study (matplotlib, headless Agg backend so it works on cluster nodes without a display).

* `plot_polyphony`: the score against the degree of polyphony, one line per model (dodged sideways so
  the error bars — std over seeds — do not sit on each other), one panel per regime (Table 3 as a figure).
* `plot_pretrain_losses`: the total pretraining loss and each loss term (local, global, SRL, ...)
  against the step. A Stage-2 run continues its Stage-1 run's x axis (its steps are offset by the
  Stage-1 run's last step), so the curriculum reads left to right.
* `plot_audioset_polyphony`: the paper's Figure 3 (share of AudioSet clips with at least two distinct
  sound events per ontology level) from the JSON written by `sslam polyphony`.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter  # noqa: E402

from sslam.runtime.errors import SslamError  # noqa: E402
from sslam.runtime.io import atomic_path, read_text  # noqa: E402
from sslam.tables.layouts import REGIME_LABELS, TableSpec, natural_key  # noqa: E402
from sslam.tables.models import STAGE1, default_label, is_valid_model_id, parse_model_id, stage1_id  # noqa: E402

# A logged column is a loss term when its name starts with one of these families.
TERM_FAMILIES = {"local": "local loss (masked patches)", "global": "global loss (CLS)",
                 "srl": "source retention loss (SRL)", "mixit": "MixIT loss"}
_TERM = re.compile(rf"^({'|'.join(TERM_FAMILIES)})(?:_(\w+))?$")
_STYLES = ["-", "--", ":", "-."]


def _save(figure: plt.Figure, out: Path, tight: bool = True) -> Path:
    if tight:
        figure.tight_layout()
    with atomic_path(out) as temporary:
        figure.savefig(temporary, dpi=120, format="png", metadata={"Software": None})
    plt.close(figure)
    return out


def log_ticks(low: float, high: float) -> list[float]:
    """At least three readable tick values in [low, high] (0 < low <= high) for a log axis."""
    if not (0 < low <= high and math.isfinite(high)):
        raise ValueError(f"log ticks need 0 < low <= high, got {low}, {high}")
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    for mantissas in ([1], [1, 2, 5], [1, 1.5, 2, 3, 4, 5, 6, 7, 8, 9]):
        ticks = [m * 10.0 ** e for e in range(first, last + 1) for m in mantissas if low <= m * 10.0 ** e <= high]
        if len(ticks) >= 3:
            return ticks
    # A range narrower than the finest mantissas: geometric steps, rounded to as few digits as keep them apart.
    for digits in range(2, 7):
        ticks = sorted({float(f"{v:.{digits}g}") for v in np.geomspace(low, high, 4)})
        if len(ticks) >= 3 or low == high:
            return ticks
    return [low, high]


def readable_log_axis(axis: plt.Axes, values: np.ndarray) -> None:
    """Log y axis with several labelled ticks ('0.3', '0.5', ...), or a linear one for non-positive data."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0 or (values <= 0).any():
        return
    axis.set_yscale("log")
    axis.yaxis.set_major_locator(FixedLocator(log_ticks(values.min(), values.max())))
    axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.yaxis.set_minor_formatter(NullFormatter())


def plot_polyphony(cells: pd.DataFrame, spec: TableSpec, out: str | Path, metric_label: str = "mAP (%)") -> Path:
    """`cells` as built by layouts.build_table for a polyphony_bins table (our rows only)."""
    return _save(polyphony_figure(cells, spec, metric_label), Path(out), tight=False)


def polyphony_figure(cells: pd.DataFrame, spec: TableSpec, metric_label: str = "mAP (%)") -> plt.Figure:
    regimes = [r for r in spec.regimes if r in set(cells.block)] or spec.regimes
    figure, axes = plt.subplots(1, len(regimes), figsize=(5.5 * len(regimes), 4.2), squeeze=False, sharey=True)
    bins = sorted(cells.column.unique(), key=natural_key)
    clips = {b: cells[cells.column == b].clips.dropna() for b in bins}
    ticks = [f"{b}\n{int(clips[b].min())} clips" if len(clips[b]) else b for b in bins]
    models = list(dict.fromkeys(cells.model))
    width = 0.5 / max(len(models), 1)   # the models of one bin share half a bin's width
    for axis, regime in zip(axes[0], regimes):
        block = cells[cells.block == regime]
        for i, model in enumerate(models):
            group = block[block.model == model].set_index("column").reindex(bins)
            if group["mean"].isna().all():
                continue
            offset = (i - (len(models) - 1) / 2) * width
            axis.errorbar(np.arange(len(bins)) + offset, group["mean"], yerr=group["std"].fillna(0.0), marker="o",
                          markersize=4, capsize=4, elinewidth=1.2, linewidth=1.0, color=f"C{i % 10}",
                          label=group.label.dropna().iloc[0] if group.label.notna().any() else default_label(model))
        axis.set_xticks(range(len(bins)), ticks, fontsize="small")
        axis.set_xlim(-0.5, len(bins) - 0.5)
        axis.set_xlabel("distinct sound events per clip")
        axis.set_title(REGIME_LABELS[regime])
        axis.grid(axis="y", alpha=0.3)
        if block.empty:
            axis.text(0.5, 0.5, "no results yet", ha="center", va="center", transform=axis.transAxes)
    axes[0][0].set_ylabel(f"{metric_label}, mean ± std over seeds")
    if not cells.empty:
        figure.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=min(len(models), 4),
                      fontsize="small", frameon=False)
    figure.suptitle(spec.title or spec.name, fontsize="medium")
    figure.tight_layout(rect=(0, 0.08 + 0.04 * ((len(models) - 1) // 4), 1, 1))  # room for the legend
    return figure


# --- pretraining losses ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainRun:
    model: str            # model id: stage1, stage1@<name>, or a Stage-2 variant (optionally @<name>)
    path: Path
    records: pd.DataFrame

    @property
    def is_stage1(self) -> bool:
        return parse_model_id(self.model).is_stage1


def run_model(argument: str) -> tuple[str, Path]:
    """'MODEL_ID=PATH', or a path whose folders name the run: .../stage1/metrics.jsonl → stage1,
    .../stage1@<name>/… or .../stage1/<name>/… → stage1@<name>, .../stage2/<variant>/… → <variant>."""
    name, separator, rest = argument.partition("=")
    if separator and is_valid_model_id(name) and not Path(argument).exists():
        return name, Path(rest)
    path = Path(argument)
    folder, parent = path.parent.name, path.parent.parent.name
    if is_valid_model_id(folder) and parse_model_id(folder).is_stage1:
        return folder, path
    if parent == STAGE1 and is_valid_model_id(folder):
        return stage1_id(folder), path
    return folder, path


def read_jsonl(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    records = []
    for number, line in enumerate(read_text(path, "pretraining metrics file").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise SslamError(f"{path}:{number}: not a JSON line ({error})") from error
        if not isinstance(record, dict):
            raise SslamError(f"{path}:{number}: expected a JSON object")
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    for column in frame.columns:  # non-finite values are logged as strings ("nan", "inf")
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def read_pretrain_runs(arguments: list[str | Path]) -> list[PretrainRun]:
    runs = []
    for argument in arguments:
        model, path = run_model(str(argument))
        records = read_jsonl(path)
        if "step" in records.columns:
            records = records.dropna(subset=["step"]).sort_values("step", kind="stable")
        runs.append(PretrainRun(model, path, records))
    return runs


def step_offsets(runs: list[PretrainRun]) -> dict[str, int]:
    """x-axis offset of each run: 0 for Stage 1, the last step of its Stage-1 run for Stage 2 (0 when that
    Stage-1 run is not plotted)."""
    last = {run.model: int(run.records.step.max()) for run in runs
            if run.is_stage1 and "step" in run.records.columns and len(run.records)}
    return {run.model: 0 if run.is_stage1 else last.get(stage1_id(parse_model_id(run.model).stage1_variant), 0)
            for run in runs}


def _run_label(model: str) -> str:
    return default_label(model) if parse_model_id(model).is_stage1 else f"Stage 2: {model}"


def plot_pretrain_losses(paths: list[str | Path], out: str | Path) -> Path:
    return _save(pretrain_figure(paths), Path(out))


def pretrain_figure(paths: list[str | Path]) -> plt.Figure:
    """Total loss plus one panel per loss-term family; one colour per run, one line style per term."""
    runs = read_pretrain_runs(paths)
    offsets = step_offsets(runs)
    terms: dict[str, list[str]] = {}   # family -> its logged terms, each drawn with its own line style
    for column in sorted({c for run in runs for c in run.records.columns}):
        match = _TERM.match(column)
        if match:
            terms.setdefault(match.group(1), []).append(column)
    families = [family for family in TERM_FAMILIES if family in terms]
    figure, axes = plt.subplots(1, 1 + len(families), figsize=(5.2 * (1 + len(families)), 4.0), squeeze=False)
    panels = {"loss": axes[0][0], **{family: axes[0][1 + i] for i, family in enumerate(families)}}
    columns = {"loss": "loss", **{term: family for family in families for term in terms[family]}}
    values: dict[str, list[np.ndarray]] = {panel: [] for panel in panels}
    boundaries = sorted({offsets[run.model] for run in runs if offsets[run.model]})
    for i, run in enumerate(runs):
        if "step" not in run.records.columns:
            continue
        for column, panel in columns.items():
            frame = run.records.dropna(subset=[column]) if column in run.records.columns else None
            if frame is None or frame.empty:
                continue
            style = "-" if panel == "loss" else _STYLES[terms[panel].index(column) % len(_STYLES)]
            label = _run_label(run.model) if panel == "loss" else f"{_run_label(run.model)}: {column}"
            panels[panel].plot(frame.step + offsets[run.model], frame[column], color=f"C{i % 10}", linestyle=style,
                               linewidth=1.2, label=label)
            values[panel].append(frame[column].to_numpy())
    for panel, axis in panels.items():
        axis.set_xlabel("step (Stage 2 continues Stage 1)" if boundaries else "step")
        axis.set_title("total pretraining loss" if panel == "loss" else TERM_FAMILIES[panel], fontsize="medium")
        for boundary in sorted(boundaries):
            axis.axvline(boundary, color="grey", linewidth=0.8, linestyle=":")
        if axis.lines:
            readable_log_axis(axis, np.concatenate(values[panel]))
            axis.legend(fontsize="x-small")
            axis.grid(alpha=0.3, which="major")
        else:
            axis.text(0.5, 0.5, "no loss records", ha="center", va="center", transform=axis.transAxes)
    axes[0][0].set_ylabel("loss")
    return figure


# --- Figure 3 ----------------------------------------------------------------------------------------


def plot_audioset_polyphony(path: str | Path, out: str | Path) -> Path:
    return _save(audioset_polyphony_figure(path), Path(out))


def audioset_polyphony_figure(path: str | Path) -> plt.Figure:
    """Accepts {"levels": {"1": {"percent": ...}, ...}} or {"levels": [{"level": 1, "percent": ...}, ...]}."""
    try:
        data = json.loads(read_text(path, "polyphony analysis"))
        levels = data.get("levels", data)
        if isinstance(levels, dict):
            points = [(int(level), float(entry["percent"] if isinstance(entry, dict) else entry))
                      for level, entry in levels.items()]
        else:
            points = [(int(entry["level"]), float(entry["percent"])) for entry in levels]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise SslamError(f"{path}: not a `sslam polyphony` result ({error})") from error
    if not points:
        raise SslamError(f"{path}: not a `sslam polyphony` result (no levels)")
    points.sort()
    figure, axis = plt.subplots(figsize=(5, 3.6))
    levels_seen = [p[0] for p in points]
    axis.plot(levels_seen, [p[1] for p in points], marker="o")
    for level, percent in points:
        axis.annotate(f"{percent:.1f}", (level, percent), textcoords="offset points", xytext=(0, 6), ha="center")
    axis.set_xticks(levels_seen, [str(level) for level in levels_seen])   # levels are integers: no 1.5
    if levels_seen:
        axis.set_xlim(min(levels_seen) - 0.5, max(levels_seen) + 0.5)
    axis.set_xlabel("hierarchy level L")
    axis.set_ylabel("clips with ≥ 2 distinct events (%)")
    axis.set_title("AudioSet polyphony (paper Figure 3)")
    return figure
