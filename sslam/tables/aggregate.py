"""`sslam tables`: every evaluation job's metrics.json → the paper's tables (Markdown, CSV, LaTeX) + plots.

The metrics.json files are the source of truth; this step only reads them, so the tables can be
rebuilt at any time without a tracking server. Cells are mean ± sample std over seeds (the paper's
Table 12 style), in percent by default because the paper prints percent.

    sslam tables --config config/demo.yaml --metrics results/demo/eval/*/*/*/seed*/metrics.json \
        --pretrain-metrics results/demo/pretrain/stage1/metrics.jsonl --out results/demo/tables
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sslam.configuration import from_dict, load_yaml, section
from sslam.errors import ConfigError, SslamError
from sslam.tables.layouts import OVERALL, PAPER_SUFFIX, TablesConfig, TableSpec, build_table, wide_table


@dataclass(frozen=True)
class RunResult:
    """The fields of one evaluation job's metrics.json that the tables use."""

    benchmark: str
    regime: str
    model: str          # the Stage-2 variant, or "stage1" for the Stage-1 baseline
    seed: int
    metric: str
    value: float
    per_bin: dict[str, float] = field(default_factory=dict)
    path: str = ""


def _bin_value(entry: Any) -> float | None:
    value = entry.get("value") if isinstance(entry, dict) else entry
    return None if value is None else float(value)


def read_result(path: str | Path) -> RunResult:
    """Parse one metrics.json (written by `sslam finetune` / `sslam probe`); clear error when malformed."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise SslamError(f"metrics file not found: {path}") from error
    except json.JSONDecodeError as error:
        raise SslamError(f"{path} is not valid JSON: {error}") from error
    missing = [key for key in ("benchmark", "regime", "variant", "seed", "metric", "value") if key not in data]
    if missing:
        raise SslamError(f"{path}: missing field(s) {', '.join(missing)}")
    if data["value"] is None:
        raise SslamError(f"{path}: the headline value is null (no class had a positive clip?)")
    bins = {str(label): _bin_value(entry) for label, entry in (data.get("per_bin") or {}).items()}
    return RunResult(
        benchmark=str(data["benchmark"]), regime=str(data["regime"]), model=str(data["variant"] or "stage1"),
        seed=int(data["seed"]), metric=str(data["metric"]), value=float(data["value"]),
        per_bin={label: value for label, value in bins.items() if value is not None}, path=str(path),
    )


def runs_frame(results: list[RunResult], percent: bool) -> pd.DataFrame:
    """One row per (run, column): the headline number under column 'overall', then one row per bin."""
    scale = 100.0 if percent else 1.0
    rows = []
    for result in results:
        common = dict(benchmark=result.benchmark, regime=result.regime, model=result.model,
                      seed=result.seed, metric=result.metric, path=result.path)
        rows.append(dict(common, column=OVERALL, value=result.value * scale))
        rows.extend(dict(common, column=label, value=value * scale) for label, value in result.per_bin.items())
    frame = pd.DataFrame(rows, columns=["benchmark", "regime", "model", "seed", "metric", "column", "value", "path"])
    duplicated = frame.duplicated(["benchmark", "regime", "model", "seed", "column"], keep=False)
    if duplicated.any():
        clash = frame[duplicated].path.unique().tolist()
        raise SslamError(f"several metrics files describe the same run: {', '.join(clash)}")
    return frame


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """mean, sample std (ddof=1; NaN for a single seed) and number of seeds per cell."""
    grouped = runs.groupby(["benchmark", "regime", "model", "column"], sort=False).value
    return grouped.agg(mean="mean", std="std", n="count").reset_index()


def load_tables_config(config: dict[str, Any]) -> tuple[TablesConfig, list[str]]:
    tables_config = from_dict(TablesConfig, section(config, "study.tables"), where="study.tables")
    names = [spec.name for spec in tables_config.specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"study.tables.specs: table names must be unique, got {names}")
    return tables_config, list(section(config, "study.variants", []))


def _latex(wide: pd.DataFrame) -> str:
    # Escape the text first, then put the math back: an escaped "$\pm$" would print literally.
    placeholder = "PLUSMINUS"
    text = wide.map(lambda value: str(value).replace(" ± ", f" {placeholder} "))
    latex = text.to_latex(escape=True, multirow=True)
    return latex.replace(placeholder, r"$\pm$").replace("–", "--")


def _markdown(wide: pd.DataFrame) -> str:
    flat = wide.reset_index().rename(columns={"block": "regime"})
    flat.loc[flat.regime.duplicated(), "regime"] = ""  # print each block's name once, as the paper does
    return flat.to_markdown(index=False, disable_numparse=True)  # keep "39.0", not 39


def write_table(spec: TableSpec, cells: pd.DataFrame, wide: pd.DataFrame, out_dir: Path, percent: bool) -> list[Path]:
    unit = "percent" if percent else "fraction"
    seeds = sorted(cells[cells.source == "ours"].n.unique().tolist())
    note = f"Cells: mean ± sample std over seeds ({unit}; seeds per cell: {', '.join(map(str, seeds)) or 'none'})."
    if (cells.source == "paper").any():
        note += f" Rows marked '{PAPER_SUFFIX.strip()}' are the published numbers (SSLAM paper {spec.paper}), not ours."
    title = spec.title or spec.name
    markdown = f"# {title}\n\n"
    markdown += (_markdown(wide) if not wide.empty else "_no results for this table yet_") + f"\n\n{note}\n"
    paths = [out_dir / f"{spec.name}.md", out_dir / f"{spec.name}.csv", out_dir / f"{spec.name}.tex"]
    paths[0].write_text(markdown)
    cells.to_csv(paths[1], index=False)
    latex = _latex(wide) if not wide.empty else "% no results for this table yet\n"
    paths[2].write_text(f"% {title}\n% {note}\n{latex}")
    return paths


def make_tables(config: dict[str, Any], metrics: list[str | Path], out_dir: str | Path,
                pretrain_metrics: list[str | Path] = (), audioset_polyphony: str | Path | None = None) -> list[Path]:
    """Write every configured table, the per-run and per-cell CSVs and the plots; return the paths."""
    from sslam.tables import plots  # matplotlib is slow to import: only when tables are really made

    tables_config, variants = load_tables_config(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = [read_result(path) for path in metrics]
    runs = runs_frame(results, tables_config.percent)
    summary = summarise(runs)
    runs.to_csv(out_dir / "runs.csv", index=False)
    summary.to_csv(out_dir / "summary.csv", index=False)
    written = [out_dir / "runs.csv", out_dir / "summary.csv"]
    for spec in tables_config.specs:
        cells = build_table(spec, summary, variants, tables_config)
        written += write_table(spec, cells, wide_table(spec, cells, tables_config), out_dir, tables_config.percent)
        if spec.kind == "polyphony_bins":
            written.append(plots.plot_polyphony(cells[cells.source == "ours"], spec, out_dir / f"{spec.name}_polyphony.png"))
    if pretrain_metrics:
        written.append(plots.plot_pretrain_losses(pretrain_metrics, out_dir / "pretrain_loss.png"))
    if audioset_polyphony:
        written.append(plots.plot_audioset_polyphony(audioset_polyphony, out_dir / "audioset_polyphony.png"))
    return written


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--config", required=True, help="study YAML (reads study.variants and study.tables)")
    parser.add_argument("--metrics", nargs="+", required=True, help="metrics.json files of the evaluation jobs")
    parser.add_argument("--out", required=True, help="output folder for tables and plots")
    parser.add_argument("--pretrain-metrics", nargs="*", default=[],
                        help="metrics.jsonl files of pretraining runs (loss curves)")
    parser.add_argument("--audioset-polyphony", default=None,
                        help="JSON written by `sslam polyphony` (Figure 3 plot)")


def run(args: argparse.Namespace) -> int:
    written = make_tables(load_yaml(args.config), args.metrics, args.out, args.pretrain_metrics, args.audioset_polyphony)
    print(f"sslam tables: wrote {len(written)} files to {args.out}")
    return 0
