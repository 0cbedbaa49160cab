"""Model ids of the study's evaluation results, and how tables name and order them.

A model id is the `variant` field of an evaluation job's metrics.json. The tables treat it as an
opaque string with one structured form, `<name>@<stage1 variant>`:

* `stage1`           the Stage-1 model (the EAT-style baseline row);
* `random`           a randomly initialised encoder of the same shape (a baseline, `study.baselines`);
* `MB-UA`, `SSLAM`…  a Stage-2 variant started from `stage1`;
* `stage1@<name>`    the Stage-1 model trained with the Stage-1 variant `<name>` (paper Table 4);
* `<variant>@<name>` the Stage-2 variant started from `stage1@<name>`.

`parse_model_id` is the only place that splits an id.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

STAGE1 = "stage1"
RANDOM = "random"
SEPARATOR = "@"
DEFAULT_BASELINES = (RANDOM,)   # study.baselines when the config does not say
_ID = re.compile(r"[A-Za-z0-9_.+-]+")


@dataclass(frozen=True)
class ModelId:
    name: str                    # `stage1`, `random` or a Stage-2 variant name
    stage1_variant: str | None   # the Stage-1 variant it descends from; None = the plain Stage 1

    @property
    def is_stage1(self) -> bool:
        return self.name == STAGE1

    def __str__(self) -> str:
        return self.name if self.stage1_variant is None else f"{self.name}{SEPARATOR}{self.stage1_variant}"


def parse_model_id(text: str) -> ModelId:
    """'SSLAM@mixed' -> ModelId('SSLAM', 'mixed'); anything without '@' is a plain name."""
    name, separator, stage1_variant = str(text).partition(SEPARATOR)
    if separator and (not name or not stage1_variant or SEPARATOR in stage1_variant):
        raise ValueError(f"model id {text!r}: expected NAME or NAME@STAGE1_VARIANT")
    return ModelId(name, stage1_variant if separator else None)


def is_valid_model_id(text: str) -> bool:
    try:
        model = parse_model_id(text)
    except ValueError:
        return False
    return all(_ID.fullmatch(part) for part in (model.name, model.stage1_variant or "x"))


def stage1_id(stage1_variant: str | None) -> str:
    return str(ModelId(STAGE1, stage1_variant))


def default_label(model_id: str) -> str:
    """The row label a table prints when its spec gives none."""
    model = parse_model_id(model_id)
    if model.name == RANDOM and model.stage1_variant is None:
        return "Random init (no pretraining)"
    if model.is_stage1:
        return "Stage 1 (EAT-style baseline)" if model.stage1_variant is None else f"Stage 1 ({model.stage1_variant})"
    if model.stage1_variant is None:
        return model.name
    return f"{model.name} (from Stage 1 {model.stage1_variant})"


def model_order(models: list[str], variants: list[str], stage1_variants: list[str] = (),
                baselines: list[str] = ()) -> list[str]:
    """Baselines, Stage 1, the Stage-1 variants, the Stage-2 variants (config order), the Stage-2 variants
    started from each Stage-1 variant, then anything else (sorted)."""
    wanted = [*baselines, STAGE1, *(stage1_id(name) for name in stage1_variants), *variants]
    wanted += [f"{variant}{SEPARATOR}{name}" for name in stage1_variants for variant in variants]
    present = set(models)
    ordered = list(dict.fromkeys(m for m in wanted if m in present))
    return ordered + sorted(present - set(ordered))
