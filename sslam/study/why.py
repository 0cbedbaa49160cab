"""`sslam why`: which finished jobs a code change re-runs, and which of the functions they executed changed.

    sslam why --config config/demo.yaml [--all]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from sslam.study.dag import Study


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--config", required=True, help="the study YAML (as given to snakemake --configfile)")
    parser.add_argument("--all", action="store_true", help="also list the jobs whose code is unchanged")


def run(args: argparse.Namespace) -> int:
    """Which finished jobs a code change re-schedules, and which of the functions they executed changed."""
    study = Study.from_file(args.config, check_data_roots=False)
    scheduler = study.scheduler
    records = sorted(Path(study.results).glob("**/*.code.json"))
    if not records:
        print(f"no code records under {study.results}: nothing has run yet")
        return 0
    stale = 0
    for path in records:
        job = str(path).removesuffix(".code.json")
        scheduled = scheduler.scheduled(path, "sslam.cli")
        if not scheduled.recorded:
            stale += 1
            print(f"{job}: no code record this version can read (unfinished, damaged, or made under other "
                  "digest rules): the job re-runs")
        elif scheduled.changed:
            stale += 1
            old_rules = " (a record of digest rules 1: module paths are part of its digests, so code that only " \
                        "moved counts as changed)" if scheduled.rules == 1 else ""
            print(f"{job}: {len(scheduled.changed)} changed{old_rules}")
            index = scheduler.index(scheduled.rules)
            for unit in scheduled.changed:
                print(f"    {unit}" + ("  (removed)" if index.digest_of(unit) is None else ""))
        elif args.all:
            moved = f" ({len(scheduled.moved)} unit(s) moved)" if scheduled.moved else ""
            print(f"{job}: unchanged{moved}")
    print(f"{stale} of {len(records)} recorded jobs ran code that has changed since; snakemake re-runs them "
          f"and what depends on them")
    return 0
