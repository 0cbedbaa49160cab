"""The `sslam` command line: argument parsing and dispatch to the module that owns each command.

Each subcommand lives in the module that owns its work; that module exposes
``add_arguments(parser, command)`` and ``run(args) -> int | None`` (``args.command`` holds the
subcommand, so one module may serve several). Modules are imported only when
their subcommand runs, so `sslam --help` stays fast and a missing optional dependency of one
command never breaks another.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from sslam.fingerprints import Registry, finish_recording

DESCRIPTION = ("Embed audio with SSLAM/EAT encoders, and run the SSLAM study (pretraining, evaluation, tables). "
               "`sslam COMMAND --help` explains a command and shows its defaults.")
EPILOG = ("Common starting points: `sslam extract hf:ta012/SSLAM_pretrain clips/ --out feats.h5` embeds a folder of "
          "audio files (add `--layer all --granularity mean` for every layer); `sslam export CKPT --format onnx --out "
          "sslam.onnx` writes an ONNX encoder; `make demo` runs the whole study on synthetic data (CPU, minutes); "
          "`sslam plan --config config/config.yaml --gpu H100` says what the paper's study costs. Documentation: "
          "README.md, docs/embeddings.md, docs/checkpoints.md.")

# subcommand -> the module that runs it; a Registry, so that a job depends on its own entry only.
COMMANDS = Registry("COMMANDS", {
    "manifest": "sslam.data.commands",
    "synth": "sslam.data.synthetic",
    "cache": "sslam.data.cache",
    "polyphony": "sslam.data.polyphony",
    "pretrain": "sslam.train.pretrain",
    "finetune": "sslam.evaluation.run",
    "probe": "sslam.evaluation.run",
    "extract": "sslam.embeddings.extract",
    "convert": "sslam.model.checkpoints.convert",
    "export": "sslam.model.checkpoints.export",
    "tables": "sslam.tables.aggregate",
    "track": "sslam.runtime.mlflow_tracking",
    "doctor": "sslam.runtime.doctor",
    "plan": "sslam.study.plan",
    "why": "sslam.study.why",
})
# subcommand -> its one line in `sslam --help` (read only as help text: editing it re-runs no job).
SUMMARIES = {
    "manifest": "build the canonical manifest of a dataset from its on-disk layout",
    "synth": "write the embedded synthetic corpus (audio + canonical manifests)",
    "cache": "build or verify HDF5 spectrogram cache shards",
    "polyphony": "AudioSet polyphony analysis (paper Appendix B.1, Figure 3)",
    "pretrain": "Stage 1 / Stage 2 self-supervised pretraining",
    "finetune": "fine-tune a pretrained encoder on a benchmark",
    "probe": "linear-probe a frozen pretrained encoder on a benchmark",
    "extract": "extract frozen features from audio files",
    "convert": "convert a checkpoint (fairseq, HF, own) to safetensors",
    "export": "export an encoder as a Hugging Face-style folder or ONNX (or a random init)",
    "tables": "aggregate metrics.json files into the paper's tables and plots",
    "track": "MLflow helpers: initialise the study store, log a finished job",
    "doctor": "check torch, CUDA, the driver and the GPUs: matmul, bf16 autocast, NCCL",
    "plan": "what a study costs before it is submitted: jobs, GPU-hours, cache disk, GPU memory",
    "why": "which finished jobs a code change re-runs, and which functions they ran changed",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sslam", description=DESCRIPTION, epilog=EPILOG)

    parser.add_argument("--version", action="version", version=f"sslam {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        sub.add_parser(name, help=SUMMARIES[name], add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        build_parser().parse_args(argv)  # prints usage / errors and exits
        return 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name])
    sub = argparse.ArgumentParser(prog=f"sslam {name}", description=SUMMARIES[name])
    module.add_arguments(sub, name)
    args = sub.parse_args(argv[1:])
    args.command = name
    try:
        code = int(module.run(args) or 0)
    except SslamError as error:
        print(f"sslam {name}: error: {error}", file=sys.stderr)
        return 1
    if code == 0:
        finish_recording()  # the workflow's record of the code this job executed (sslam/fingerprints/recorder.py)
    return code


from sslam import __version__
from sslam.runtime.errors import SslamError  # noqa: E402  (kept at the bottom: cli must import nothing heavy first)

if __name__ == "__main__":
    sys.exit(main())
