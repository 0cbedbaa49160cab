"""`sslam doctor`: is this node ready for the GPU jobs? Versions, GPUs, and three live checks.

    sslam doctor            # on a GPU node (e.g. `srun --gpus=1 sslam doctor`)

Prints torch / CUDA build / cuDNN / NVIDIA driver / visible GPUs, then checks, on every visible GPU, a bf16 and
an fp32 matmul against the CPU result, bf16 autocast, and an NCCL all-reduce (a one-process group per GPU),
saying what is wrong where a check fails. Exit status 0 when everything needed for the GPU jobs works, 1 when
not (on a machine without a usable GPU, the first failed line says why).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from sslam.runtime.device import banner, cuda_unavailable_reason, driver_version


class Report:
    def __init__(self) -> None:
        self.failures = 0

    def line(self, status: str, what: str, detail: str = "") -> None:
        if status == "FAIL":
            self.failures += 1
        print(f"[{status:>4}] {what}" + (f": {detail}" if detail else ""), flush=True)


def check_matmul(report: Report, index: int, size: int = 2048) -> None:
    import torch

    device = torch.device("cuda", index)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    expected = a.double() @ b.double()
    for dtype, tolerance in ((torch.float32, 1e-3), (torch.bfloat16, 3e-2)):
        try:
            x, y = a.to(device, dtype), b.to(device, dtype)
            torch.cuda.synchronize(device)
            started = time.perf_counter()
            for _ in range(10):
                product = x @ y
            torch.cuda.synchronize(device)
            seconds = (time.perf_counter() - started) / 10
            error = ((product.double().cpu() - expected).norm() / expected.norm()).item()
        except RuntimeError as failure:
            report.line("FAIL", f"gpu {index} {dtype} matmul", str(failure).splitlines()[0])
            continue
        status = "ok" if error < tolerance else "FAIL"
        report.line(status, f"gpu {index} {str(dtype).removeprefix('torch.')} matmul {size}²",
                    f"relative error {error:.1e} (limit {tolerance:.0e}), {2 * size**3 / seconds / 1e12:.1f} TFLOP/s")


def check_autocast(report: Report, index: int) -> None:
    import torch

    device = torch.device("cuda", index)
    if not torch.cuda.is_bf16_supported():
        report.line("FAIL", f"gpu {index} bf16", "this GPU has no bfloat16 support: set precision: fp32 "
                    "(pretrain.stageK.precision, evaluation regimes' precision)")
        return
    layer = torch.nn.Linear(256, 256).to(device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        output = layer(torch.randn(8, 256, device=device))
    status = "ok" if output.dtype == torch.bfloat16 and torch.isfinite(output).all() else "FAIL"
    report.line(status, f"gpu {index} bf16 autocast", f"output dtype {output.dtype}")


def check_nccl(report: Report, index: int) -> None:
    import torch
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_nccl_available():
        report.line("FAIL", "NCCL", "this torch build has no NCCL: multi-GPU pretraining cannot run")
        return
    with tempfile.TemporaryDirectory() as folder:
        store = dist.FileStore(os.path.join(folder, "store"), 1)
        try:
            torch.cuda.set_device(index)
            dist.init_process_group("nccl", store=store, rank=0, world_size=1)
            value = torch.ones(4, device=torch.device("cuda", index))
            dist.all_reduce(value)
            torch.cuda.synchronize()
            report.line("ok" if value.sum().item() == 4 else "FAIL", f"gpu {index} NCCL all-reduce",
                        f"NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}")
        except (RuntimeError, ValueError) as failure:
            report.line("FAIL", f"gpu {index} NCCL all-reduce", str(failure).splitlines()[0])
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--skip-nccl", action="store_true", help="do not start an NCCL process group")


def run(args: argparse.Namespace) -> int:
    import torch

    report = Report()
    for line in banner(device="cuda" if torch.cuda.is_available() else "cpu"):
        print(line)
    report.line("ok", "torch", f"{torch.__version__}, CUDA build {torch.version.cuda or 'none (CPU-only wheel)'}")
    driver = driver_version()
    report.line("ok" if driver else "warn", "NVIDIA driver", driver or "not found (no GPU on this node?)")
    try:
        usable = torch.cuda.is_available() and torch.cuda.device_count() > 0
    except RuntimeError:
        usable = False
    if not usable:
        report.line("FAIL", "CUDA", f"unavailable — {cuda_unavailable_reason()}")
        print("doctor: the GPU jobs cannot run here (see README, 'Installing on a cluster')")
        return 1
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        report.line("ok", f"gpu {index}", f"{properties.name}, {properties.total_memory / 2**30:.1f} GiB, "
                    f"compute capability {properties.major}.{properties.minor}")
        check_matmul(report, index)
        check_autocast(report, index)
        if not args.skip_nccl:
            check_nccl(report, index)
    print(f"doctor: {report.failures} check(s) failed" if report.failures else "doctor: ready for the GPU jobs")
    return 1 if report.failures else 0
