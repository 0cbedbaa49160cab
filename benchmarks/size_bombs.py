"""Small files that state huge sizes (issue 18): what each one costs a command, under a memory cap.

Builds every file of tests/bombs.py in a temporary folder, then runs one command per file in a fresh process
capped like `ulimit -v` at its imports' address space + `--budget-mib` (tests/capped.py), and prints, per case,
the exit code, the peak resident memory above the imports, and the command's last stderr/stdout line.
`--code DIR` measures another checkout (e.g. `git archive <commit> sslam | tar -x -C DIR`):

    PYTHONPATH=. .venv/bin/python benchmarks/size_bombs.py                       # this checkout
    PYTHONPATH=. .venv/bin/python benchmarks/size_bombs.py --code /tmp/before     # the code before the fix

The last line printed is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))   # the bomb builders and the capped runner are the tests' own

from bombs import (array_pickle, bytearray_pickle, deep_checkpoint, deflated_checkpoint,  # noqa: E402
                   legacy_storage_bomb, max_length_folder, odd_rate_manifest, row_bomb_shard, stride_zero_checkpoint)
from capped import cli_body, run_capped  # noqa: E402

READ_CHECKPOINT = """
from sslam.model.checkpoints.read import load_encoder
from sslam.runtime.errors import SslamError
try:
    load_encoder({path!r})
    print("loaded")
except SslamError as error:
    print("refused:", error)
"""
OPEN_SHARD = """
from sslam.data.datasets import FbankDataset
from sslam.runtime.errors import SslamError
try:
    FbankDataset([{path!r}], 0.0, 1.0, labelled=True)
    print("opened")
except SslamError as error:
    print("refused:", error)
"""


def build(folder: Path) -> dict[str, tuple[str, str]]:
    """case -> (preamble, body)."""
    from embed_helpers import tiny_encoder, write_project_checkpoint

    from sslam.data.cache import build_shard
    from sslam.data.synthetic import SyntheticConfig, generate_set

    manifest = odd_rate_manifest(folder / "odd", odd_rates=(48017,))
    encoder = tiny_encoder()
    checkpoint = write_project_checkpoint(folder / "tiny.pt", encoder)
    poly = generate_set("poly", SyntheticConfig(clip_seconds=1.0, poly_train_clips=10, poly_test_clips=6,
                                                odd_format_every=0), folder / "data")
    shard = build_shard(poly, folder / "good.h5", target_length=112).path
    cli = "import sslam.cli, sslam.data.cache, sslam.embeddings.extract"
    read = "import sslam.model.checkpoints.read"
    return {
        "cache build, 9 clips + 48,017 Hz": (cli, cli_body("cache", "build", "--manifest", manifest, "--out",
                                                           folder / "odd.h5", "--target-length", 64)),
        "extract, 9 clips + 48,017 Hz": (cli, cli_body("extract", checkpoint, folder / "odd", "--out",
                                                       folder / "features", "--num-workers", 0)),
        "shard declaring 10^9 rows": ("import sslam.data.datasets",
                                      OPEN_SHARD.format(path=str(row_bomb_shard(shard, folder / "rows.h5")))),
        "config.json max_length 1e8": (read, READ_CHECKPOINT.format(
            path=str(max_length_folder(folder / "folder", encoder, 1e8)))),
        "config.json max_length 2e6": (read, READ_CHECKPOINT.format(
            path=str(max_length_folder(folder / "folder2", encoder, 2e6)))),
        "stride-0 40000x40000 head": (read, READ_CHECKPOINT.format(
            path=str(stride_zero_checkpoint(folder / "stride0.pt", encoder)))),
        "79-byte bytearray(2**31) pickle": (read, READ_CHECKPOINT.format(
            path=str(bytearray_pickle(folder / "bytes.pt")))),
        "deflated .pt (4000x4000 zeros)": (read, READ_CHECKPOINT.format(
            path=str(deflated_checkpoint(folder / "deflated.pt", encoder)))),
        "numpy _reconstruct((2**31,))": (read, READ_CHECKPOINT.format(path=str(array_pickle(folder / "array.pt")))),
        "legacy .pt, a 40-GB storage": (read, READ_CHECKPOINT.format(
            path=str(legacy_storage_bomb(folder / "legacy.pt")))),
        "1000 blocks of empty tensors": (read, READ_CHECKPOINT.format(path=str(deep_checkpoint(folder / "deep.pt")))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=REPO, help="checkout whose sslam runs the commands")
    parser.add_argument("--budget-mib", type=int, default=1024, help="address space allowed above the imports")
    args = parser.parse_args()
    figures = {}
    with tempfile.TemporaryDirectory() as folder:
        for case, (preamble, body) in build(Path(folder)).items():
            run = run_capped(body, preamble=preamble, budget=args.budget_mib * 2**20, code=args.code, timeout=600)
            lines = [line for line in (run.stderr + "\n" + run.stdout).splitlines()
                     if line.strip() and not line.startswith("[")]
            traceback = "Traceback" in run.stderr
            figures[case] = {"exit": run.returncode, "growth_mib": round(run.growth / 2**20, 1),
                             "peak_mib": round(run.peak_rss / 2**20, 1), "traceback": traceback,
                             "last": lines[-1][:160] if lines else ""}
            print(f"{case:34s} exit {run.returncode}  +{run.growth / 2**20:7.1f} MiB  "
                  f"{'TRACEBACK ' if traceback else ''}{figures[case]['last']}", flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
