"""The data layer's typed settings: one `datasets.<name>` entry and the `cache` section.

Torch-free on purpose: the study model (sslam.study.dag) builds them when the workflow is parsed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sslam.runtime.configuration import check_ranges
from sslam.runtime.errors import ConfigError
from sslam.runtime.limits import MAX_TARGET_LENGTH


# The official loader's `min_sample_size`: clips with fewer samples are dropped from training and evaluation.
OFFICIAL_MIN_SAMPLES = 10_000


@dataclass
class DatasetConfig:
    """One entry of the `datasets:` config section.

    `adapter` names the on-disk layout (see sslam.data.adapters.ADAPTERS), `root` its folder and
    `options` the adapter's keyword options. `target_length` (fbank frames), `norm_mean`/`norm_std`
    and `shards` are read by the HDF5 cache and the datasets; norm_* null = computed from the
    cached train split (the defaults are the official AudioSet statistics). `finetune_norm_mean`/
    `finetune_norm_std` replace them for fine-tuning where the paper gives a second pair (Degrees of
    Polyphony, Table 8). `holdout` moves that share of the training clips to a `valid` split
    (sslam.data.holdout), whatever the adapter; `min_samples` drops clips shorter than that many samples at
    16 kHz from the cache, as the official loader does (`min_sample_size` 10000; 0 keeps every clip).
    """

    adapter: str
    root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    target_length: int = 1024
    norm_mean: float | None = -4.268
    norm_std: float | None = 4.569
    shards: int = 1
    finetune_norm_mean: float | None = None     # None = norm_mean in both regimes
    finetune_norm_std: float | None = None
    holdout: float = 0.0                        # share of the training clips held out as `valid` (0 = none)
    min_samples: int = OFFICIAL_MIN_SAMPLES     # shorter clips are not cached (0 keeps every clip)

    def __post_init__(self) -> None:
        # target_length within the limit every shard reader checks (sslam.runtime.limits).
        check_ranges(self, target_length=f"[1, {MAX_TARGET_LENGTH}]", norm_mean="(-inf, inf)", norm_std="> 0",
                     shards=">= 1", finetune_norm_mean="(-inf, inf)", finetune_norm_std="> 0", holdout="[0, 1)",
                     min_samples=">= 0")
        if (self.finetune_norm_mean is None) != (self.finetune_norm_std is None):
            raise ConfigError("give both finetune_norm_mean and finetune_norm_std, or neither")

    def normalisation(self, regime: str) -> tuple[float | None, float | None]:
        """(mean, std) that `regime` (finetune | linear) normalises this dataset's clips with."""
        if regime == "finetune" and self.finetune_norm_mean is not None:
            return self.finetune_norm_mean, self.finetune_norm_std
        return self.norm_mean, self.norm_std


@dataclass
class CacheConfig:
    max_failure_fraction: float = 0.05      # skipped / total clips above this fails the shard
    compression: str | None = None          # None, "lzf" or "gzip"; None reads fastest

    def __post_init__(self) -> None:
        check_ranges(self, max_failure_fraction="[0, 1]")
        if self.compression not in (None, "lzf", "gzip"):
            raise ConfigError(f"cache.compression must be null, 'lzf' or 'gzip', got {self.compression!r}")


def study_shard_paths(results_dir: str | Path, dataset: str, num_shards: int) -> list[Path]:
    """Where a study keeps the cache of `dataset`: <results>/cache/<dataset>/shard-{i:03d}-of-{n:03d}.h5.
    The workflow writes shards there and the jobs read them from there, both through this function."""
    return [Path(results_dir) / "cache" / dataset / f"shard-{i:03d}-of-{num_shards:03d}.h5" for i in range(num_shards)]
