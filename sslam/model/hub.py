"""Checkpoint routes: what a checkpoint argument may name, resolved to one weights file, and the input
settings (normalisation, window) that file records.

A checkpoint argument (``sslam extract CKPT``, ``load_encoder(spec)``, ``--init``...) may be:

* a file: a sslam ``.pt``, a fairseq ``.pt`` or a ``.safetensors`` file, read by ``sslam.model.checkpoints``;
* ``hf:OWNER/NAME[@REV][:FILE]``: a Hugging Face Hub model repository (docs/checkpoints.md lists the
  released EAT and SSLAM ones). FILE defaults to ``model.safetensors``, whose ``config.json`` is fetched
  beside it when the repository has one. Downloads go through ``huggingface_hub``, so its cache
  (``HF_HUB_CACHE`` / ``HF_HOME``), token and offline mode (``HF_HUB_OFFLINE=1``: cache only) apply;
* a folder: a Hugging Face model folder holding ``model.safetensors`` (+ ``config.json``), as written by
  ``sslam export --format pretrained`` or ``hf download --local-dir``, or a hub cache entry
  ``…/models--OWNER--NAME`` (the snapshot its ``refs/main`` names, or its only snapshot).

huggingface_hub is imported only for the routes that need it (the optional ``embeddings`` extra).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sslam.front_end import AUDIOSET_MEAN, AUDIOSET_STD
from sslam.model.checkpoints import CheckpointError, LoadedCheckpoint
from sslam.model.config import EncoderConfig

HF_PREFIX = "hf:"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CACHE_REPO_PREFIX = "models--"
# OWNER/NAME, then an optional @revision (branch, tag or commit) and an optional :file inside the repo.
_HF_ROUTE = re.compile(r"hf:(?P<repo>[\w.\-]+/[\w.\-]+)(?:@(?P<revision>[^:\s]+))?(?::(?P<file>\S+))?")


# ---------------------------------------------------------------------------------------------- routes
def resolve_checkpoint(spec: str | Path) -> Path:
    """The weights file a checkpoint argument names (see the module docstring). Anything that is not an
    ``hf:`` id or a folder is returned unchanged, so a missing file is reported by the reader."""
    text = str(spec)
    if text.startswith(HF_PREFIX):
        return _from_hub(text)
    path = Path(spec)
    if path.is_dir():
        if path.name.startswith(CACHE_REPO_PREFIX):
            return _from_cache_entry(path)
        return _from_model_folder(path)
    return path


def _from_model_folder(folder: Path) -> Path:
    weights = folder / WEIGHTS_NAME
    if weights.is_file():
        return weights
    candidates = sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".pt"))
    if len(candidates) == 1:
        return folder / candidates[0]
    found = f"it holds {', '.join(candidates)}; name one" if candidates else "it holds no .safetensors or .pt file"
    raise CheckpointError(f"{folder} is not a model folder: no {WEIGHTS_NAME}, and {found}")


def _huggingface_hub():
    try:
        import huggingface_hub
    except ImportError as error:
        raise CheckpointError("hf: ids and Hugging Face cache folders need huggingface_hub: "
                              "pip install 'sslam[embeddings]'") from error
    return huggingface_hub


def _download(repo: str, filename: str, revision: str | None, what: str, *, optional: bool = False,
              **options: Any) -> Path | None:
    """hf_hub_download, with the hub's errors turned into one line; an `optional` file that is not
    there gives None."""
    hub = _huggingface_hub()
    from huggingface_hub import constants, errors

    try:
        return Path(hub.hf_hub_download(repo, filename, revision=revision, **options))
    except errors.LocalEntryNotFoundError as error:  # before EntryNotFoundError: it is one
        if optional:
            return None
        cache = options.get("cache_dir") or constants.HF_HUB_CACHE
        if options.get("local_files_only"):
            reason = "this folder is read without the network"
        elif constants.HF_HUB_OFFLINE:
            reason = "offline mode (HF_HUB_OFFLINE) is on"
        else:
            reason = "the hub is unreachable"
        raise CheckpointError(f"{what}: {filename} is not in the Hugging Face cache ({cache}) and {reason}") from error
    except errors.EntryNotFoundError:  # the remaining ones: the repository has no such file
        if optional:
            return None
        raise CheckpointError(f"{what}: the repository has no file {filename!r}") from None
    except errors.RepositoryNotFoundError as error:
        raise CheckpointError(f"{what}: no such repository (or it is private: log in with `hf auth login`)") from error
    except errors.RevisionNotFoundError as error:
        raise CheckpointError(f"{what}: no revision {revision!r} in the repository") from error
    except (errors.HFValidationError, errors.HfHubHTTPError, OSError) as error:
        raise CheckpointError(f"{what}: {str(error).splitlines()[0]}") from error


def _from_hub(spec: str) -> Path:
    match = _HF_ROUTE.fullmatch(spec)
    if match is None:
        raise CheckpointError(f"{spec!r} is not a Hugging Face id: expected hf:OWNER/NAME[@REVISION][:FILE]")
    repo, revision, filename = match["repo"], match["revision"], match["file"] or WEIGHTS_NAME
    if filename == WEIGHTS_NAME:  # the architecture of an EAT-style repo is in its config.json
        _download(repo, CONFIG_NAME, revision, spec, optional=True)
    return _download(repo, filename, revision, spec)


def _from_cache_entry(entry: Path) -> Path:
    """models--OWNER--NAME inside a hub cache folder: read through huggingface_hub, never the network."""
    repo = entry.name[len(CACHE_REPO_PREFIX):].replace("--", "/", 1)
    revision = None
    if not (entry / "refs" / "main").is_file():
        snapshots = sorted(p.name for p in (entry / "snapshots").glob("*") if p.is_dir())
        if len(snapshots) != 1:
            raise CheckpointError(f"{entry}: no refs/main and {len(snapshots)} snapshots; "
                                  "name one (…/snapshots/<revision>) instead")
        revision = snapshots[0]
    options = {"cache_dir": entry.parent, "local_files_only": True}
    _download(repo, CONFIG_NAME, revision, str(entry), optional=True, **options)
    return _download(repo, WEIGHTS_NAME, revision, str(entry), **options)


# ---------------------------------------------------------------------------------------------- input settings
@dataclass(frozen=True)
class InputSettings:
    """How the encoder's input was made in training: (x − norm_mean) / (2·norm_std) on the raw log-mel,
    clips padded/cut to `target_length` frames. `source` says where the values came from."""

    norm_mean: float = AUDIOSET_MEAN
    norm_std: float = AUDIOSET_STD
    target_length: int = 1024
    source: str = "default (AudioSet statistics, 1024 frames: the official EAT/SSLAM values)"

    def __post_init__(self) -> None:
        if not self.norm_std > 0:
            raise CheckpointError(f"norm_std must be > 0, got {self.norm_std} ({self.source})")
        if self.target_length < 1:
            raise CheckpointError(f"target_length must be >= 1, got {self.target_length} ({self.source})")

    def as_dict(self) -> dict[str, Any]:
        return {"norm_mean": self.norm_mean, "norm_std": self.norm_std, "target_length": self.target_length}


INPUT_KEYS = ("norm_mean", "norm_std", "target_length")
DEFAULT_TARGET_LENGTH = InputSettings.target_length


def default_input(config: EncoderConfig, source: str = InputSettings.source) -> InputSettings:
    """The official settings, with the window shortened to what a small encoder's positional table holds."""
    longest = config.max_time_patches * config.patch_size
    return InputSettings(target_length=min(DEFAULT_TARGET_LENGTH, longest), source=source)


def input_settings(loaded: LoadedCheckpoint) -> InputSettings:
    """The input settings a checkpoint records: the project's own files store them under "input" (written
    by training), model folders in config.json; anything else gets the official defaults."""
    stored, source = loaded.meta.get("input"), "the checkpoint"
    if not stored and loaded.meta.get("path"):
        config = Path(loaded.meta["path"]).with_name(CONFIG_NAME)
        if config.is_file():
            try:
                stored, source = json.loads(config.read_text()), str(config)
            except (OSError, json.JSONDecodeError) as error:
                raise CheckpointError(f"{config}: unreadable config: {error}") from error
    values = {key: stored[key] for key in INPUT_KEYS if isinstance(stored, dict) and stored.get(key) is not None}
    default = default_input(loaded.encoder_config)
    if not values:
        return default
    try:
        return InputSettings(float(values.get("norm_mean", default.norm_mean)),
                             float(values.get("norm_std", default.norm_std)),
                             int(values.get("target_length", default.target_length)), source=source)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: malformed input settings {values}: {error}") from error


__all__ = ["InputSettings", "default_input", "input_settings", "resolve_checkpoint"]
