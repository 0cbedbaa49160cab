"""What Stage-1 pretraining buys on the demo's benchmarks: linear-probe scores of the Stage-1 encoder against
the random-init encoder of the same shape, for several Stage-1 budgets, through the demo's own workflow.

    python -m benchmarks.demo_pretraining_gain --steps 120 360 --seeds 0 1 2
    python -m benchmarks.demo_pretraining_gain --steps 240 --set synthetic.pretrain_clips=1024 --out /tmp/gain

For every budget it writes a copy of config/demo.yaml (with `--set` overrides and the Stage-1 step count,
warm-up and EMA anneal scaled with it) and asks Snakemake for the linear-probe metrics of `stage1` and `random`
on each benchmark and seed: the same rules, commands and settings as `make demo`. It prints per budget the mean
± sample std over seeds of each model, the difference, whether the difference exceeds the larger of the two
seed spreads, and the Stage-1 wall time; the last line is one JSON object with every number. It reads only
what the evaluation jobs report on their test sets; nothing here chooses a setting.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def set_value(config: dict, assignment: str) -> None:
    """`a.b.c=VALUE` (VALUE parsed as YAML) into the nested dict."""
    key, _, text = assignment.partition("=")
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
        node = node.setdefault(name, {})
    node[leaf] = yaml.safe_load(text)


def study_config(steps: int, results: Path, benchmarks: list[str], seeds: list[int], overrides: list[str]) -> dict:
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    for assignment in overrides:
        set_value(config, assignment)
    stage1 = config["pretrain"]["stage1"]
    scale = steps / stage1["steps"]
    stage1.update(steps=steps, warmup_steps=max(1, round(stage1["warmup_steps"] * scale)),
                  ema_anneal_steps=max(1, round(stage1["ema_anneal_steps"] * scale)),
                  checkpoint_every=max(1, steps // 2))
    config["study"].update(results=str(results), seeds=seeds, benchmarks=benchmarks, regimes=["linear"])
    config["study"]["tables"]["specs"] = []
    return config


def run_budget(steps: int, out: Path, benchmarks: list[str], seeds: list[int], overrides: list[str],
               cores: int) -> dict:
    results = out / f"stage1-{steps}"
    config_path = out / f"stage1-{steps}.yaml"
    config_path.write_text(yaml.safe_dump(study_config(steps, results, benchmarks, seeds, overrides), sort_keys=False))
    targets = [str(results / "eval" / model / benchmark / "linear" / f"seed{seed}" / "metrics.json")
               for model in ("stage1", "random") for benchmark in benchmarks for seed in seeds]
    started = time.perf_counter()
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile"),
               "--configfile", str(config_path), "--cores", str(cores), "--quiet", "rules", "--", *targets]
    subprocess.run(command, cwd=REPO, check=True)
    wall = time.perf_counter() - started
    pretrain_benchmark = results / "benchmarks" / "pretrain" / "stage1.tsv"
    stage1_s = float(pretrain_benchmark.read_text().splitlines()[-1].split("\t")[0])
    scores: dict[str, dict[str, list[float]]] = {}
    for model in ("stage1", "random"):
        for benchmark in benchmarks:
            values = [json.loads((results / "eval" / model / benchmark / "linear" / f"seed{seed}" / "metrics.json")
                                 .read_text())["value"] * 100 for seed in seeds]
            scores.setdefault(benchmark, {})[model] = values
    return {"steps": steps, "stage1_wall_s": stage1_s, "run_wall_s": round(wall, 1), "scores": scores}


def spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[120], help="Stage-1 update budgets to compare")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--benchmarks", nargs="+", default=["synth_mono", "synth_poly"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of config/demo.yaml, e.g. synthetic.pretrain_clips=1024")
    parser.add_argument("--out", type=Path, default=Path("/tmp/sslam-demo-gain"))
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for steps in args.steps:
        run = run_budget(steps, args.out, args.benchmarks, args.seeds, args.overrides, args.cores)
        runs.append(run)
        print(f"Stage 1, {steps} updates ({run['stage1_wall_s']:.0f} s): linear probe, mean ± std over seeds "
              f"{args.seeds}")
        for benchmark, models in run["scores"].items():
            pretrained, random = models["stage1"], models["random"]
            gain = statistics.mean(pretrained) - statistics.mean(random)
            margin = max(spread(pretrained), spread(random))
            verdict = "beyond the seed spread" if gain > margin else "within the seed spread"
            print(f"  {benchmark:<12} stage1 {statistics.mean(pretrained):5.1f} ± {spread(pretrained):4.1f}   "
                  f"random {statistics.mean(random):5.1f} ± {spread(random):4.1f}   Δ {gain:+5.1f} ({verdict})")
            models["gain"], models["margin"] = round(gain, 2), round(margin, 2)
    print(json.dumps({"overrides": args.overrides, "seeds": args.seeds, "runs": runs}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
