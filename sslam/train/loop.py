"""The pretraining loop: objects in (objective, dataset, config), checkpoints and metrics out.

One update: forward the objective on a batch of normalised fbank, stop if any loss term is not finite,
backward (DDP averages the gradients), clip the global grad norm, AdamW step, advance the lr schedule, then
move the EMA teacher with the annealed decay of the update count. The loop never parses YAML; see
`sslam.train.pretrain` for the command that builds its inputs.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from sslam.errors import SslamError
from sslam.model.teacher import ema_decay
from sslam.train.config import TrainConfig
from sslam.train.distributed import DistributedContext, EpochBatchSampler, all_ranks_agree
from sslam.train.metrics import MetricsLog, Throughput, progress_bar
from sslam.train.optim import build_optimizer
from sslam.train.schedule import build_scheduler
from sslam.model.checkpoints import CheckpointError
from sslam.train.state import (atomic_torch_save, capture_rng_state, project_checkpoint, restore_rng_state,
                               save_training_state)

log = logging.getLogger(__name__)


# TrainConfig fields that fix the update sequence: resuming under other values could not be exact.
SCHEDULE_KEYS = ("steps", "lr", "min_lr", "warmup_steps", "betas", "eps", "weight_decay", "decay_all_parameters",
                 "clip_grad_norm", "ema_start", "ema_end", "ema_anneal_steps")


class NonFiniteLossError(SslamError):
    """A loss term or the gradient norm became NaN/inf; the last written snapshot is left untouched."""


@dataclass
class RunIdentity:
    """What a checkpoint records about the run besides the weights."""

    stage: int
    variant: str | None
    encoder_config: dict
    decoder_config: dict
    config: dict = field(default_factory=dict)  # every config section that shaped the run, for the record
    input: dict | None = None  # {norm_mean, norm_std, target_length} of the training input, for extraction


class Pretrainer:
    """Runs `config.steps` updates of `objective` on `dataset`, writing into `out_dir`."""

    def __init__(self, objective: nn.Module, dataset: Dataset, config: TrainConfig, out_dir: str | Path,
                 identity: RunIdentity, context: DistributedContext | None = None,
                 metrics: MetricsLog | None = None, show_progress: bool | None = None) -> None:
        self.objective = objective
        self.dataset, self.config, self.identity = dataset, config, identity
        self.out_dir = Path(out_dir)
        self.context = context or DistributedContext()
        self.metrics = metrics or MetricsLog(self.out_dir / "metrics.jsonl")
        self.show_progress = show_progress
        self.device = self.context.device
        self.objective.to(self.device)
        self.optimizer = build_optimizer(
            objective.trainable_modules(), lr=config.lr, betas=config.betas,
            eps=config.eps, weight_decay=config.weight_decay, decay_all_parameters=config.decay_all_parameters)
        self.scheduler = build_scheduler(self.optimizer, config.lr, config.warmup_steps, config.steps,
                                         config.min_lr)
        self.trainable = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.step = 0
        self.batches_consumed = 0
        self._rng_to_restore: dict[str, Any] | None = None

    # ------------------------------------------------------------------ state
    def snapshot(self) -> dict[str, Any]:
        """Project checkpoint + optimizer, scheduler, data position and every rank's random state."""
        checkpoint = self._weights()
        rng = capture_rng_state({"objective": self.objective.generator_state()})
        if self.context.enabled:
            gathered: list[Any] = [None] * self.context.world_size
            dist.all_gather_object(gathered, rng)
            rng_per_rank = gathered
        else:
            rng_per_rank = [rng]
        checkpoint.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                          rng=rng_per_rank, data=self.sampler_state(), config=self.identity.config,
                          heads={name: {key: tensor.detach().cpu() for key, tensor in module.state_dict().items()}
                                 for name, module in self.objective.pretraining_heads().items()})
        return checkpoint

    def _weights(self) -> dict[str, Any]:
        """The project checkpoint of the current weights, on the CPU (readable on a machine without a GPU)."""
        def on_cpu(module: nn.Module) -> dict[str, torch.Tensor]:
            return {name: tensor.detach().cpu() for name, tensor in module.state_dict().items()}

        return project_checkpoint(
            encoder_config=self.identity.encoder_config, decoder_config=self.identity.decoder_config,
            student=on_cpu(self.objective.student), decoder=on_cpu(self.objective.decoder),
            teacher=on_cpu(self.objective.teacher.encoder), stage=self.identity.stage,
            variant=self.identity.variant, step=self.step, input=self.identity.input)

    def sampler_state(self) -> dict[str, Any]:
        return {"batches_consumed": self.batches_consumed, "num_items": len(self.dataset),
                "batch_size": self.config.batch_size, "world_size": self.context.world_size,
                "seed": self.config.seed}

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Continue exactly where `snapshot` (from `load_training_state`) left off."""
        if snapshot["stage"] != self.identity.stage or snapshot.get("variant") != self.identity.variant:
            raise CheckpointError(
                f"the snapshot in {self.out_dir} is stage {snapshot['stage']} / variant {snapshot.get('variant')}, "
                f"not stage {self.identity.stage} / variant {self.identity.variant}")
        expected = self.sampler_state()
        for key in ("num_items", "batch_size", "world_size", "seed"):
            if snapshot["data"][key] != expected[key]:
                raise CheckpointError(
                    f"cannot resume exactly: the snapshot was taken with {key}={snapshot['data'][key]}, "
                    f"this run has {key}={expected[key]}")
        # The schedule is part of the state (LambdaLR stores its settings): a changed one cannot be exact.
        before, now = snapshot.get("config", {}).get("pretrain", {}), self.identity.config.get("pretrain", {})
        changed = [key for key in SCHEDULE_KEYS if key in before and key in now and before[key] != now[key]]
        if changed:
            raise CheckpointError(
                f"cannot resume exactly: {', '.join(f'{k} {before[k]} -> {now[k]}' for k in changed)} changed "
                f"since the snapshot in {self.out_dir}; start a new run folder instead")
        self.objective.student.load_state_dict(snapshot["student"])
        self.objective.decoder.load_state_dict(snapshot["decoder"])
        self.objective.teacher.encoder.load_state_dict(snapshot["teacher"])
        # Pretraining-only heads (MixIT) live in the snapshot only, never in checkpoint.pt.
        saved_heads = snapshot.get("heads", {})
        for name, module in self.objective.pretraining_heads().items():
            if name not in saved_heads:
                raise CheckpointError(f"cannot resume exactly: the snapshot in {self.out_dir} has no {name!r} head")
            module.load_state_dict(saved_heads[name])
        self.optimizer.load_state_dict(snapshot["optimizer"])
        self.scheduler.load_state_dict(snapshot["scheduler"])
        self.step = snapshot["step"]
        self.batches_consumed = snapshot["data"]["batches_consumed"]
        # Random states go back in only once the data iterator exists (creating one may draw numbers).
        self._rng_to_restore = snapshot["rng"][self.context.rank]

    def save_state(self) -> None:
        snapshot = self.snapshot()  # collective under DDP: every rank takes part
        if self.context.is_main:
            save_training_state(self.out_dir, snapshot)

    def save_final(self, path: Path) -> None:
        if self.context.is_main:
            atomic_torch_save(self._weights(), path)

    # ------------------------------------------------------------------ loop
    def _batches(self):
        self.sampler = EpochBatchSampler(len(self.dataset), self.config.batch_size, self.config.seed,
                                         self.context.rank, self.context.world_size, self.batches_consumed)
        # Own generator: the loader must not draw from the global torch RNG that the objective uses.
        loader = DataLoader(self.dataset, batch_sampler=self.sampler, num_workers=self.config.num_workers,
                            pin_memory=self.device.type == "cuda", generator=torch.Generator(),
                            persistent_workers=self.config.num_workers > 0)
        return iter(loader)

    def _model(self) -> nn.Module:
        if not self.context.enabled:
            return self.objective
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.objective, device_ids=device_ids)

    def run(self) -> dict[str, float]:
        """Train up to `config.steps` updates; returns the last logged metrics."""
        config, autocast_dtype = self.config, self.config.autocast_dtype(self.device.type)
        model = self._model()
        batches = self._batches()
        if self._rng_to_restore is not None:
            restore_rng_state(self._rng_to_restore)
            self.objective.set_generator_state(self._rng_to_restore["objective"])
        self.objective.train()
        if self.context.is_main:
            self.metrics.truncate_after(self.step)  # the steps after the snapshot are re-done and re-logged
        # None = decide from the terminal; other ranks never draw a bar.
        bar = progress_bar(config.steps, self.step, self.show_progress if self.context.is_main else False,
                           f"stage {self.identity.stage}")
        throughput, window, last = Throughput(), _Window(), {}
        while self.step < config.steps:
            fbank = next(batches)
            fbank = (fbank[0] if isinstance(fbank, (list, tuple)) else fbank).to(self.device, non_blocking=True)
            lr = self.optimizer.param_groups[0]["lr"]
            output, grad_norm = self.update(model, fbank, autocast_dtype)
            self.batches_consumed += 1
            throughput.add(fbank.shape[0] * self.context.world_size)
            window.add(loss=output.loss.detach(), **output.terms)
            bar.update(1)
            if self.step % config.log_every == 0 or self.step == config.steps:
                # Loss terms: means over the updates since the last line; lr and grad norm: this update's.
                last = {**self._reduce(window.mean()), "lr": lr, "grad_norm": grad_norm,
                        "ema_decay": self.teacher_decay(self.step), "clips_per_s": throughput.rate(),
                        "epoch": self.batches_consumed / self.sampler.batches_per_epoch}
                window = _Window()
                if self.context.is_main:
                    self.metrics.write(self.step, last)
                    bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{lr:.2e}")
            if self.step % config.checkpoint_every == 0 or self.step == config.steps:
                self.save_state()
        bar.close()
        return last

    def update(self, model: nn.Module, fbank: torch.Tensor, autocast_dtype: torch.dtype | None):
        """One optimizer update on `fbank` (already on the device) through `model` (the objective, or its
        DDP / compiled wrapper), then the EMA step. Returns (objective output, grad norm before clipping)."""
        with torch.autocast(self.device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            output = model(fbank)
        self._stop_if_not_finite(output)
        self.optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        grad_norm = self._clip_gradients()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.objective.update_teacher(self.teacher_decay(self.step))
        return output, grad_norm

    def teacher_decay(self, step: int) -> float:
        """The EMA decay after this stage's `step`-th update (the count restarts in Stage 2, so the
        anneal does too); the stage's TrainConfig is the schedule's only owner."""
        config = self.config
        return ema_decay(step, config.ema_start, config.ema_end, config.ema_anneal_steps)

    def _stop_if_not_finite(self, output) -> None:
        values = {"loss": output.loss.detach(), **output.terms}
        finite = bool(torch.isfinite(torch.stack([v.float() for v in values.values()])).all())  # one sync
        if not all_ranks_agree(self.context, finite):
            bad = [name for name, value in values.items() if not torch.isfinite(value).all()]
            where = ", ".join(f"{name}={float(values[name]):.4g}" for name in bad)
            raise NonFiniteLossError(
                f"non-finite loss at update {self.step + 1}: {where or 'on another rank'}; "
                f"the last snapshot in {self.out_dir / 'state'} (step <= {self.step}) is left intact")

    def _clip_gradients(self) -> float:
        max_norm = self.config.clip_grad_norm if self.config.clip_grad_norm > 0 else math.inf
        norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, max_norm))
        if not math.isfinite(norm):
            raise NonFiniteLossError(
                f"non-finite gradient norm at update {self.step + 1}; the last snapshot is left intact")
        return norm

    def _reduce(self, values: dict[str, float]) -> dict[str, float]:
        """Average logged values over ranks (every rank calls this at the same steps)."""
        if not self.context.enabled:
            return values
        names = sorted(values)
        stacked = torch.tensor([values[n] for n in names], device=self.device, dtype=torch.float64)
        dist.all_reduce(stacked)
        return {n: float(v) / self.context.world_size for n, v in zip(names, stacked.tolist())}


class _Window:
    """Running means of the loss terms between two log lines (kept on the device: no sync per step)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, **values: torch.Tensor) -> None:
        for name, value in values.items():
            value = value.detach().double()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.count += 1

    def mean(self) -> dict[str, float]:
        return {name: float(total) / max(1, self.count) for name, total in self.sums.items()}
