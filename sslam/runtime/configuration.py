"""Typed configuration: YAML is read once, each entry point gets its own dataclass.

`from_dict` builds a (possibly nested) dataclass from a mapping and raises `ConfigError` naming
the exact key when a key is unknown or a value has the wrong type, so a typo in a YAML file fails
before any job starts instead of being silently ignored.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from sslam.runtime.errors import ConfigError
from sslam.runtime.io import read_text

T = TypeVar("T")


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    text = read_text(path, "config file", ConfigError)    # a folder, a binary file...: one line each
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:  # PyYAML's message spans lines (context, problem, a caret): keep one
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        words = ", ".join(part for part in (getattr(error, "context", None), getattr(error, "problem", None)) if part)
        raise ConfigError(f"{path} is not valid YAML{where}: {' '.join((words or str(error)).split())}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def section(config: dict[str, Any], dotted: str, default: Any = None) -> Any:
    """`section(cfg, "pretrain.stage1")` -> cfg["pretrain"]["stage1"] (or `default` if absent)."""
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return {} if default is None else default
        node = node[key]
    return node


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(annotation, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        inner = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, inner, f"{where}.{k}") for k, v in value.items()}
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


class ConfigValueError(ConfigError):
    """A value outside its range; `key` is the field, so that `from_dict` can name the full dotted key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


_NUMBER = r"-?(?:inf|[\d.]+(?:e[+-]?\d+)?)"
_RANGE = re.compile(rf"^\s*(?:([\[(])\s*({_NUMBER})\s*,\s*({_NUMBER})\s*([\])])|(>=|>|<=|<)\s*({_NUMBER}))\s*$")


def _inside(value: float, rule: str) -> bool:
    match = _RANGE.match(rule)
    if match is None:
        raise ValueError(f"bad range rule {rule!r}")
    opening, low, high, closing, operator, bound = match.groups()
    if operator:
        limit = float(bound)
        return {">": value > limit, ">=": value >= limit, "<": value < limit, "<=": value <= limit}[operator]
    low_ok = value >= float(low) if opening == "[" else value > float(low)
    high_ok = value <= float(high) if closing == "]" else value < float(high)
    return low_ok and high_ok


def check_ranges(instance: Any, **rules: str) -> None:
    """Range-check fields of a config dataclass: `check_ranges(self, lr="> 0", betas="[0, 1)", steps=">= 1")`.

    None (an optional field left unset) passes; a tuple or list is checked element by element; NaN never
    passes. Raises ConfigValueError naming the field; `from_dict` prefixes the section, so the user reads
    e.g. `evaluation.benchmarks.X.linear.lr: must be > 0, got -1.0`.
    """
    for name, rule in rules.items():
        value = getattr(instance, name)
        values = value if isinstance(value, (tuple, list)) else [value]
        for item in values:
            if item is None:
                continue
            if isinstance(item, bool) or not isinstance(item, (int, float)) or not _inside(item, rule):
                raise ConfigValueError(name, f"must be {rule.strip()}, got {value!r}")


def cli_number(rule: str, kind: type = int):
    """An argparse `type` that range-checks too: `add_argument("--num-shards", type=cli_number(">= 1"))`."""
    import argparse

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if not _inside(value, rule):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass `cls` from `data`; unknown keys and mistyped values raise ConfigError."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"known keys here: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except ConfigValueError as error:
        raise ConfigValueError(f"{where}.{error.key}" if where else error.key, error.problem) from error
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where or cls.__name__}: {error}") from error


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain YAML/JSON-friendly data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
