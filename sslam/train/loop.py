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

from sslam.runtime.errors import SslamError
from sslam.model.teacher import ema_decay
from sslam.runtime.progress import Progress
from sslam.fingerprints import compiled
from sslam.runtime.jobs import MetricsLog
from sslam.runtime.snapshots import Preempted, StopSignals
from sslam.train.config import TrainConfig
from sslam.train.distributed import DistributedContext, EpochBatchSampler, all_ranks_agree, any_rank
from sslam.train.metrics import Throughput
from sslam.train.optim import build_optimizer
from sslam.train.schedule import build_scheduler
from sslam.train.state import (atomic_torch_save, capture_rng_state, job_mismatch, project_checkpoint,
                               restore_rng_state, run_settings, save_training_state)

log = logging.getLogger(__name__)


class CheckpointMismatch(SslamError):
    """A snapshot was written by another code version or with other settings than this run's."""


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
    fingerprint: str | None = None              # the job's code fingerprint (sslam.fingerprints.job_fingerprint)


class Pretrainer:
    """Runs `config.steps` updates of `objective` on `dataset`, writing into `out_dir`."""

    def __init__(self, objective: nn.Module, dataset: Dataset, config: TrainConfig, out_dir: str | Path,
                 identity: RunIdentity, context: DistributedContext | None = None,
                 metrics: MetricsLog | None = None, show_progress: bool | None = None,
                 stop: StopSignals | None = None) -> None:
        self.objective = objective
        self.dataset, self.config, self.identity = dataset, config, identity
        self.out_dir = Path(out_dir)
        self.context = context or DistributedContext()
        self.metrics = metrics or MetricsLog(self.out_dir / "metrics.jsonl")
        self.show_progress = show_progress
        self.stop = stop
        self.device = self.context.device
        self.objective.to(self.device)
        self.optimizer = build_optimizer(
            objective.trainable_modules(), lr=config.lr, betas=config.betas,
            eps=config.eps, weight_decay=config.weight_decay, decay_all_parameters=config.decay_all_parameters,
            fused=self.device.type == "cuda")
        self.scheduler = build_scheduler(self.optimizer, config.lr, config.warmup_steps, config.steps,
                                         config.min_lr)
        self.trainable = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.step = 0
        self.batches_consumed = 0
        self._rng_to_restore: dict[str, Any] | None = None
        self._metrics_to_restore: list[str] | None = None
        self._window_to_restore: dict[str, Any] | None = None
        self._window = _Window()

    # ------------------------------------------------------------------ state
    def snapshot(self) -> dict[str, Any]:
        """Project checkpoint + optimizer, scheduler, data position and every rank's random state."""
        checkpoint = self._weights()
        rng = capture_rng_state({"objective": self.objective.generator_state()})
        window = self._window.state()  # the loss sums since the last log line, so the next line is exact too
        checkpoint.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                          rng=self._gather(rng), window=self._gather(window), data=self.sampler_state(),
                          config=self.identity.config, job=self.job(),
                          metrics_log=self.metrics.lines() if self.context.is_main else [],
                          heads={name: {key: tensor.detach().cpu() for key, tensor in module.state_dict().items()}
                                 for name, module in self.objective.pretraining_heads().items()})
        return checkpoint

    def _gather(self, value: Any) -> list[Any]:
        """`value` of every rank, in rank order (collective under DDP)."""
        if not self.context.enabled:
            return [value]
        gathered: list[Any] = [None] * self.context.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def job(self) -> dict[str, Any]:
        return self.expected_job(self.identity, self.config, len(self.dataset), self.context.world_size)

    @staticmethod
    def expected_job(identity: RunIdentity, config: TrainConfig, num_items: int, world_size: int) -> dict[str, Any]:
        """What a snapshot must record to be resumed by this run: the code fingerprint and every setting that
        decides the sequence of updates (config sections, data order, world size)."""
        data = {"num_items": num_items, "batch_size": config.batch_size, "world_size": world_size,
                "seed": config.seed}
        return {"fingerprint": identity.fingerprint,
                "settings": {**run_settings(identity.config), "stage": identity.stage, "variant": identity.variant,
                             "data": data}}

    @staticmethod
    def snapshot_problem(snapshot: dict[str, Any], expected: dict[str, Any]) -> str | None:
        """Why `snapshot` cannot be continued exactly by the run of `expected_job(...)` (None: it can)."""
        return job_mismatch(snapshot.get("job"), expected)

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
        return {"batches_consumed": self.batches_consumed, **self.job()["settings"]["data"]}

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Continue exactly where `snapshot` (from `load_training_state`) left off; the caller has checked
        `snapshot_problem(snapshot, ...)` first."""
        problem = self.snapshot_problem(snapshot, self.job())
        if problem is not None:
            raise CheckpointMismatch(f"cannot resume {self.out_dir} exactly: {problem}")
        self.objective.student.load_state_dict(snapshot["student"])
        self.objective.decoder.load_state_dict(snapshot["decoder"])
        self.objective.teacher.encoder.load_state_dict(snapshot["teacher"])
        # Pretraining-only heads (MixIT) live in the snapshot only, never in checkpoint.pt.
        saved_heads = snapshot.get("heads", {})
        for name, module in self.objective.pretraining_heads().items():
            if name not in saved_heads:
                raise CheckpointMismatch(f"cannot resume exactly: the snapshot in {self.out_dir} has no {name!r} head")
            module.load_state_dict(saved_heads[name])
        self.optimizer.load_state_dict(snapshot["optimizer"])
        self.scheduler.load_state_dict(snapshot["scheduler"])
        self.step = snapshot["step"]
        self.batches_consumed = snapshot["data"]["batches_consumed"]
        self._metrics_to_restore = snapshot.get("metrics_log")
        # Random states go back in only once the data iterator exists (creating one may draw numbers).
        self._rng_to_restore = snapshot["rng"][self.context.rank]
        self._window_to_restore = snapshot.get("window", [None] * self.context.world_size)[self.context.rank]

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
        """What the update calls: the objective, wrapped in DDP under torchrun, compiled when asked for
        (after the DDP wrap, so that the compiler sees DDP's gradient buckets)."""
        model: nn.Module = self.objective
        if self.context.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=device_ids)
        return compiled(model) if self.config.compile else model

    def run(self) -> dict[str, float]:
        """Train up to `config.steps` updates; returns the last logged metrics. On a stop signal (see
        `sslam.runtime.snapshots.StopSignals`) the state is written after the current update and `Preempted` raised."""
        config, autocast_dtype = self.config, self.config.autocast_dtype(self.device.type)
        model = self._model()
        batches = self._batches()
        window = _Window()
        if self._rng_to_restore is not None:
            restore_rng_state(self._rng_to_restore)
            self.objective.set_generator_state(self._rng_to_restore["objective"])
            window = _Window.from_state(self._window_to_restore, self.device)
        self.objective.train()
        if self.context.is_main:
            if self._metrics_to_restore is not None:  # also when the log itself is gone (a re-run job)
                self.metrics.restore(self._metrics_to_restore, self.step)
            else:
                self.metrics.restore(self.metrics.lines(), self.step)  # the steps after the snapshot are re-done
        progress = self._progress()
        throughput, last = Throughput(), {}
        try:
            while self.step < config.steps:
                fbank = next(batches)
                fbank = (fbank[0] if isinstance(fbank, (list, tuple)) else fbank).to(self.device, non_blocking=True)
                lr = self.optimizer.param_groups[0]["lr"]
                output, grad_norm = self.update(model, fbank, autocast_dtype)
                self.batches_consumed += 1
                throughput.add(fbank.shape[0] * self.context.world_size)
                window.add(loss=output.loss.detach(), **output.terms)
                self._window = window
                if self.step % config.log_every == 0 or self.step == config.steps:
                    # Loss terms: means over the updates since the last line; lr and grad norm: this update's.
                    last = {**self._reduce(window.mean()), "lr": lr, "grad_norm": grad_norm,
                            "ema_decay": self.teacher_decay(self.step), "clips_per_s": throughput.rate(),
                            "epoch": self.batches_consumed / self.sampler.batches_per_epoch}
                    window = self._window = _Window()
                    if self.context.is_main:
                        self.metrics.write({"step": self.step, **last})
                if progress is not None:
                    progress.update(1, **({"loss": last["loss"], "lr": lr} if last else {}))
                saved = self.step % config.checkpoint_every == 0 or self.step == config.steps
                if saved:
                    self.save_state()
                if self.stop is not None and any_rank(self.context, self.stop.requested):
                    if not saved:
                        self.save_state()
                    raise Preempted(f"stopped after update {self.step} of {config.steps}; the state in "
                                    f"{self.out_dir / 'state'} resumes it")
        finally:
            if progress is not None:
                progress.close()
        return last

    def _progress(self) -> Progress | None:
        """Log lines on the main rank (every 30 s); `show_progress` only decides the interactive bar."""
        if not self.context.is_main:
            return None
        return Progress(self.config.steps, f"stage {self.identity.stage}", initial=self.step, rate_unit="clips",
                        rate_per_unit=self.config.batch_size * self.context.world_size, bar=self.show_progress)

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

    def state(self) -> dict[str, Any]:
        return {"sums": {name: total.detach().cpu() for name, total in self.sums.items()}, "count": self.count}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None, device: torch.device) -> "_Window":
        window = cls()
        if state:
            window.sums = {name: total.to(device) for name, total in state["sums"].items()}
            window.count = state["count"]
        return window
