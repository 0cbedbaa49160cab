"""Checkpoint routes: what a checkpoint argument may name, resolved to one weights file (the input settings
that file records are `sslam.model.checkpoints.settings`').

A checkpoint argument (``sslam extract CKPT``, ``load_encoder(spec)``, ``--init``...) may be:

* a file: a sslam ``.pt``, a fairseq ``.pt`` or a ``.safetensors`` file, read by ``sslam.model.checkpoints.read``;
* ``hf:OWNER/NAME[@REV][:FILE]``: a Hugging Face Hub model repository (docs/checkpoints.md lists the
  released EAT and SSLAM ones). FILE defaults to ``model.safetensors``, whose ``config.json`` is fetched
  beside it when the repository has one. Downloads go through ``huggingface_hub``, so its cache
  (``HF_HUB_CACHE`` / ``HF_HOME``), token and offline mode (``HF_HUB_OFFLINE=1``: cache only) apply. The hub is
  asked once, for at most `REACH_TIMEOUT_S` seconds, before anything is downloaded: when it does not answer, the
  cache is read instead, and a file not there is one error line within seconds (huggingface_hub alone would
  retry every file for over a minute);
* a folder: a Hugging Face model folder holding ``model.safetensors`` (+ ``config.json``), as written by
  ``sslam export --format pretrained`` or ``hf download --local-dir``, or a hub cache entry
  ``…/models--OWNER--NAME`` (the snapshot its ``refs/main`` names, or its only snapshot).

huggingface_hub is imported only for the routes that need it (the optional ``embeddings`` extra).
"""
from __future__ import annotations

import re
import urllib.parse
import warnings
from pathlib import Path
from typing import Any

from sslam.model.checkpoints.types import CheckpointError

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

    unreachable = options.pop("unreachable", None)
    try:
        return Path(hub.hf_hub_download(repo, filename, revision=revision, **options))
    except errors.LocalEntryNotFoundError as error:  # before EntryNotFoundError: it is one
        if optional:
            return None
        cache = options.get("cache_dir") or constants.HF_HUB_CACHE
        if unreachable is not None:
            host = urllib.parse.urlsplit(constants.ENDPOINT).netloc or constants.ENDPOINT
            raise CheckpointError(
                f"{what}: the Hugging Face hub ({host}) cannot be reached ({unreachable}) and {filename} is not in "
                f"the Hugging Face cache ({cache}); download it where there is network (hf download {repo}) into "
                "that cache (HF_HUB_CACHE), or name a local file or folder; HF_HUB_OFFLINE=1 reads only the cache, "
                "without trying the network") from error
        if options.get("local_files_only"):
            reason = "this folder is read without the network"
        elif constants.HF_HUB_OFFLINE:
            reason = "offline mode (HF_HUB_OFFLINE=1) is on"
        else:
            reason = "the hub is unreachable (HF_HUB_OFFLINE=1 reads only the cache, without trying the network)"
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
    _huggingface_hub()
    from huggingface_hub import constants

    options: dict[str, Any] = {}
    if not constants.HF_HUB_OFFLINE:
        # huggingface_hub retries an unreachable hub for over a minute per file before it gives up; asking
        # once, briefly, turns that into one line (or a read of the cache) within seconds.
        why = hub_unreachable(constants.ENDPOINT)
        if why is not None:
            options = {"local_files_only": True, "unreachable": why}
    if filename == WEIGHTS_NAME:  # the architecture of an EAT-style repo is in its config.json
        _download(repo, CONFIG_NAME, revision, spec, optional=True, **options)
    path = _download(repo, filename, revision, spec, **options)
    if options:
        warnings.warn(f"{spec}: the Hugging Face hub cannot be reached ({options['unreachable']}); using the copy "
                      "in the Hugging Face cache", stacklevel=3)
    return path


REACH_TIMEOUT_S = 3.0  # how long the hub may take to answer one request before it counts as unreachable


def hub_unreachable(endpoint: str, timeout: float = REACH_TIMEOUT_S) -> str | None:
    """None when the hub at `endpoint` answers an HTTP request (any status) within `timeout` seconds, else why
    not. The request goes through the environment's proxy settings, as huggingface_hub's do. It runs in a
    daemon thread, because a name lookup is not bounded by the socket timeout."""
    import threading
    import urllib.error
    import urllib.request

    outcome: list[str | None] = []

    def ask() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(f"{endpoint.rstrip('/')}/api/models", method="HEAD"),
                                   timeout=timeout).close()
            outcome.append(None)
        except urllib.error.HTTPError:  # an answer, even an error status: the hub is there
            outcome.append(None)
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            outcome.append(str(reason) or type(reason).__name__)

    thread = threading.Thread(target=ask, name="sslam-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if not outcome:
        return f"no answer within {timeout:g} s"
    return outcome[0]


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


__all__ = ["resolve_checkpoint"]
