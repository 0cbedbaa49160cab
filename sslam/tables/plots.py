"""Figures of the study (matplotlib, headless Agg backend so it works on cluster nodes without a display).

* `plot_polyphony`: mAP versus degree of polyphony, one line per model, one panel per regime
  (the paper's Table 3 as a figure).
* `plot_pretrain_losses`: the total pretraining loss against the step for Stage 1 and each Stage-2
  variant, read from the runs' metrics.jsonl.
* `plot_audioset_polyphony`: the paper's Figure 3 (share of AudioSet clips with at least two distinct
  sound events per ontology level) from the JSON written by `sslam polyphony`.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import pandas as pd  # noqa: E402

from sslam.errors import SslamError  # noqa: E402
from sslam.tables.layouts import MODEL_LABELS, REGIME_LABELS, TableSpec, natural_key  # noqa: E402


def _save(figure: plt.Figure, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


def plot_polyphony(cells: pd.DataFrame, spec: TableSpec, out: str | Path) -> Path:
    """`cells` as built by layouts.build_table for a polyphony_bins table (our rows only)."""
    regimes = [r for r in spec.regimes if r in set(cells.block)] or spec.regimes
    figure, axes = plt.subplots(1, len(regimes), figsize=(5 * len(regimes), 3.6), squeeze=False, sharey=True)
    bins = sorted(cells.column.unique(), key=natural_key)
    for axis, regime in zip(axes[0], regimes):
        block = cells[cells.block == regime]
        for model, group in block.groupby("model", sort=False):
            group = group.set_index("column").reindex(bins)
            axis.errorbar(range(len(bins)), group["mean"], yerr=group["std"].fillna(0.0), marker="o",
                          capsize=3, label=MODEL_LABELS.get(model, model))
        axis.set_xticks(range(len(bins)), bins)
        axis.set_xlabel("distinct sound events per clip")
        axis.set_title(REGIME_LABELS[regime])
        if block.empty:
            axis.text(0.5, 0.5, "no results yet", ha="center", va="center", transform=axis.transAxes)
    axes[0][0].set_ylabel("mAP")
    if not cells.empty:
        axes[0][-1].legend(fontsize="small")
    figure.suptitle(spec.title or spec.name, fontsize="medium")
    return _save(figure, Path(out))


def _run_label(path: Path) -> str:
    """results/.../pretrain/stage1/metrics.jsonl -> 'Stage 1'; .../stage2/SSLAM/metrics.jsonl -> 'Stage 2: SSLAM'."""
    if path.parent.name == "stage1":
        return "Stage 1"
    if path.parent.parent.name == "stage2":
        return f"Stage 2: {path.parent.name}"
    return path.parent.name


def read_jsonl(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise SslamError(f"pretraining metrics file not found: {path}")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise SslamError(f"{path}:{number}: not a JSON line ({error})") from error
    return pd.DataFrame.from_records(records)


def plot_pretrain_losses(paths: list[str | Path], out: str | Path) -> Path:
    figure, axis = plt.subplots(figsize=(6, 3.8))
    for path in paths:
        frame = read_jsonl(path)
        if {"step", "loss"} <= set(frame.columns):
            frame = frame.dropna(subset=["loss"])
            axis.plot(frame["step"], frame["loss"], label=_run_label(Path(path)))
    axis.set_xlabel("step")
    axis.set_ylabel("pretraining loss")
    axis.set_yscale("log")
    if axis.lines:
        axis.legend(fontsize="small")
    else:
        axis.text(0.5, 0.5, "no loss records", ha="center", va="center", transform=axis.transAxes)
    return _save(figure, Path(out))


def plot_audioset_polyphony(path: str | Path, out: str | Path) -> Path:
    """Accepts {"levels": {"1": {"percent": ...}, ...}} or {"levels": [{"level": 1, "percent": ...}, ...]}."""
    data = json.loads(Path(path).read_text())
    levels = data.get("levels", data)
    if isinstance(levels, dict):
        points = [(int(level), entry["percent"] if isinstance(entry, dict) else entry) for level, entry in levels.items()]
    else:
        points = [(int(entry["level"]), entry["percent"]) for entry in levels]
    points.sort()
    figure, axis = plt.subplots(figsize=(5, 3.6))
    axis.plot([p[0] for p in points], [p[1] for p in points], marker="o")
    for level, percent in points:
        axis.annotate(f"{percent:.1f}", (level, percent), textcoords="offset points", xytext=(0, 6), ha="center")
    axis.set_xlabel("hierarchy level L")
    axis.set_ylabel("clips with ≥ 2 distinct events (%)")
    axis.set_title("AudioSet polyphony (paper Figure 3)")
    return _save(figure, Path(out))
