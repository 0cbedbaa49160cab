"""The pretraining loop: objects in (objective, dataset, config), checkpoints and metrics out.

One update: forward the objective on a batch of normalised fbank, backward (DDP averages the gradients),
clip the global grad norm, AdamW step, advance the lr schedule, then move the EMA teacher with the annealed
decay of the update count. The loop never parses YAML; see `sslam.train.pretrain` for the command that builds
its inputs.

A steady-state update never waits for the device: the loss terms and the gradient norm stay there and are
read every `log_every` updates, before every snapshot and at the end (docs/performance.md). A non-finite
loss or gradient norm then stops the run naming the first update that had one, before anything is written
after it: a NaN costs at most `log_every` wasted updates, never a snapshot.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from sslam.runtime.errors import SslamError, first_line
from sslam.model.teacher import ema_decay
from sslam.runtime.progress import Progress
from sslam.fingerprints import compiled
from sslam.runtime.jobs import MetricsLog, SteadyState
from sslam.runtime.snapshots import Preempted, StopSignals
from sslam.train.config import TrainConfig
from sslam.train.distributed import DistributedContext, EpochBatchSampler, any_rank, min_over_ranks
from sslam.train.metrics import Throughput
from sslam.train.optim import FlatParameters, adamw, parameter_groups
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
    """Runs `config.steps` updates of `objective` on `dataset`, writing into `out_dir`.

    `on_steady` is called once, as soon as the loop has run every kind of step it has (an update, a log point
    and a snapshot): from then on its updates run no function the first ones did not (the job harness pauses
    the code recorder there), until `on_steady_end`, called when the loop stops stepping however it stops.
    `fused_optimizer`: AdamW's fused kernel (default: on CUDA, as `build_optimizer` says).
    """

    def __init__(self, objective: nn.Module, dataset: Dataset, config: TrainConfig, out_dir: str | Path,
                 identity: RunIdentity, context: DistributedContext | None = None,
                 metrics: MetricsLog | None = None, show_progress: bool | None = None,
                 stop: StopSignals | None = None, on_steady: Callable[[], None] | None = None,
                 on_steady_end: Callable[[], None] | None = None, fused_optimizer: bool | None = None) -> None:
        self.objective = objective
        self.dataset, self.config, self.identity = dataset, config, identity
        self.out_dir = Path(out_dir)
        self.context = context or DistributedContext()
        self.metrics = metrics or MetricsLog(self.out_dir / "metrics.jsonl")
        self.show_progress = show_progress
        self.stop = stop
        self.on_steady, self.on_steady_end = on_steady, on_steady_end
        self.device = self.context.device
        self.objective.to(self.device)
        self.flat = FlatParameters(parameter_groups(objective.trainable_modules(), config.weight_decay,
                                                    config.decay_all_parameters))
        self.optimizer = adamw(self.flat.groups, lr=config.lr, betas=config.betas, eps=config.eps,
                               fused=self.device.type == "cuda" if fused_optimizer is None else fused_optimizer)
        self.scheduler = build_scheduler(self.optimizer, config.lr, config.warmup_steps, config.steps,
                                         config.min_lr)
        self.step = 0
        self.batches_consumed = 0
        self._rng_to_restore: dict[str, Any] | None = None
        self._metrics_to_restore: list[str] | None = None
        self._window_to_restore: dict[str, Any] | None = None
        self._window = _Window()
        self._last_snapshot_step: int | None = None

    # ------------------------------------------------------------------ state
    def snapshot(self) -> dict[str, Any]:
        """Project checkpoint + optimizer, scheduler, data position and every rank's random state.
        Raises NonFiniteLossError instead when an update since the last check was not finite."""
        self._check_finite()
        checkpoint = self._weights()
        rng = capture_rng_state({"objective": self.objective.generator_state()})
        window = self._window.state()  # the loss sums since the last log line, so the next line is exact too
        checkpoint.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                          rng=self._gather(rng), window=self._gather(window), data=self.sampler_state(),
                          config=self.identity.config, job=self.job(),
                          metrics_log=self.metrics.lines() if self.context.is_main else [],
                          heads={name: state_on_cpu(module)
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
        return project_checkpoint(
            encoder_config=self.identity.encoder_config, decoder_config=self.identity.decoder_config,
            student=state_on_cpu(self.objective.student), decoder=state_on_cpu(self.objective.decoder),
            teacher=state_on_cpu(self.objective.teacher.encoder), stage=self.identity.stage,
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
        try:
            self.optimizer.load_state_dict(self.flat.optimizer_state(snapshot["optimizer"]))
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise CheckpointMismatch(f"cannot resume {self.out_dir} exactly: its optimiser state does not fit this "
                                     f"run ({first_line(error)})") from error
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
        """What the update calls: the objective, wrapped in DDP under torchrun. With `compile` (default: on
        CUDA) the objective's device side is compiled (`PretrainingObjective.compile_step`); its host side,
        the draws, stays eager, so that no new draw recompiles it."""
        if self.config.compiles(self.device.type):
            if hasattr(self.objective, "compile_step"):
                self.objective.compile_step()
            else:  # an objective without a host side of its own: compile all of it
                self.objective = compiled(self.objective)
        model: nn.Module = self.objective
        if self.context.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=device_ids)
        return model

    def run(self) -> dict[str, float]:
        """Train up to `config.steps` updates; returns the last logged metrics. On a stop signal (see
        `sslam.runtime.snapshots.StopSignals`) the state is written after the current update and `Preempted` raised."""
        config, autocast_dtype = self.config, self.config.autocast_dtype(self.device.type)
        self.flat.check_attached()
        model = self._model()
        batches = self._batches()
        self._window = _Window()
        if self._rng_to_restore is not None:
            restore_rng_state(self._rng_to_restore)
            self.objective.set_generator_state(self._rng_to_restore["objective"])
            self._window = _Window.from_state(self._window_to_restore)
        self.objective.train()
        if self.context.is_main:
            if self._metrics_to_restore is not None:  # also when the log itself is gone (a re-run job)
                self.metrics.restore(self._metrics_to_restore, self.step)
            else:
                self.metrics.restore(self.metrics.lines(), self.step)  # the steps after the snapshot are re-done
        progress = self._progress()
        throughput, last = Throughput(), {}
        steady = SteadyState(("update", "log point", "snapshot"), self.on_steady, self.on_steady_end)
        try:
            while self.step < config.steps:
                fbank = next(batches)
                fbank = (fbank[0] if isinstance(fbank, (list, tuple)) else fbank).to(self.device, non_blocking=True)
                lr = self.optimizer.param_groups[0]["lr"]
                output, grad_norm = self.update(model, fbank, autocast_dtype)
                self.batches_consumed += 1
                throughput.add(fbank.shape[0] * self.context.world_size)
                self._window.add(self.step, ("loss", *output.terms), output.summary, grad_norm)
                if self.step % config.log_every == 0 or self.step == config.steps:
                    # Loss terms: means over the updates since the last line; lr and grad norm: this update's.
                    last = {**self._reduce(self._window.mean(self._checked_window())), "lr": lr,
                            "grad_norm": self._window.last_grad_norm, "ema_decay": self.teacher_decay(self.step),
                            "clips_per_s": throughput.rate(),
                            "epoch": self.batches_consumed / self.sampler.batches_per_epoch}
                    self._window = _Window()
                    if self.context.is_main:
                        self.metrics.write({"step": self.step, **last})
                    steady.saw("log point")
                if progress is not None:
                    progress.update(1, **({"loss": last["loss"], "lr": lr} if last else {}))
                saved = self.step % config.checkpoint_every == 0 or self.step == config.steps
                if saved:
                    self.save_state()
                    steady.saw("snapshot")
                if self.stop is not None and any_rank(self.context, self.stop.requested):
                    if not saved:
                        self.save_state()
                    raise Preempted(f"stopped after update {self.step} of {config.steps}; the state in "
                                    f"{self.out_dir / 'state'} resumes it")
                steady.saw("update")
        finally:
            steady.end()  # before the progress bar's last line: the code from here on is not the loop's steady state
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
        DDP wrapper), then the EMA step. Returns (objective output, grad norm before clipping, a 0-dim tensor
        on the device). Nothing here reads a value back from the device: `run` checks the values later."""
        with torch.autocast(self.device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            output = model(fbank)
        backpropagate(output.loss, self.flat, through_hooks=self.context.enabled)
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

    def _checked_window(self) -> list[tuple[int, list[float], float]]:
        """Read the window's unread updates (one transfer) and stop at the first non-finite one, on every
        rank at once; returns what was read."""
        read = self._window.read()
        bad = next(((step, values, norm) for step, values, norm in read
                    if not all(map(math.isfinite, values)) or not math.isfinite(norm)), None)
        first_bad = min_over_ranks(self.context, bad[0] if bad is not None else self.config.steps + 1)
        if first_bad <= self.config.steps:
            kept = f"the last snapshot in {self.out_dir / 'state'} (step <= {first_bad - 1}) is left intact"
            if bad is None or bad[0] != first_bad:
                raise NonFiniteLossError(f"non-finite loss at update {first_bad}: on another rank; {kept}")
            step, values, norm = bad
            names = self._window.names
            where = ", ".join(f"{name}={value:.4g}" for name, value in zip(names, values) if not math.isfinite(value))
            if where:
                raise NonFiniteLossError(f"non-finite loss at update {step}: {where}; {kept}")
            raise NonFiniteLossError(f"non-finite gradient norm at update {step}; {kept}")
        return read

    def _check_finite(self) -> None:
        self._window.fold(self._checked_window())

    def _clip_gradients(self) -> torch.Tensor:
        """The global L2 norm of the gradients (returned, on the device), and the gradients scaled down to
        `clip_grad_norm` when above it: torch's clip_grad_norm_ to the bit (same calls, same order), without
        its per-call regrouping of the tensors by device and dtype."""
        # The norm of each parameter's gradient, then of those norms, as clip_grad_norm_ sums: the same number to
        # the bit as before the flat buffers (a norm over a whole buffer would round differently, and the run would
        # drift from the ones before it); a multi-tensor kernel on a GPU. The scaling is elementwise: the buffers.
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(self.flat.gradients, 2.0)), 2.0)
        if self.config.clip_grad_norm > 0:
            # Without clipping torch multiplies by min(inf, 1) = 1, which changes nothing: skipped.
            torch._foreach_mul_(self.flat.gradient_buffers,
                                torch.clamp(self.config.clip_grad_norm / (norm + 1e-6), max=1.0))
        return norm

    def _reduce(self, values: dict[str, float]) -> dict[str, float]:
        """Average logged values over ranks (every rank calls this at the same steps)."""
        if not self.context.enabled:
            return values
        names = sorted(values)
        stacked = torch.tensor([values[n] for n in names], device=self.device, dtype=torch.float64)
        dist.all_reduce(stacked)
        return {n: float(v) / self.context.world_size for n, v in zip(names, stacked.tolist())}


def state_on_cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module.state_dict()` with every tensor `compact_on_cpu`."""
    return {name: compact_on_cpu(tensor) for name, tensor in module.state_dict().items()}


def compact_on_cpu(tensor: torch.Tensor) -> torch.Tensor:
    """A detached CPU tensor that owns exactly its elements: a parameter is a view into its group's flat buffer
    (FlatParameters), and torch.save writes a view's whole storage, the other modules' weights included."""
    tensor = tensor.detach().cpu()
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        tensor = tensor.clone()
    return tensor


def backpropagate(loss: torch.Tensor, flat: FlatParameters, through_hooks: bool = False) -> None:
    """Put d loss / d parameter in every parameter's slot of the flat gradient buffers (zero where the loss does
    not reach it): the numbers `zero_grad(set_to_none=True); loss.backward()` leaves in `.grad`, to the bit.

    `torch.autograd.grad` hands the gradients over at the graph's leaves instead of running one AccumulateGrad
    node per parameter (about 150 on ViT-B, each a dispatched operation): a tenth of a launch-bound backward.
    `through_hooks` keeps `backward()`, for DDP, whose gradient all-reduce hangs on those nodes.
    """
    if through_hooks:
        for parameter in flat.parameters:
            parameter.grad = None
        loss.backward()
        flat.take_gradients([parameter.grad for parameter in flat.parameters])
        return
    flat.take_gradients(torch.autograd.grad(loss, flat.parameters, allow_unused=True))


class _Window:
    """The loop's record of the updates since the last log line.

    Each update leaves its objective summary ([loss, each term's mean]) and gradient norm on the device;
    `read` brings all unread ones to the host in one transfer (at log points and snapshots), `fold` adds them to
    the float64 sums of the log line (the same sums, in the same order, as adding on the device would give).
    """

    def __init__(self) -> None:
        self.names: tuple[str, ...] | None = None
        self.sums: list[float] | None = None
        self.count = 0
        self.last_grad_norm = math.nan
        self._unread: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self._restored: dict[str, float] | None = None

    def add(self, step: int, names: tuple[str, ...], summary: torch.Tensor, grad_norm: torch.Tensor) -> None:
        self.names = names
        self._unread.append((step, summary, grad_norm))

    def read(self) -> list[tuple[int, list[float], float]]:
        """(update, [loss, terms...], grad norm) of every unread update, read back at once."""
        if not self._unread:
            return []
        summaries = torch.stack([summary.detach().double() for _, summary, _ in self._unread])
        norms = torch.stack([norm.detach().double() for _, _, norm in self._unread])
        values = torch.cat([summaries, norms[:, None]], dim=1).tolist()
        read = [(step, row[:-1], row[-1]) for (step, _, _), row in zip(self._unread, values)]
        self._unread = []
        return read

    def fold(self, read: list[tuple[int, list[float], float]]) -> None:
        for _, values, norm in read:
            if self.sums is None:
                restored = self._restored
                self.sums = list(values) if restored is None else [restored[name] + value
                                                                    for name, value in zip(self.names, values)]
            else:
                self.sums = [total + value for total, value in zip(self.sums, values)]
            self.count += 1
            self.last_grad_norm = norm

    def mean(self, read: list[tuple[int, list[float], float]]) -> dict[str, float]:
        self.fold(read)
        if self.sums is None:
            return {}
        return {name: total / max(1, self.count) for name, total in zip(self.names, self.sums)}

    def state(self) -> dict[str, Any]:
        """The sums so far, as the snapshot keeps them (the loop has read every update first)."""
        if self.sums is None:
            sums = dict(self._restored or {})
        else:
            sums = dict(zip(self.names, self.sums))
        return {"sums": {name: torch.tensor(total, dtype=torch.float64) for name, total in sums.items()},
                "count": self.count}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> "_Window":
        window = cls()
        if state:
            window._restored = {name: float(total) for name, total in state["sums"].items()} or None
            window.count = state["count"]
        return window
