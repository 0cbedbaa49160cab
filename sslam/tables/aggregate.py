"""`sslam tables`: every evaluation job's metrics.json → the paper's tables (Markdown, CSV, LaTeX) + plots.

The metrics.json files (and the predictions.npz beside them, for the significance tests) are the
source of truth; this step only reads them, so the tables can be rebuilt at any time without a
tracking server. The study's tables print each job's headline (its `selection`: best_on_valid where the
benchmark has validation rows, else the last model); every table has a `<name>_paper_protocol` twin that prints
the same runs' `best_on_eval` selection (chosen on the test set, as the official runs are) beside the paper's
numbers, with the difference per cell. Cells are mean ± sample std over seeds (the paper's Table 12 style), in percent by
default because the paper prints percent. docs/tables.md describes every output.

    sslam tables --config config/demo.yaml --metrics results/demo/eval/*/*/*/seed*/metrics.json \\
        --pretrain-metrics results/demo/pretrain/stage1/metrics.jsonl --out results/demo/tables
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from sslam import __version__
from sslam.runtime.configuration import load_yaml, section
from sslam.runtime.errors import SslamError
from sslam.runtime.io import atomic_folder, atomic_write_text, read_text
from sslam.tables.html import html_pages
from sslam.tables.layouts import (HEADLINE, StudyRows, build_table, table_specs, tables_config,
                                  with_differences)
from sslam.tables.models import is_valid_model_id
from sslam.tables.render import Decorator, metric_label, significance_tables, write_table
from sslam.tables.significance import OVERALL, Bootstrap

PREDICTIONS = "predictions.npz"   # the per-clip predictions beside a metrics.json when it names none


@dataclass(frozen=True)
class RunResult:
    """The fields of one evaluation job's metrics.json that the tables use."""

    benchmark: str
    regime: str
    model: str          # the model id (sslam.tables.models): a Stage-2 variant, "stage1", "random", ...
    seed: int
    metric: str
    value: float
    per_bin: dict[str, float] = field(default_factory=dict)
    clips: int | None = None                                   # test clips behind the headline value
    per_bin_clips: dict[str, int] = field(default_factory=dict)
    classes: int | None = None                                 # classes of the benchmark (per_class entries)
    left_out: int | None = None                                # classes without test positives (no AP: not in mAP)
    per_bin_left_out: dict[str, int] = field(default_factory=dict)
    predictions: str | None = None                             # predictions.npz, when there is one
    path: str = ""
    policy: str = ""                                           # the selection the headline is (metrics.json)
    selections: dict[str, dict[str, Any]] = field(default_factory=dict)  # every selection: value, per_bin, predictions


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _bin_entry(entry: Any) -> tuple[float | None, int | None, int | None]:
    """A per-bin entry: value, test clips and classes without positives in the bin (older files: a bare value)."""
    if isinstance(entry, dict):
        value = entry.get("value")
        return ((None if value is None else float(value)), _optional_int(entry.get("clips")),
                _optional_int(entry.get("classes_without_positives")))
    return (None if entry is None else float(entry)), None, None


def read_result(path: str | Path) -> RunResult:
    """Parse one metrics.json (written by `sslam finetune` / `sslam probe`); clear error when malformed."""
    path = Path(path)
    try:
        data = json.loads(read_text(path, "metrics file"))
    except json.JSONDecodeError as error:
        raise SslamError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise SslamError(f"{path}: expected a JSON object")
    missing = [key for key in ("benchmark", "regime", "variant", "seed", "metric", "value") if key not in data]
    if missing:
        raise SslamError(f"{path}: missing field(s) {', '.join(missing)}")
    if data["value"] is None:
        raise SslamError(f"{path}: the headline value is null (no class had a positive clip?)")
    model = str(data["variant"] or "stage1")
    if not is_valid_model_id(model):
        raise SslamError(f"{path}: variant {model!r} is not a model id (NAME or NAME@STAGE1_VARIANT)")
    try:
        bins = {str(label): _bin_entry(entry) for label, entry in (data.get("per_bin") or {}).items()}
        seed, value = int(data["seed"]), float(data["value"])
        clips = _optional_int(data.get("num_test_clips", data.get("num_test")))
        per_class = data.get("per_class")
        classes = len(per_class) if isinstance(per_class, dict) and per_class else None
        left_out = _optional_int(data.get("classes_without_positives"))
    except (TypeError, ValueError, AttributeError) as error:
        raise SslamError(f"{path}: malformed field ({error})") from error
    named = data.get("predictions")
    predictions = path.parent / (str(named) if named else PREDICTIONS)
    selection = data.get("selection")
    policy = str(selection.get("policy", "")) if isinstance(selection, dict) else str(selection or "")
    return RunResult(
        benchmark=str(data["benchmark"]), regime=str(data["regime"]), model=model, seed=seed,
        metric=str(data["metric"]), value=value,
        per_bin={label: v for label, (v, _, _) in bins.items() if v is not None},
        clips=clips, per_bin_clips={label: c for label, (v, c, _) in bins.items() if v is not None and c is not None},
        classes=classes, left_out=left_out,
        per_bin_left_out={label: n for label, (v, _, n) in bins.items() if v is not None and n is not None},
        predictions=str(predictions) if predictions.is_file() else None, path=str(path), policy=policy,
        selections=_selections(path, data.get("selections")),
    )


def _selections(path: Path, raw: Any) -> dict[str, dict[str, Any]]:
    """metrics.json `selections` (older files have none): name -> value, per_bin entries, predictions file."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SslamError(f"{path}: `selections` must be a mapping")
    selections = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict) or entry.get("value") is None:
            continue
        try:
            bins = {str(label): _bin_entry(value) for label, value in (entry.get("per_bin") or {}).items()}
            predictions = path.parent / str(entry["predictions"]) if entry.get("predictions") else None
            selections[str(name)] = {"value": float(entry["value"]), "bins": bins, "step": entry.get("step"),
                                     "predictions": str(predictions) if predictions and predictions.is_file() else None}
        except (TypeError, ValueError, AttributeError) as error:
            raise SslamError(f"{path}: malformed selections.{name} ({error})") from error
    return selections


def selected(result: RunResult, name: str) -> RunResult | None:
    """`result` with selection `name` as its numbers (and predictions); None when its metrics.json lacks it."""
    entry = result.selections.get(name)
    if entry is None:
        return None
    bins = entry["bins"]
    return replace(result, value=entry["value"],
                   per_bin={label: v for label, (v, _, _) in bins.items() if v is not None},
                   per_bin_clips={label: c for label, (v, c, _) in bins.items() if v is not None and c is not None},
                   per_bin_left_out={label: n for label, (v, _, n) in bins.items() if v is not None and n is not None},
                   predictions=entry["predictions"], policy=name)


def runs_frame(results: list[RunResult], percent: bool) -> pd.DataFrame:
    """One row per (run, column): the headline number under column 'overall', then one row per bin."""
    scale = 100.0 if percent else 1.0
    rows = []
    for result in results:
        common = dict(benchmark=result.benchmark, regime=result.regime, model=result.model,
                      seed=result.seed, metric=result.metric, path=result.path)
        rows.append(dict(common, column=OVERALL, value=result.value * scale, clips=result.clips,
                         classes=result.classes, left_out=result.left_out))
        rows.extend(dict(common, column=label, value=value * scale, clips=result.per_bin_clips.get(label),
                         classes=result.classes, left_out=result.per_bin_left_out.get(label))
                    for label, value in result.per_bin.items())
    frame = pd.DataFrame(rows, columns=["benchmark", "regime", "model", "seed", "metric", "column", "value",
                                        "clips", "classes", "left_out", "path"])
    duplicated = frame.duplicated(["benchmark", "regime", "model", "seed", "column"], keep=False)
    if duplicated.any():
        clash = frame[duplicated].path.unique().tolist()
        raise SslamError(f"several metrics files describe the same run: {', '.join(clash)}")
    metrics = frame.groupby("benchmark").metric.nunique()
    if (metrics > 1).any():
        benchmark = metrics[metrics > 1].index[0]
        raise SslamError(f"benchmark {benchmark}: the runs report different metrics "
                         f"({', '.join(sorted(frame[frame.benchmark == benchmark].metric.unique()))})")
    return frame


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """mean, sample std (ddof=1; NaN for a single seed), number of seeds, the seeds and the test clips per cell,
    and how many classes a mean left out (the most over its seeds; mAP has no AP for a class without positives)."""
    grouped = runs.groupby(["benchmark", "regime", "model", "column"], sort=False)
    summary = grouped.agg(metric=("metric", "first"), mean=("value", "mean"), std=("value", "std"),
                          n=("value", "count"), clips_min=("clips", "min"), clips_max=("clips", "max"),
                          classes=("classes", "max"), left_out=("left_out", "max"))
    summary["seeds"] = grouped.seed.agg(lambda seeds: " ".join(map(str, sorted(seeds))))
    summary = summary.reset_index()
    summary["clips"] = summary.clips_min  # the clip count the headers print (min and max are both kept)
    return summary


def make_tables(config: dict[str, Any], metrics: list[str | Path], out_dir: str | Path,
                pretrain_metrics: list[str | Path] = (), audioset_polyphony: str | Path | None = None,
                replicates: int | None = None) -> list[Path]:
    """Write every table, the significance tables, the per-run and per-cell CSVs and the plots; return the paths.

    `replicates` overrides study.tables.significance.replicates (0 = no significance). The files are written
    into a staging folder that replaces `out_dir` as a whole at the end (sslam.runtime.io.atomic_folder): a
    killed or failed run leaves the previous set of tables as it was, never a mixture of old and new."""
    out_dir = Path(out_dir)
    with atomic_folder(out_dir) as staging:
        written = _write_tables(config, metrics, staging, pretrain_metrics, audioset_polyphony, replicates)
    return [out_dir / path.relative_to(staging) for path in written]


def _write_tables(config: dict[str, Any], metrics: list[str | Path], out_dir: Path,
                  pretrain_metrics: list[str | Path], audioset_polyphony: str | Path | None,
                  replicates: int | None) -> list[Path]:
    from sslam.tables import plots  # matplotlib is slow to import: only when tables are really made

    settings = tables_config(config)
    specs = table_specs(config)
    study = StudyRows.from_config(config)
    if replicates is not None:  # the command line's override (0 = no tests)
        significance = replace(settings.significance, enabled=False) if replicates == 0 else \
            replace(settings.significance, replicates=replicates)
        settings = replace(settings, significance=significance)
    results = sorted((read_result(path) for path in metrics), key=lambda r: (r.benchmark, r.regime, r.model, r.seed))
    runs, summary, bootstrap = scored(results, [s for s in specs if s.selection == HEADLINE], settings)
    # The paper-protocol twins: the same runs' best_on_eval selection (runs written before selections existed
    # have none and are left out of them).
    selections = sorted({spec.selection for spec in specs} - {HEADLINE})
    by_selection = {HEADLINE: (summary, bootstrap)}
    for name in selections:
        chosen = [r for r in (selected(result, name) for result in results) if r is not None]
        _, chosen_summary, chosen_bootstrap = scored(chosen, [s for s in specs if s.selection == name], settings)
        by_selection[name] = (chosen_summary, chosen_bootstrap)
    written = [out_dir / "runs.csv", out_dir / "summary.csv"]
    atomic_write_text(written[0], runs.to_csv(index=False, lineterminator="\n"))
    atomic_write_text(written[1], summary.to_csv(index=False, lineterminator="\n"))
    metrics_of = dict(zip(summary.benchmark, summary.metric))
    decorated = []
    for spec in specs:
        cells_summary, cells_bootstrap = by_selection[spec.selection]
        decorator = Decorator(spec, settings, cells_bootstrap)
        cells = decorator.decorate(build_table(spec, cells_summary, study, settings))
        if spec.selection != HEADLINE:
            cells = with_differences(cells)
        else:
            decorated.append((spec, cells))   # the Δ-vs-Stage-1 tables compare headline selections
        written += write_table(spec, cells, settings, cells_bootstrap, out_dir, metrics_of, decorator)
        if spec.kind == "polyphony_bins":
            ours = cells[cells.source == "ours"]
            written.append(plots.plot_polyphony(ours, spec, out_dir / f"{spec.name}_polyphony.png",
                                                metric_label=_metric_label(summary, spec, settings.percent)))
    written += significance_tables(decorated, settings, bootstrap, out_dir)
    if pretrain_metrics:
        written.append(plots.plot_pretrain_losses(pretrain_metrics, out_dir / "pretrain_loss.png"))
    if audioset_polyphony:
        written.append(plots.plot_audioset_polyphony(audioset_polyphony, out_dir / "audioset_polyphony.png"))
    written.append(write_study_page(config, out_dir / STUDY_PAGE))
    return written + html_pages(written)  # what the report shows inline (sslam/tables/html.py)


def scored(results: list[RunResult], specs, settings) -> tuple[pd.DataFrame, pd.DataFrame, Bootstrap]:
    """(runs frame, summary, bootstrap over the benchmarks and regimes of `specs`) of a set of runs."""
    columns = ["benchmark", "regime", "model", "column", "metric", "mean", "std", "n", "clips_min", "clips_max",
               "classes", "left_out", "seeds", "clips"]
    runs = runs_frame(results, settings.percent)
    summary = summarise(runs) if len(runs) else pd.DataFrame(columns=columns)
    bootstrap = Bootstrap(settings.significance, 100.0 if settings.percent else 1.0)
    if settings.significance.enabled:
        wanted = sorted({(b, r) for spec in specs for b in spec.benchmarks for r in spec.regimes})
        for benchmark, regime in wanted:
            group = [r for r in results if r.benchmark == benchmark and r.regime == regime]
            if group:
                bootstrap.add(benchmark, regime, group)
    return runs, summary, bootstrap


STUDY_PAGE = "study.md"


def write_study_page(config: dict[str, Any], path: Path) -> Path:
    """The report's page on what produced the tables: the code version and the study config as run."""
    import subprocess

    import yaml


    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    version = f"{commit or 'not a git checkout'}{' (with uncommitted changes)' if commit and dirty else ''}"
    text = (f"# Study {section(config, 'study.name', default='')}\n\n"
            f"- code: sslam {__version__}, git commit {version}\n"
            f"- each job's code fingerprint: its `*.code.json` record and its MLflow tag `code_hash` "
            f"(docs/fingerprints.md)\n\n## The study config, as run\n\n```yaml\n"
            f"{yaml.safe_dump(config, sort_keys=False)}```\n")
    atomic_write_text(path, text)
    return path


def _metric_label(summary: pd.DataFrame, spec, percent: bool) -> str:
    metrics = summary[summary.benchmark.isin(spec.benchmarks)].metric.unique().tolist()
    return metric_label(metrics[0], percent) if len(metrics) == 1 else "score"


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--config", required=True, help="study YAML (reads the study section and study.tables)")
    parser.add_argument("--metrics", nargs="+", required=True,
                        help="metrics.json files of the evaluation jobs (predictions.npz beside each, when present, "
                             "feeds the significance tests)")
    parser.add_argument("--out", required=True, help="output folder for tables and plots")
    parser.add_argument("--pretrain-metrics", nargs="*", default=[],
                        help="metrics.jsonl files of pretraining runs (loss curves); MODEL_ID=PATH names a run "
                             "whose folder does not")
    parser.add_argument("--audioset-polyphony", default=None,
                        help="JSON written by `sslam polyphony` (Figure 3 plot)")
    parser.add_argument("--replicates", type=int, default=None,
                        help="bootstrap replicates (overrides study.tables.significance.replicates; 0 = no "
                             "significance tests)")


def run(args: argparse.Namespace) -> int:
    written = make_tables(load_yaml(args.config), args.metrics, args.out, args.pretrain_metrics,
                          args.audioset_polyphony, args.replicates)
    print(f"sslam tables: wrote {len(written)} files to {args.out}")
    return 0
