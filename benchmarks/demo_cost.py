"""Where a finished workflow run spent its time, per rule, from Snakemake's own `benchmark:` files.

    python -m benchmarks.demo_cost results/demo                  # after `make demo`
    python -m benchmarks.demo_cost results/demo --wall 283.4     # add the run's measured wall clock

Every rule of the workflow writes a benchmark TSV (Snakemake measures the job's wall seconds `s` and the
CPU seconds of the job's processes `cpu_time`) under RESULTS/benchmarks/. This sums them per rule and
prints jobs, wall-seconds, CPU-seconds and CPU-seconds per job, so that two runs (before/after a change)
compare rule by rule. With `--wall`, the ratio of the summed job wall time to the run's wall clock shows
how well the cores were kept busy. The last line printed is one JSON object with every number.
"""
from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path


def rule_of(benchmark: Path, root: Path) -> str:
    """The rule is the first folder under benchmarks/ (or the file's stem for a one-job rule)."""
    parts = benchmark.relative_to(root).parts
    return parts[0] if len(parts) > 1 else benchmark.stem


def read_costs(results: Path) -> dict[str, dict[str, float]]:
    root = results / "benchmarks"
    totals: dict[str, dict[str, float]] = defaultdict(lambda: {"jobs": 0, "wall_s": 0.0, "cpu_s": 0.0})
    for benchmark in sorted(root.rglob("*.tsv")):
        with benchmark.open(newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        if not rows:
            continue
        total = totals[rule_of(benchmark, root)]
        total["jobs"] += 1
        total["wall_s"] += float(rows[-1]["s"])
        cpu = rows[-1].get("cpu_time", "NA")
        total["cpu_s"] += float(cpu) if cpu not in ("", "NA") else 0.0
    return dict(totals)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="the study's results folder (study.results)")
    parser.add_argument("--wall", type=float, help="the run's wall-clock seconds, if measured")
    args = parser.parse_args(argv)
    costs = read_costs(args.results)
    if not costs:
        print(f"no benchmark files under {args.results / 'benchmarks'}")
        return 1
    print(f"{'rule':<28}{'jobs':>6}{'wall-s':>10}{'CPU-s':>10}{'CPU-s/job':>11}")
    for rule, cost in sorted(costs.items(), key=lambda item: -item[1]["cpu_s"]):
        print(f"{rule:<28}{cost['jobs']:>6}{cost['wall_s']:>10.1f}{cost['cpu_s']:>10.1f}"
              f"{cost['cpu_s'] / cost['jobs']:>11.2f}")
    jobs = sum(cost["jobs"] for cost in costs.values())
    wall = sum(cost["wall_s"] for cost in costs.values())
    cpu = sum(cost["cpu_s"] for cost in costs.values())
    print(f"{'total':<28}{jobs:>6}{wall:>10.1f}{cpu:>10.1f}")
    summary = {"jobs": jobs, "job_wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
               "rules": {rule: {key: round(value, 2) for key, value in cost.items()} for rule, cost in costs.items()}}
    if args.wall:
        summary["run_wall_s"] = args.wall
        summary["busy_cores"] = round(wall / args.wall, 2)
        print(f"run wall clock {args.wall:.1f} s; job wall time / run wall clock = {wall / args.wall:.2f} cores busy")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
