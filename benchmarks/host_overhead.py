"""Host overhead of one training update, on a launch-bound proxy: Stage 1, Stage 2, fine-tuning, linear probe.

On a GPU the kernels of a ViT-B update are short; what decides the rate is the host: Python, operator dispatch,
and every point where the host waits for the device. On the CPU this benchmark builds a model with the real
block structure (12 encoder blocks, a 6-layer decoder, 16 clones in Stage 1 and 8 in Stage 2) at a width so
small that the arithmetic is a few per cent of an update (`--widths 8 16` shows it: halving the width barely
changes the time), so that the host's share is what is measured, as it is on a GPU. Each loop runs as the
project runs it (the real `Pretrainer.run` / `Fitter.run`, with the optimiser a CUDA job builds: fused AdamW,
which torch also runs on the CPU), and every update is measured between two step boundaries:

  cpu_ms         process CPU time of the update (the host's work; robust to other processes on the machine)
  wall_ms        wall time of the update
  python_calls   Python function calls (sys.setprofile "call" events) in the update
  ops            ATen operators dispatched (a TorchDispatchMode)
  syncs          points where the host waits for the device: a CUDA tensor read into Python or copied to the
                 host, a blocking host-to-GPU copy, or an op whose output size comes from the data (nonzero,
                 boolean indexing...). On the CPU, where every tensor is a host tensor, a read counts unless it
                 is of values drawn from a random generator (or computed from such draws only), which live on
                 the host in a GPU job too (mixing regions, mixup's coin); with --device cuda, CUDA's own sync
                 debug mode counts every synchronising call as well (cuda_syncs)
  kernel_ms      (--kernels) the CPU time spent inside the math kernels (convolutions, matrix products, attention,
                 GELU, LayerNorm, their backwards and the fused AdamW), from torch.profiler's self CPU time: on
                 the CPU proxy the update runs them on the host, on a GPU they run on the device. Their fixed
                 cost per call does not shrink with the width, so the width check cannot see it; host_ms =
                 cpu_ms - kernel_ms is the part of an update that a GPU job's host pays too
  gpu_wait       (CUDA) the fraction of the GPU's time per update spent waiting for the host: one minus the
                 update's kernel time (measured from CUDA events around an update queued while the GPU sleeps,
                 so it runs without gaps) over the update's period in the ordinary loop (events at step ends)

Usage (from the repository root; the last line printed is one JSON object):

  python -m benchmarks.host_overhead                                 # this checkout, eager, every loop
  python -m benchmarks.host_overhead --compile                       # compiled step (torch.compile)
  python -m benchmarks.host_overhead --baseline /tmp/base --pairs 10 # A/B against another checkout (A B B A ...)
  python -m benchmarks.host_overhead --widths 8 16 --pairs 10        # the width-halving check
  python -m benchmarks.host_overhead --recorder --pairs 10           # code recorder tracing vs stopped
  python -m benchmarks.host_overhead --recorder steady --pairs 10    # stopped (a job's steady state) vs no recorder
  python -m benchmarks.host_overhead --baseline /tmp/base --pairs 10 --kernels  # ... with the kernel/host split
  python -m benchmarks.host_overhead --preset vitb --device cuda     # the real shape on a GPU

A/B runs alternate fresh worker processes (A B B A A B ...); each worker reports the median of its updates, and
the summary gives, per arm, the min and median over workers, and the median of the per-pair ratios. The
baseline checkout is imported from its own folder (PYTHONPATH), so it can be any commit, e.g.
`git worktree add /tmp/base <commit>`. docs/performance.md has the figures and how to read them.
"""
from __future__ import annotations

import argparse
import collections
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
import weakref
from dataclasses import asdict
from pathlib import Path
from typing import Any

LOOPS = ("stage1", "stage2", "finetune", "probe")
REPOSITORY = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- the proxy
def proxy_shapes(preset: str, width: int) -> dict[str, Any]:
    """Encoder/decoder settings, frames and batch of a preset. `proxy`: the ViT-B block structure at `width`
    over 128 frames × 32 mel bins (an 8 × 2 patch grid) and 2 clips; `vitb`: the real shape (1024 × 128, 12 clips)."""
    if preset == "vitb":
        return {"encoder": {}, "decoder": {}, "frames": 1024, "batch": 12, "classes": 527}
    return {"encoder": {"embed_dim": width, "depth": 12, "num_heads": 1, "num_mel_bins": 32, "max_time_patches": 8},
            "decoder": {"depth": 6, "groups": min(16, width)}, "frames": 128, "batch": 2, "classes": 8}


class Clips:
    """Fixed random clips (and multi-hot targets): only the loops' own work is measured, not data loading."""

    def __init__(self, count: int, frames: int, bins: int, classes: int | None = None) -> None:
        import torch

        generator = torch.Generator().manual_seed(0)
        self.clips = torch.randn(count, frames, bins, generator=generator)
        self.targets = None if classes is None else (torch.rand(count, classes, generator=generator) < 0.3).float()

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int):
        return self.clips[index] if self.targets is None else (self.clips[index], self.targets[index])


# ---------------------------------------------------------------------------------------------- counting
# The math kernels of an update: on the CPU proxy their bodies run on the host, in a GPU job on the device.
KERNEL_OPS = frozenset({
    "aten::mkldnn_convolution", "aten::convolution_backward", "aten::mm", "aten::addmm", "aten::bmm",
    "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
    "aten::gelu", "aten::gelu_backward", "aten::native_layer_norm", "aten::native_layer_norm_backward",
    "aten::_fused_adamw_",
})


def kernel_ms_per_update(loop: str, args: argparse.Namespace, scratch: Path) -> tuple[float, dict[str, float]]:
    """Self CPU time per update inside KERNEL_OPS (torch.profiler, over the measured updates), and per kernel."""
    from torch.profiler import ProfilerActivity, profile

    profiler = profile(activities=[ProfilerActivity.CPU])
    ticks = [0]

    def tick():
        ticks[0] += 1
        if ticks[0] == args.updates:
            profiler.__exit__(None, None, None)

    clock = StepClock(args.warmup, args.updates, on_start=profiler.__enter__, on_tick=tick)
    build_loop(loop, args, clock, scratch / "kernels")()
    per_kernel = {event.key: event.self_cpu_time_total / 1e3 / args.updates
                  for event in profiler.key_averages() if event.key in KERNEL_OPS}
    return sum(per_kernel.values()), per_kernel


class SyncCounter:
    """A TorchDispatchMode that counts dispatched operators and the ones where the host waits for the device
    (see the module docstring), while `active`."""

    def __init__(self, device_type: str) -> None:
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        aten = torch.ops.aten
        self.cuda = device_type == "cuda"
        self.active = False
        self.ops = self.syncs = self.host_reads = 0
        self.where: collections.Counter = collections.Counter()
        self._host_drawn: dict[int, weakref.ref] = {}   # id -> tensor holding host random draws (or values of them)
        self._reads = {aten._local_scalar_dense.default, aten.equal.default, aten.is_nonzero.default}
        self._sized_by_data = {aten.nonzero.default, aten.masked_select.default, aten.unique_consecutive.default,
                               aten._unique2.default, aten.unique_dim.default, aten.masked_scatter.default}
        self._indexing = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default,
                          aten._index_put_impl_.default}
        self._copies = {aten._to_copy.default, aten.copy_.default}
        self._repeat_interleave = aten.repeat_interleave.Tensor
        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if counter.active:
                    counter.see(func, args, kwargs)
                out = func(*args, **kwargs)
                counter.track(func, args, kwargs, out)
                return out

        self.mode = Mode()

    @staticmethod
    def _tensors(values) -> list:
        import torch

        found = []
        for value in values:
            if isinstance(value, torch.Tensor):
                found.append(value)
            elif isinstance(value, (list, tuple)):
                found.extend(item for item in value if isinstance(item, torch.Tensor))
        return found

    def _marked(self, tensor) -> bool:
        entry = self._host_drawn.get(id(tensor))
        return entry is not None and entry() is tensor

    def _host_only(self, tensor) -> bool:
        return tensor.device.type == "cpu" and (self._marked(tensor) or
                                                (tensor._base is not None and self._marked(tensor._base)))

    def _mark(self, tensor) -> None:
        key = id(tensor)
        self._host_drawn[key] = weakref.ref(tensor, lambda _: self._host_drawn.pop(key, None))

    def track(self, func, args, kwargs, out) -> None:
        """Mark outputs that hold host random draws: a random op's CPU output, or what is computed from such
        outputs alone (a coin's comparison, a Beta sample's selection)."""
        import torch

        outputs = self._tensors(out if isinstance(out, (list, tuple)) else [out])
        inputs = self._tensors(list(args) + list(kwargs.values()))
        drawn = torch.Tag.nondeterministic_seeded in func.tags
        derived = bool(inputs) and all(self._host_only(t) for t in inputs)
        if drawn or derived:
            for tensor in outputs:
                if tensor.device.type == "cpu":
                    self._mark(tensor)

    def see(self, func, args, kwargs) -> None:
        self.ops += 1
        waits = False
        tensors = self._tensors(list(args) + list(kwargs.values()))
        if func in self._reads:
            if self.cuda:
                waits = any(t.device.type == "cuda" for t in tensors)
            elif all(self._host_only(t) for t in tensors):
                self.host_reads += 1
            else:
                waits = True
        elif func in self._sized_by_data or (func == self._repeat_interleave and kwargs.get("output_size") is None):
            waits = not self.cuda or any(t.device.type == "cuda" for t in tensors)
        elif func in self._indexing:
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            boolean = any(i is not None and i.dtype in (_bool(), _uint8()) for i in indices)
            waits = boolean and (not self.cuda or any(t.device.type == "cuda" for t in tensors))
        elif self.cuda and func in self._copies:
            waits = self._blocking_copy(func, args, kwargs)
        if waits:
            self.syncs += 1
            self.where[str(func)] += 1

    @staticmethod
    def _blocking_copy(func, args, kwargs) -> bool:
        import torch

        if func == torch.ops.aten._to_copy.default:
            source, target = args[0].device, kwargs.get("device") or args[0].device
            non_blocking = kwargs.get("non_blocking", False)
        else:
            target, source = args[0].device, args[1].device
            non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
        target = torch.device(target)
        to_host = source.type == "cuda" and target.type == "cpu"
        blocking_upload = source.type == "cpu" and target.type == "cuda" and not non_blocking
        return to_host or blocking_upload


def _bool():
    import torch

    return torch.bool


def _uint8():
    import torch

    return torch.uint8


class PythonCallCounter:
    """Python function calls per update: a `sys.setprofile` hook that a StepClock starts (`start`) at its first
    counted update and reads (`tick`) at the end of each one; `stop` removes it."""

    def __init__(self) -> None:
        self.calls = 0
        self.per_update: list[int] = []

    def _count(self, frame, event, arg) -> None:
        if event == "call":
            self.calls += 1

    def start(self) -> None:
        self.calls = 0
        sys.setprofile(self._count)

    def tick(self) -> None:
        self.per_update.append(self.calls)
        self.calls = 0

    @staticmethod
    def stop() -> None:
        sys.setprofile(None)


# ---------------------------------------------------------------------------------------------- one worker
class StepClock:
    """Stands in for the loops' stop signals: both loops ask `requested` once per update, at its end, so the
    intervals between two asks are whole updates as the loop runs them. Counting runs start at `first`."""

    def __init__(self, first: int, count: int, on_start=None, on_tick=None) -> None:
        self.first, self.count = first, count
        self.asks = 0
        self.cpu: list[float] = []
        self.wall: list[float] = []
        self.on_start, self.on_tick = on_start, on_tick

    @property
    def requested(self) -> bool:
        self.asks += 1
        if self.first <= self.asks <= self.first + self.count:
            if self.asks == self.first and self.on_start is not None:
                self.on_start()
            elif self.asks > self.first and self.on_tick is not None:
                self.on_tick()
            self.cpu.append(time.process_time())
            self.wall.append(time.perf_counter())
        return False

    def intervals(self) -> tuple[list[float], list[float]]:
        cpu = [(b - a) * 1e3 for a, b in zip(self.cpu, self.cpu[1:])]
        wall = [(b - a) * 1e3 for a, b in zip(self.wall, self.wall[1:])]
        return cpu, wall


def build_loop(loop: str, args: argparse.Namespace, clock: StepClock, scratch: Path):
    """A callable that runs `loop` for warm-up + measured + 1 updates through the project's own loop."""
    import torch

    shapes = proxy_shapes(args.preset, args.width)
    device = torch.device(args.device)
    steps = args.warmup + args.updates + 1
    from sslam.model import DecoderConfig, EncoderConfig

    encoder_cfg, decoder_cfg = EncoderConfig(**shapes["encoder"]), DecoderConfig(**shapes["decoder"])
    torch.manual_seed(0)
    if loop in ("stage1", "stage2"):
        from sslam.objective.config import ObjectiveConfig, variant_config
        from sslam.objective.pretraining import PretrainingObjective
        from sslam.train.config import TrainConfig
        from sslam.train.distributed import DistributedContext
        from sslam.train.loop import Pretrainer, RunIdentity

        stage = 1 if loop == "stage1" else 2
        objective_cfg = ObjectiveConfig() if stage == 1 else variant_config("SSLAM", ObjectiveConfig(), {})
        objective = PretrainingObjective(encoder_cfg, decoder_cfg, objective_cfg, stage, seed=0)
        train = TrainConfig(steps=steps, batch_size=shapes["batch"], warmup_steps=1, log_every=steps,
                            checkpoint_every=steps, num_workers=0, compile=args.compile,
                            precision="bf16" if args.dtype == "bf16" else "fp32")
        dataset = Clips(4 * shapes["batch"], shapes["frames"], encoder_cfg.num_mel_bins)
        identity = RunIdentity(stage, None, asdict(encoder_cfg), asdict(decoder_cfg))
        options = {"fused_optimizer": True} if "fused_optimizer" in inspect.signature(Pretrainer).parameters else {}
        trainer = Pretrainer(objective, dataset, train, scratch / loop, identity, DistributedContext(device=device),
                             show_progress=False, stop=clock, **options)
        if not options:  # a checkout without the option: build the optimiser a CUDA job builds, fused
            from sslam.train.optim import build_optimizer
            from sslam.train.schedule import build_scheduler

            trainer.optimizer = build_optimizer(objective.trainable_modules(), lr=train.lr, betas=train.betas,
                                                eps=train.eps, weight_decay=train.weight_decay, fused=True)
            trainer.scheduler = build_scheduler(trainer.optimizer, train.lr, train.warmup_steps, train.steps)
            trainer.trainable = [p for group in trainer.optimizer.param_groups for p in group["params"]]
        return trainer.run

    from sslam.evaluation.augment import TrainingAugmentation
    from sslam.evaluation.config import FinetuneConfig, LinearProbeConfig
    from sslam.evaluation.heads import ClassificationHead, EncoderClassifier, layer_decay_groups
    from sslam.evaluation.training import Fitter, TrainingData
    from sslam.model.encoder import AudioEncoder

    regime_cls = FinetuneConfig if loop == "finetune" else LinearProbeConfig
    regime = regime_cls(steps=steps, warmup_steps=1, batch_size=shapes["batch"], checkpoint_every=None,
                        compile=args.compile, precision=args.dtype)
    encoder = AudioEncoder(encoder_cfg)
    encoder.set_drop_path(regime.drop_path)
    head = ClassificationHead(encoder_cfg.embed_dim, shapes["classes"], regime.pooling, regime.head_norm,
                              encoder_cfg.norm_eps, regime.feature_norm)
    classifier = EncoderClassifier(encoder, head, frozen_backbone=loop == "probe")
    clips = Clips(4 * steps * shapes["batch"], shapes["frames"], encoder_cfg.num_mel_bins, shapes["classes"])
    data = TrainingData(clips, torch.full((len(clips),), shapes["frames"], dtype=torch.long))
    options = {"fused_optimizer": True} if "fused_optimizer" in inspect.signature(Fitter).parameters else {}
    fitter = Fitter(classifier, data, regime, "bce", TrainingAugmentation.from_regime(regime, 0.5), steps, 1,
                    device, seed=0, num_workers=0, **options)
    if not options:
        groups = layer_decay_groups(classifier, regime.weight_decay, regime.layer_decay)
        fitter.optimizer = torch.optim.AdamW(groups, lr=regime.lr, betas=tuple(regime.betas), eps=1e-8, fused=True)
        fitter.scales = [group["lr_scale"] for group in fitter.optimizer.param_groups]
        fitter.trainable = [p for group in groups for p in group["params"]]
    return lambda: fitter.run(log=lambda record: None, stop=clock)


def measure(loop: str, args: argparse.Namespace) -> dict[str, Any]:
    """Three runs of `loop`: timed, counting Python calls, counting operators; plus, on CUDA, the GPU's
    waiting share. Each figure is per steady-state update (medians over the measured updates)."""
    import torch

    result: dict[str, Any] = {"loop": loop}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        synchronise = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
        stop_tracing = None
        if args.recorder == "stopped":
            from sslam.fingerprints import stop_tracing
        clock = StepClock(args.warmup, args.updates, on_start=stop_tracing)
        events: list = []
        if args.device == "cuda":  # an event at every step end: the update's period on the GPU's clock
            def record_event():
                event = torch.cuda.Event(enable_timing=True)
                event.record()
                events.append(event)

            def start():
                if stop_tracing is not None:
                    stop_tracing()
                record_event()

            clock = StepClock(args.warmup, args.updates, on_start=start, on_tick=record_event)
        build_loop(loop, args, clock, scratch)()
        synchronise()
        cpu, wall = clock.intervals()
        result.update(cpu_ms=statistics.median(cpu), cpu_ms_min=min(cpu), wall_ms=statistics.median(wall),
                      updates=len(cpu))
        if events:
            periods = [a.elapsed_time(b) for a, b in zip(events, events[1:])]
            result["gpu_period_ms"] = statistics.median(periods)
            busy = gpu_busy_ms(loop, args, scratch, wall)
            result["gpu_busy_ms"] = busy
            result["gpu_wait"] = max(0.0, 1.0 - busy / result["gpu_period_ms"])
        if args.kernels:
            result["kernel_ms"], result["kernels"] = kernel_ms_per_update(loop, args, scratch)
            result["host_ms"] = result["cpu_ms"] - result["kernel_ms"]
        if args.recorder or args.timing_only:
            return result  # only the time is compared

        calls = PythonCallCounter()
        counting = StepClock(args.warmup, min(args.updates, args.count_updates), on_start=calls.start,
                             on_tick=calls.tick)
        try:
            build_loop(loop, args, counting, scratch / "calls")()
        finally:
            calls.stop()
        result["python_calls"] = statistics.median(calls.per_update)

        counter = SyncCounter(args.device)
        per_update: list[tuple[int, int, int]] = []

        def start_ops():
            counter.ops = counter.syncs = counter.host_reads = 0
            counter.active = True

        def tick_ops():
            per_update.append((counter.ops, counter.syncs, counter.host_reads))
            counter.ops = counter.syncs = counter.host_reads = 0

        counting = StepClock(args.warmup, min(args.updates, args.count_updates), on_start=start_ops, on_tick=tick_ops)
        sync_warnings = cuda_sync_counter(args.device, counting)
        with counter.mode:
            build_loop(loop, args, counting, scratch / "ops")()
        result["ops"] = statistics.median(u[0] for u in per_update)
        result["syncs"] = max(u[1] for u in per_update)
        result["syncs_total"] = sum(u[1] for u in per_update)
        result["host_reads"] = statistics.median(u[2] for u in per_update)
        result["sync_ops"] = dict(counter.where)
        if sync_warnings is not None:
            result["cuda_syncs"] = sync_warnings()
    return result


def cuda_sync_counter(device: str, clock: StepClock):
    """On CUDA: from the clock's start, count the synchronising calls that CUDA's sync debug mode reports;
    returns a function giving the count per counted update (None elsewhere)."""
    if device != "cuda":
        return None
    import torch

    seen = [0]
    original = warnings.showwarning
    start = clock.on_start

    def note(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            seen[0] += 1
        else:
            original(message, category, filename, lineno, file, line)

    def on_start():
        start()
        warnings.simplefilter("always")
        warnings.showwarning = note
        torch.cuda.set_sync_debug_mode("warn")

    clock.on_start = on_start

    def per_update() -> float:
        torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = original
        return seen[0] / max(1, clock.count)

    return per_update


def gpu_busy_ms(loop: str, args: argparse.Namespace, scratch: Path, host_wall_ms: list[float]) -> float:
    """The kernel time of one update without host gaps: before each measured update the GPU sleeps for twice
    the host's time per update while the host queues the whole update (it never waits for the device), and
    CUDA events around the update time it. Between measured updates the loop synchronises (outside them)."""
    import torch

    sleep_cycles = int(2 * statistics.median(host_wall_ms) * 1e-3 * 2.0e9)  # ~2 GHz SM clock, generously
    marks: list = []

    def before():
        torch.cuda.synchronize()
        torch.cuda._sleep(sleep_cycles)
        start = torch.cuda.Event(enable_timing=True)
        start.record()
        marks.append([start])

    def after():
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        marks[-1].append(end)
        before()

    clock = StepClock(args.warmup, 5, on_start=before, on_tick=after)
    build_loop(loop, args, clock, scratch / "busy")()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in (m for m in marks if len(m) == 2))


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    results = [measure(loop, args) for loop in args.loops]
    print(json.dumps({"width": args.width, "preset": args.preset, "compile": args.compile, "recorder": args.recorder,
                      "torch": torch.__version__, "loops": results}))


# ---------------------------------------------------------------------------------------------- the driver
def run_worker(tree: Path, args: argparse.Namespace, extra: list[str], environment: dict[str, str]) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--loops", *args.loops,
               "--preset", args.preset, "--device", args.device, "--dtype", args.dtype,
               "--updates", str(args.updates), "--warmup", str(args.warmup), "--threads", str(args.threads),
               "--count-updates", str(args.count_updates), *(["--compile"] if args.compile else []),
               *(["--timing-only"] if args.timing_only else []), *(["--kernels"] if args.kernels else []), *extra]
    if "--width" not in extra:
        command += ["--width", str(args.width)]
    env = {**os.environ, **environment, "PYTHONPATH": str(tree)}
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"worker in {tree} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def arms_of(args: argparse.Namespace) -> list[tuple[str, Path, list[str], dict[str, str]]]:
    here = REPOSITORY
    if args.baseline:
        return [("baseline", Path(args.baseline).resolve(), [], {}), ("this", here, [], {})]
    if args.widths:
        return [(f"width {w}", here, ["--width", str(w)], {}) for w in args.widths]
    if args.recorder:
        record = {"SSLAM_CODE_RECORD": str(Path(tempfile.gettempdir()) / "host-overhead.code.json")}
        stopped = ("stopped", here, ["--recorder", "stopped"], record)
        if args.recorder == "steady":  # what the recorder still costs once a job's loop has paused it
            return [stopped, ("unrecorded", here, ["--recorder", "off"], {})]
        return [("tracing", here, ["--recorder", "traced"], record), stopped]
    return [("this", here, [], {})]


def summarise(arms, runs: dict[str, list[dict]], loops: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for loop in loops:
        per_arm = {}
        for label, *_ in arms:
            rows = [next(r for r in run["loops"] if r["loop"] == loop) for run in runs[label]]
            cpu = [r["cpu_ms"] for r in rows]
            entry = {"cpu_ms_min": min(r["cpu_ms_min"] for r in rows), "cpu_ms_median": statistics.median(cpu),
                     "cpu_ms_worker_min_median": statistics.median(r["cpu_ms_min"] for r in rows),
                     "wall_ms_median": statistics.median(r["wall_ms"] for r in rows), "workers": len(rows)}
            for key in ("python_calls", "ops", "syncs", "host_reads", "cuda_syncs", "gpu_wait", "gpu_period_ms",
                        "gpu_busy_ms", "kernel_ms", "host_ms"):
                if key in rows[0]:
                    entry[key] = statistics.median(r[key] for r in rows)
            if rows[0].get("sync_ops"):
                entry["sync_ops"] = rows[0]["sync_ops"]
            per_arm[label] = entry
        if len(arms) == 2:
            first, second = arms[0][0], arms[1][0]
            pairs = list(zip((next(r for r in run["loops"] if r["loop"] == loop) for run in runs[first]),
                             (next(r for r in run["loops"] if r["loop"] == loop) for run in runs[second])))
            ratios = [a["cpu_ms"] / b["cpu_ms"] for a, b in pairs]
            # Each worker's fastest update is the least disturbed by other processes on a shared machine.
            min_ratios = [a["cpu_ms_min"] / b["cpu_ms_min"] for a, b in pairs]
            per_arm["ratio"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                                "of_worker_mins": statistics.median(min_ratios),
                                "of": f"{first} / {second} cpu_ms per update"}
            if "host_ms" in pairs[0][0]:
                host_ratios = [a["host_ms"] / b["host_ms"] for a, b in pairs]
                per_arm["host_ratio"] = {"median": statistics.median(host_ratios), "min": min(host_ratios),
                                         "max": max(host_ratios), "of": f"{first} / {second} host_ms per update"}
        summary[loop] = per_arm
    return summary


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", nargs="+", choices=LOOPS, default=list(LOOPS))
    parser.add_argument("--preset", choices=("proxy", "vitb"), default="proxy")
    parser.add_argument("--width", type=int, default=16, help="proxy width (the ViT-B block structure is kept)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="autocast (bf16) or not")
    parser.add_argument("--compile", action="store_true", help="torch.compile the step (compile: true)")
    parser.add_argument("--updates", type=int, default=20, help="measured updates per worker")
    parser.add_argument("--warmup", type=int, default=4, help="updates before measuring (compilation, caches)")
    parser.add_argument("--count-updates", type=int, default=5, help="updates counted for calls/ops/syncs")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: the host side of a GPU job)")
    parser.add_argument("--timing-only", action="store_true", help="skip the runs that count calls, ops and syncs")
    parser.add_argument("--pairs", type=int, default=1, help="interleaved worker pairs (A B B A ...)")
    parser.add_argument("--baseline", help="another checkout to compare with (its repository root)")
    parser.add_argument("--widths", type=int, nargs=2, help="compare two proxy widths (the arithmetic check)")
    parser.add_argument("--recorder", nargs="?", const="compare",
                        choices=("compare", "steady", "traced", "stopped", "off"),
                        help="compare the code recorder tracing every call with it stopped after the warm-up "
                             "(steady: stopped with no recorder at all)")
    parser.add_argument("--kernels", action="store_true",
                        help="also profile each loop once per worker: CPU time inside the math kernels (kernel_ms) "
                             "and the rest (host_ms)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return None
    if args.recorder not in (None, "compare", "steady"):
        parser.error("--recorder traced|stopped|off is for workers; use --recorder [steady]")
    arms = arms_of(args)
    runs: dict[str, list[dict]] = {label: [] for label, *_ in arms}
    started = time.perf_counter()
    for pair in range(args.pairs):
        order = arms if pair % 2 == 0 else arms[::-1]
        for label, tree, extra, environment in order:
            runs[label].append(run_worker(tree, args, extra, environment))
        print(f"pair {pair + 1}/{args.pairs} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    summary = summarise(arms, runs, args.loops)
    for loop, entry in summary.items():
        for label, figures in entry.items():
            if label == "ratio":
                print(f"{loop:9s} ratio {figures['of']}: median {figures['median']:.2f} "
                      f"(min {figures['min']:.2f}, max {figures['max']:.2f}); of the workers' fastest updates "
                      f"{figures['of_worker_mins']:.2f}")
                continue
            if label == "host_ratio":
                print(f"{loop:9s} ratio {figures['of']}: median {figures['median']:.2f} "
                      f"(min {figures['min']:.2f}, max {figures['max']:.2f})")
                continue
            counts = " ".join(f"{key} {figures[key]:g}" for key in ("python_calls", "ops", "syncs", "host_reads",
                                                                     "cuda_syncs", "gpu_wait", "kernel_ms",
                                                                     "host_ms") if key in figures)
            print(f"{loop:9s} {label:9s} cpu ms/update min {figures['cpu_ms_min']:.2f} median "
                  f"{figures['cpu_ms_median']:.2f} (workers' fastest: median {figures['cpu_ms_worker_min_median']:.2f})"
                  f" | wall median {figures['wall_ms_median']:.2f} | {counts}")
    import torch

    result = {"preset": args.preset, "width": args.width, "device": args.device, "dtype": args.dtype,
              "compile": args.compile, "pairs": args.pairs, "updates_per_worker": args.updates,
              "threads": args.threads, "torch": torch.__version__, "python": sys.version.split()[0],
              "arms": {label: str(tree) for label, tree, *_ in arms}, "loops": summary}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
