"""Single-process or `torchrun` data parallelism with the same semantics, and the resumable data order.

Under torchrun (RANK/WORLD_SIZE/LOCAL_RANK in the environment) every rank joins one process group (NCCL on
GPU, gloo on CPU), reads a disjoint slice of each epoch's permutation, and DistributedDataParallel averages
the gradients. Averaging is what the official fairseq trainer does in effect: each GPU sums its own loss
(its "official" global-loss scaling is per device) and the summed gradient is divided by the number of masked
tokens of all GPUs, which is the same count on every GPU.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from sslam.runtime.device import resolve_device
from sslam.runtime.errors import ConfigError


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    # A gloo group over the same ranks for the loop's yes/no agreements (stop signal, finite losses): on CPU
    # tensors they never wait for the GPU, which an NCCL collective read back to the host does.
    control_group: Any = field(default=None, compare=False)

    @property
    def is_main(self) -> bool:
        """Only the main rank writes files (checkpoints, metrics, MLflow)."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistributedContext:
    """Join the torchrun process group if there is one; pick the device with `sslam.runtime.device.resolve_device`
    ("auto"/None = CUDA when it works; "cuda" without a usable GPU is one DeviceError line, within seconds)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = resolve_device(device or "auto", local_rank=local_rank)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    control_group = None
    if world_size > 1:
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
        control_group = dist.new_group(backend="gloo") if chosen.type == "cuda" else None
    return DistributedContext(rank, world_size, local_rank, chosen, control_group)


def shutdown_distributed(context: DistributedContext, wait_for_others: bool = True) -> None:
    if context.enabled and dist.is_initialized():
        if wait_for_others:
            dist.barrier()
        dist.destroy_process_group()


def all_ranks_agree(context: DistributedContext, flag: bool) -> bool:
    """True only if `flag` is True on every rank (so that all ranks stop together on a bad loss)."""
    if not context.enabled:
        return flag
    return min_over_ranks(context, 1 if flag else 0) == 1


def min_over_ranks(context: DistributedContext, value: int) -> int:
    """The smallest of every rank's `value` (collective), through the control group when there is one."""
    if not context.enabled:
        return value
    on_host = context.control_group is not None or context.device.type == "cpu"
    tensor = torch.tensor([value], dtype=torch.long, device="cpu" if on_host else context.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN, group=context.control_group)
    return int(tensor.item())


def any_rank(context: DistributedContext, flag: bool) -> bool:
    """True if `flag` is True on some rank (a stop signal seen by one rank stops all at the same update)."""
    if not context.enabled:
        return flag
    return not all_ranks_agree(context, not flag)


class EpochBatchSampler:
    """Endless stream of index batches: one seeded random permutation per epoch, split across ranks.

    Epoch e's permutation depends only on (seed, e), so the whole stream is determined by one integer, the
    number of batches already consumed (`start_batch`); that is the data-order state a checkpoint keeps.
    Each rank takes every `world_size`-th index of the permutation (the tail that does not divide evenly is
    dropped, as DistributedSampler(drop_last=True)), then cuts it into full batches (drop_last).
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start_batch: int = 0) -> None:
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size, self.start_batch = rank, world_size, start_batch
        self.batches_per_epoch = (num_items // world_size) // batch_size
        if self.batches_per_epoch == 0:
            raise ConfigError(
                f"{num_items} clips cannot fill one batch of {batch_size} on each of {world_size} device(s); "
                "lower pretrain.stageK.batch_size or check that the cache holds train/unlabeled clips")

    def epoch_permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_items, generator=generator)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, batch = divmod(self.start_batch, self.batches_per_epoch)
        while True:
            per_rank = self.epoch_permutation(epoch)[self.rank::self.world_size]
            for index in range(batch, self.batches_per_epoch):
                start = index * self.batch_size
                yield per_rank[start:start + self.batch_size].tolist()
            epoch, batch = epoch + 1, 0
