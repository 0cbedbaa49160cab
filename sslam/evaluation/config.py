"""Typed configuration of the downstream benchmarks (YAML `evaluation.benchmarks.<name>`).

Defaults are the official SSLAM values: fine-tuning follows the AS-20K script, linear evaluation
follows the SPASS linear-eval script (spec §9). Where the paper (Tables 7-8) differs, the paper's
version is a named option (`linear_mode: paper`, `selection`); docs/evaluation.md lists the values
per benchmark.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from sslam.runtime.configuration import check_ranges
from sslam.runtime.errors import ConfigError

# The model selections every evaluation job records (sslam.evaluation.selection), and the file beside its
# metrics.json that holds each one's per-clip test predictions (read by the significance tests).
SELECTIONS = ("last", "best_on_valid", "best_on_eval")


def selection_predictions(name: str) -> str:
    return f"predictions.{name}.npz"


@dataclass
class RegimeConfig:
    """Optimisation and augmentation of one training regime (fine-tuning or linear probe).

    Training length is given in `epochs` or in `steps` (at most one; neither = the regime's
    default length); the warm-up likewise (neither = the regime's default warm-up).
    """

    epochs: int | None = None
    steps: int | None = None
    warmup_epochs: float | None = None
    warmup_steps: int | None = None
    batch_size: int = 48
    lr: float = 5e-5
    min_lr: float = 1e-6                        # cosine floor; the warm-up also starts here (fairseq)
    weight_decay: float = 0.05                  # on every parameter: the official exemptions are dead (spec §8)
    betas: tuple[float, float] = (0.9, 0.95)
    layer_decay: float = 0.65                   # block i gets lr * layer_decay ** (depth - i)
    # official: only each group's peak is scaled (warm-up start and floor stay min_lr, clamped to the peak);
    # scaled: the whole schedule is multiplied by the group's factor. See sslam/evaluation/schedule.py.
    layer_decay_schedule: Literal["official", "scaled"] = "official"
    drop_path: float = 0.1                      # linear 0 -> drop_path over the blocks
    grad_clip: float = 0.0                      # 0 = no clipping (official)
    mixup: float = 0.8                          # Beta(alpha, alpha); 0 disables mixup
    mixup_prob: float = 0.9
    specaug_freq: float = 0.2                   # mask width ~ U[0, ratio * F)
    specaug_time: float = 0.2                   # mask width ~ U[0, ratio * T)
    roll: bool = True                           # waveform roll + gain, done on the cached fbank
    noise: bool = False                         # keyword-spotting noise + small time roll (spec §1)
    label_smoothing: float = 0.0
    loss: Literal["auto", "bce", "ce"] = "auto"  # auto: BCE for multilabel, CE for multiclass
    # time: the mean over time of each frequency row (heads.pool_features); attentive: a learned query attends
    # over the patch tokens (the patch-token probe, heads.AttentivePooling; not with solver lbfgs)
    pooling: Literal["cls", "mean", "time", "attentive"] = "cls"
    attentive_heads: int | None = None          # heads of the attentive pooling; None = the encoder's num_heads
    head_norm: bool = True                      # LayerNorm (fc_norm) before the Linear head
    # batch: BatchNorm without affine on the pooled features before the head (MAE linear probing);
    # none: official. See heads.py for why near-constant features need it.
    feature_norm: Literal["none", "batch"] = "none"
    encoder_weights: Literal["student", "teacher"] = "student"
    weighted_sampling: int | None = None        # draws per epoch from the `weight` column (AS-2M: 200k)
    # Which of the selections every job records (sslam.evaluation.selection) is its headline: best_on_valid (the
    # validation split's best point; the last model where a benchmark has no validation rows), last, or
    # best_on_eval (the official runs' choice on the test set: only to compare with the paper).
    selection: Literal["last", "best_on_eval", "best_on_valid"] = "best_on_valid"
    eval_interval_steps: int | None = None      # evaluation points (test + validation rows); None = once per epoch
    linear_mode: Literal["official", "paper"] = "official"  # only read by the linear probe
    # bf16 autocast on CUDA (the official code trains in fp16 with loss scaling; bf16 needs none).
    # CPU runs are always fp32.
    precision: Literal["fp32", "bf16"] = "bf16"
    # Write the exact-resume state (OUT/state/last.pt) every N steps; it is also written on SIGUSR1/SIGTERM
    # and after every round. null = only then.
    checkpoint_every: int | None = 5000
    # Read the training losses back from the device (one transfer, then one metrics.jsonl line per step) every
    # N steps, and before every evaluation point and state: between reads a step never waits for the device.
    log_every: int = 100
    compile: bool = False                       # torch.compile the classifier's forward

    # Length and warm-up when none is given; subclasses set the official values.
    DEFAULT_STEPS: ClassVar[int | None] = None
    DEFAULT_EPOCHS: ClassVar[int | None] = None

    def __post_init__(self) -> None:
        if self.epochs is not None and self.steps is not None:
            raise ConfigError(f"give at most one of epochs / steps (got epochs={self.epochs}, steps={self.steps})")
        if self.warmup_epochs is not None and self.warmup_steps is not None:
            raise ConfigError("give at most one of warmup_epochs / warmup_steps")
        check_ranges(self, epochs=">= 1", steps=">= 1", warmup_epochs=">= 0", warmup_steps=">= 0", batch_size=">= 1",
                     lr="> 0", min_lr=">= 0", weight_decay=">= 0", betas="[0, 1)", layer_decay="(0, 1]",
                     drop_path="[0, 1]", grad_clip=">= 0", mixup=">= 0", mixup_prob="[0, 1]", specaug_freq="[0, 1]",
                     specaug_time="[0, 1]", label_smoothing="[0, 1]", weighted_sampling=">= 1",
                     eval_interval_steps=">= 1", checkpoint_every=">= 1", log_every=">= 1",
                     attentive_heads=">= 1")
        if self.min_lr > self.lr:
            raise ConfigError(f"min_lr {self.min_lr} is above lr {self.lr} (the cosine decays from lr to min_lr)")

    def total_steps(self, steps_per_epoch: int) -> int:
        if self.steps is not None or self.epochs is not None:
            return self.steps if self.steps is not None else self.epochs * steps_per_epoch
        return self.DEFAULT_STEPS if self.DEFAULT_STEPS is not None else self.DEFAULT_EPOCHS * steps_per_epoch

    def warmup(self, steps_per_epoch: int) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        if self.warmup_epochs is not None:
            return int(math.ceil(self.warmup_epochs * steps_per_epoch))
        return self.default_warmup(steps_per_epoch)

    def default_warmup(self, steps_per_epoch: int) -> int:
        return 0

    def evaluation_interval(self, steps_per_epoch: int) -> int:
        """Steps between evaluation points: `eval_interval_steps`, else once per epoch (the official cadence)."""
        return self.eval_interval_steps or steps_per_epoch

    def evaluation_points(self, total_steps: int, steps_per_epoch: int) -> int:
        """How many evaluation points a round of `total_steps` scores: every interval, and after the last step."""
        interval = self.evaluation_interval(steps_per_epoch)
        return total_steps // interval + (1 if total_steps % interval else 0)


@dataclass
class FinetuneConfig(RegimeConfig):
    """Whole-network fine-tuning; defaults = official AS-20K script (paper Table 7: 40k steps).

    Every fine-tuning recipe of Tables 7-8 warms up for 10 % of its length, so that is the default.
    """

    DEFAULT_STEPS = 40_000

    def default_warmup(self, steps_per_epoch: int) -> int:
        return int(math.ceil(0.1 * self.total_steps(steps_per_epoch)))


@dataclass
class LinearProbeConfig(RegimeConfig):
    """Frozen backbone, LayerNorm + Linear trained; defaults = official SPASS linear eval.

    `linear_mode: official` keeps the backbone in train mode (drop path active under no_grad) and
    has no warm-up; `paper` (Table 8) puts the backbone in eval mode and warms up for 5 epochs,
    unless a warm-up is given explicitly. Mixup and SpecAug stay on in both (Table 8 lists them).

    `solver: lbfgs` replaces the mini-batch AdamW loop by a converged probe (sslam.evaluation.logistic):
    the pooled features of every clip are extracted once (backbone in eval mode, no augmentation), each
    per-clip LayerNorm'd when `head_norm` (the head's LayerNorm + Linear is linear in those) and
    standardised with the training clips' statistics (`feature_norm: batch`), and a logistic regression
    (softmax for multiclass, one sigmoid per class for multilabel) with an L2 penalty is fitted by
    full-batch L-BFGS until the largest gradient component is at most `tolerance`. With several `l2`
    values, the penalty is chosen by `l2_folds`-fold cross-validation on the training clips (lowest
    held-out loss), then refitted on all of them. Steps, lr, warm-up and batch size of training are not
    read (batch_size only batches the feature extraction).
    """

    lr: float = 1e-3
    layer_decay: float = 1.0                    # nothing but the head is trained
    solver: Literal["adamw", "lbfgs"] = "adamw"
    # lbfgs: penalty (l2/2)·||W||² on the standardised features, added to the mean loss per clip; a grid is
    # searched by cross-validation on the training clips. sklearn's C is 1 / (l2 · number of training clips).
    l2: list[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0, 10.0])
    l2_folds: int = 3
    max_iter: int = 5000                        # L-BFGS iterations per fit; a fit that stops there is unconverged
    tolerance: float = 1e-4                     # converged: max |gradient| <= tolerance (scikit-learn's default)

    DEFAULT_EPOCHS = 50
    PAPER_WARMUP_EPOCHS = 5
    # What the L-BFGS probe does not do, and the value a config must give for it (it would otherwise say one
    # thing and the job do another): no augmentation, features from the eval-mode backbone, standardised across
    # clips. `selection` may be any: the probe fits one model, which is every selection (sslam.evaluation.rounds).
    LBFGS_REQUIRES: ClassVar[dict[str, object]] = {
        "mixup": 0.0, "specaug_freq": 0.0, "specaug_time": 0.0, "roll": False, "noise": False,
        "label_smoothing": 0.0, "weighted_sampling": None, "linear_mode": "paper", "feature_norm": "batch"}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, l2="> 0", l2_folds=">= 2", max_iter=">= 1", tolerance="> 0")
        if not self.l2:
            raise ConfigError("l2: give at least one penalty value")
        if self.solver == "lbfgs":
            wrong = [f"{key}: {value!r} (needs {self.LBFGS_REQUIRES[key]!r})"
                     for key, value in ((key, getattr(self, key)) for key in self.LBFGS_REQUIRES)
                     if value != self.LBFGS_REQUIRES[key]]
            if wrong:
                raise ConfigError("solver lbfgs fits features extracted once, without augmentation: set "
                                  + "; ".join(wrong))
            if self.pooling == "attentive":   # a learned query: nothing to extract once before the fit
                raise ConfigError("solver lbfgs reads fixed pooled features: pooling cls, mean or time, "
                                  "not attentive (its query is trained; use solver adamw)")

    def default_warmup(self, steps_per_epoch: int) -> int:
        return self.PAPER_WARMUP_EPOCHS * steps_per_epoch if self.linear_mode == "paper" else 0


@dataclass
class BenchmarkConfig:
    """One downstream benchmark: which cached dataset, which protocol, which metric."""

    dataset: str                                # name under `datasets:` whose cache holds the test clips
    train_dataset: str | None = None            # where the training clips live (polyphony: poly); None = dataset
    task: Literal["multilabel", "multiclass"] = "multilabel"
    metric: Literal["map", "accuracy"] = "map"
    protocol: Literal["split", "folds"] = "split"
    folds: list[int] = field(default_factory=list)  # folds protocol; empty = every fold in the data
    train_splits: list[str] = field(default_factory=lambda: ["train"])
    valid_split: str | None = "valid"           # used by selection best_on_valid when such rows exist
    eval_split: str = "eval"
    bin_column: str | None = "auto"             # per-bin scores; auto = polyphony_bin, else polyphony, if present
    num_workers: int = 2
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    linear: LinearProbeConfig = field(default_factory=LinearProbeConfig)

    def __post_init__(self) -> None:
        check_ranges(self, num_workers=">= 0", folds=">= 0")
        if self.task == "multiclass" and self.metric == "map" or self.task == "multilabel" and self.metric == "accuracy":
            raise ConfigError(f"metric {self.metric!r} does not fit task {self.task!r}")

    @property
    def training_dataset(self) -> str:
        return self.train_dataset or self.dataset

    def regime(self, name: str) -> RegimeConfig:
        if name not in ("finetune", "linear"):
            raise ConfigError(f"unknown regime {name!r}; expected finetune or linear")
        return self.finetune if name == "finetune" else self.linear

    def loss(self, regime: RegimeConfig) -> str:
        if regime.loss != "auto":
            return regime.loss
        return "bce" if self.task == "multilabel" else "ce"
