"""Separate virtual environments for the official checkers (HEAR's validator imports tensorflow, X-ARES pulls
transformers and more, mteb datasets and sentence-transformers), built once and cached outside the repository.

An environment is keyed by its pinned requirements, the Python version and the interpreter running the
tests. It sees this interpreter's site-packages (torch, torchaudio, numpy... through a path file, without
running that folder's own .pth files, so an editable install of another checkout stays inactive); what
the checker needs on top is installed into the environment itself. The sslam under test is put on
PYTHONPATH by the tests. Location: $SSLAM_ENV_CACHE, else $XDG_CACHE_HOME/sslam/envs, else ~/.cache/sslam/envs.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

# name -> (requirements installed with their dependencies, requirements installed without)
PINS: dict[str, tuple[list[str], list[str]]] = {
    # hearvalidator 2021.0.2 asks for "tensorflow" but only uses it for isinstance checks and tf.device:
    # the CPU build is the same package at a third of the download.
    "hear": (["tensorflow-cpu==2.21.0"], ["hearvalidator==2021.0.2"]),
    "xares": (["xares==0.1.3"], []),
    # MAEB's runner. Without the `audio` extra: datasets' Audio feature decodes through torchcodec, which needs
    # FFmpeg's shared libraries; the test feeds mteb's mock tasks their arrays as they are instead.
    "mteb": (["mteb==2.26.24"], []),
}
COMPLETE = ".complete"


def cache_root() -> Path:
    if os.environ.get("SSLAM_ENV_CACHE"):
        return Path(os.environ["SSLAM_ENV_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sslam" / "envs"


def environment_key(name: str) -> str:
    record = {"name": name, "pins": PINS[name], "python": sys.version, "parent": sys.prefix}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:12]


def _run(command: list[str], log: Path) -> None:
    with open(log, "a") as stream:
        stream.write("$ " + " ".join(command) + "\n")
        stream.flush()
        result = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, timeout=3600)
    if result.returncode:
        tail = log.read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"{' '.join(command[:4])}... failed (exit {result.returncode}): {' | '.join(tail)} "
                           f"(full log: {log})")


def ensure_environment(name: str) -> tuple[Path | None, str]:
    """(the environment's folder, "") once it is built, or (None, why it cannot be built)."""
    root = cache_root()
    env = root / f"{name}-{environment_key(name)}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f"{env.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another test session may be building it
            if (env / COMPLETE).is_file():
                return env, ""
            shutil.rmtree(env, ignore_errors=True)  # a half-built one
            log = root / f"{env.name}.log"
            log.write_text("")
            _run([sys.executable, "-m", "venv", str(env)], log)
            python = env / "bin" / "python"
            child_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        capture_output=True, text=True, check=True).stdout.strip()
            parent_sites = [p for p in site.getsitepackages() if Path(p).is_dir()]
            (Path(child_site) / "_sslam_parent_site.pth").write_text("\n".join(parent_sites) + "\n")
            pip = [str(python), "-m", "pip", "install", "--no-input", "--disable-pip-version-check", "-q"]
            with_deps, without_deps = PINS[name]
            if with_deps:
                _run(pip + with_deps, log)
            if without_deps:
                _run(pip + ["--no-deps"] + without_deps, log)
            (env / COMPLETE).write_text(json.dumps(PINS[name]))
            return env, ""
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        return None, f"cannot build the {name} checker environment in {env}: {error}"


def environment_variables(repo_root: Path, **extra: str) -> dict[str, str]:
    """The subprocess environment: the tested sslam first on the path, one thread, no hub access."""
    variables = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    variables.update(PYTHONPATH=str(repo_root), OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2",
                     HF_HUB_OFFLINE="1", **extra)
    return variables
