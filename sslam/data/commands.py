"""`sslam manifest`: turn a dataset's on-disk layout into the canonical manifest.

    sslam manifest --config CFG --dataset NAME --out PATH        # reads datasets.NAME
    sslam manifest --adapter NAME --root DIR [--option key=value ...] --out PATH

Option values are parsed as YAML scalars/lists (`probe=false`, `max_bin=14`, `splits=[train,test]`).
"""
from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path
from typing import Any

import yaml

from sslam.runtime.configuration import from_dict, load_yaml, section
from sslam.data.adapters import ADAPTERS, get_adapter
from sslam.data.config import DatasetConfig
from sslam.data.holdout import hold_out
from sslam.data.manifest import Manifest, write_manifest
from sslam.runtime.errors import ConfigError


def _check_options(name: str, build, options: dict[str, Any], where: str) -> None:
    """Unknown or missing adapter options fail here, naming the key, before any file is read."""
    parameters = dict(inspect.signature(build).parameters)
    parameters.pop("root")
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise ConfigError(f"{where}: adapter {name!r} has no option(s) {unknown}; its options: {sorted(parameters)}")
    required = [key for key, p in parameters.items() if p.default is inspect.Parameter.empty and key not in options]
    if required:
        raise ConfigError(f"{where}: adapter {name!r} needs the option(s) {required}")


def build_manifest(config: DatasetConfig, where: str = "dataset") -> Manifest:
    """Dispatch to the adapter named by `config.adapter` and return its validated manifest."""
    build = get_adapter(config.adapter)
    if config.root is None:
        raise ConfigError(f"{where}.root: adapter {config.adapter!r} needs the dataset's root folder")
    root = Path(config.root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{where}.root: folder not found: {root}")
    _check_options(config.adapter, build, config.options, f"{where}.options")
    return hold_out(build(root, **config.options), config.holdout, where)


def parse_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--option expects key=value, got {text!r}")
    try:
        return key, yaml.safe_load(value) if value else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"--option {key}: cannot parse {value!r}: {error}") from error


def summary(manifest: Manifest, out: Path) -> str:
    splits = manifest.table["split"].value_counts().sort_index()
    per_split = ", ".join(f"{split}={count}" for split, count in splits.items())
    return f"wrote {out}: {len(manifest)} rows, {manifest.num_classes} classes, splits: {per_split or 'none'}"


def adapter_options_help() -> str:
    """One line per adapter listing its options, so `--help` documents every accepted key."""
    lines = ["adapter options (see docs/manifest.md for each on-disk layout):"]
    for name in sorted(ADAPTERS):
        parameters = list(inspect.signature(get_adapter(name)).parameters.values())[1:]
        listed = ", ".join(p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}" for p in parameters)
        lines.append(f"  {name}: {listed}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = adapter_options_help()
    parser.add_argument("--config", help="study YAML; with --dataset, read datasets.<NAME>")
    parser.add_argument("--dataset", help="name of the entry under `datasets:` in --config")
    parser.add_argument("--adapter", help=f"adapter to run directly: {', '.join(sorted(ADAPTERS))}")
    parser.add_argument("--root", help="dataset root folder (with --adapter)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="adapter option (repeatable); the value is parsed as YAML")
    parser.add_argument("--report", help="audioset availability scan: where to write the JSON report "
                        "(default when audio_dir is set: OUT with suffix .availability.json)")
    parser.add_argument("--out", required=True, help="output manifest .tsv (class list written beside it)")


def config_from_args(args: argparse.Namespace) -> tuple[DatasetConfig, str]:
    if args.config and args.dataset:
        if args.adapter or args.root or args.option:
            raise ConfigError("use either --config/--dataset or --adapter/--root/--option, not both")
        where = f"datasets.{args.dataset}"
        data = section(load_yaml(args.config), where, default=None)
        if not data:
            raise ConfigError(f"{args.config}: no section {where}")
        return from_dict(DatasetConfig, data, where=where), where
    if args.adapter:
        options = dict(parse_option(text) for text in args.option)
        return DatasetConfig(adapter=args.adapter, root=args.root, options=options), f"--adapter {args.adapter}"
    raise ConfigError("give --config CFG --dataset NAME, or --adapter NAME --root DIR")


def run(args: argparse.Namespace) -> int:
    config, where = config_from_args(args)
    out = Path(args.out)
    report = args.report
    if config.adapter == "audioset" and "audio_dir" in config.options and report is None:
        report = str(out.with_suffix(".availability.json"))
    if report is not None:
        config.options = {**config.options, "report": report}
    manifest = build_manifest(config, where)
    write_manifest(manifest, out)
    print(summary(manifest, out))
    if report is not None:
        missing = json.loads(Path(report).read_text())["missing"]
        print(f"availability report {report}: missing {missing}")
    return 0
