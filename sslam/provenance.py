"""Code provenance: a stable hash of the package source that a job's result depends on.

Snakemake re-runs a job when its shell text changes, not when a module it imports changes. The
workflow therefore puts `code_hash(...)` of each rule's own slice of the package into the rule's
`params` at parse time: editing the source retention loss changes the pretraining hash (and so
re-runs pretraining and everything downstream) but leaves the cache hash, and the cache, alone.

A target is a dotted name inside the package ("sslam.audio", "sslam.model"): a module stands for
its file, a package for every .py file below it. The hash also follows the package-internal
imports of those files transitively (and the `__init__.py` of every package on the way, which
Python runs on import), so a helper that the loss imports from elsewhere is covered too.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import os
from pathlib import Path

PACKAGE = "sslam"
PACKAGE_ROOT = Path(__file__).resolve().parent
HASH_LENGTH = 16  # hex digits: plenty to tell code versions apart, short enough for logs and tags


def _module_path(dotted: str) -> Path | None:
    """File or package folder for `sslam.x.y`, or None when it is not part of the package."""
    parts = dotted.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_ROOT.joinpath(*parts[1:])
    if base.is_dir() and (base / "__init__.py").is_file():
        return base
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _dotted_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE_ROOT.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _files_of(dotted: str, whole_package: bool) -> list[Path]:
    """The module's file; for a package, every file below it when it is a target, else only its
    `__init__.py` (what `import sslam.data` actually runs)."""
    path = _module_path(dotted)
    if path is None:
        return []
    if path.is_dir():
        files = sorted(path.rglob("*.py")) if whole_package else [path / "__init__.py"]
    else:
        files = [path]
    # Importing sslam.a.b runs sslam/__init__.py and sslam/a/__init__.py first.
    parts = dotted.split(".")
    for depth in range(1, len(parts) + 1):
        init = PACKAGE_ROOT.joinpath(*parts[1:depth], "__init__.py")
        if init.is_file():
            files.append(init)
    return files


def _imported_names(path: Path) -> set[str]:
    """Dotted names of the package-internal modules that `path` imports (absolute or relative)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    own = _dotted_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                module = ".".join(anchor + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            # `from sslam.data import cache` imports a module, `from sslam.audio import X` a name.
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.split(".")[0] == PACKAGE and _module_path(name) is not None}


def source_files(*targets: str) -> list[Path]:
    """Every package source file that the targets are made of or import, sorted."""
    if not targets:
        raise ValueError("source_files needs at least one target such as 'sslam.model'")
    pending: list[tuple[str, bool]] = []
    for target in targets:
        name = target if target.startswith(PACKAGE) else f"{PACKAGE}.{target}"
        if _module_path(name) is None:
            raise ValueError(f"{target!r} is not a module or package of {PACKAGE} (looked in {PACKAGE_ROOT})")
        pending.append((name, True))
    seen_names: set[tuple[str, bool]] = set()
    files: set[Path] = set()
    while pending:
        name, whole_package = pending.pop()
        if (name, whole_package) in seen_names:
            continue
        seen_names.add((name, whole_package))
        for file in _files_of(name, whole_package):
            if file not in files:
                files.add(file)
                pending.extend((imported, False) for imported in _imported_names(file))
    return sorted(files)


def code_hash(*targets: str) -> str:
    """Stable sha256 (first 16 hex digits) over the relative paths and bytes of `source_files(*targets)`.

    Independent of where the repository lives and of file modification times, so a copy of the
    tree or a fresh clone gives the same value for the same code.
    """
    digest = hashlib.sha256()
    for file in source_files(*targets):
        digest.update(file.relative_to(PACKAGE_ROOT.parent).as_posix().encode())
        digest.update(b"\0")
        digest.update(file.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:HASH_LENGTH]


FINGERPRINT_ENVIRONMENT = "SSLAM_FINGERPRINT"


def job_fingerprint(*entry_modules: str) -> str:
    """The code fingerprint of the running job: the one the workflow scheduled it with (the rule's
    `params.code`, passed in SSLAM_FINGERPRINT) so that its MLflow tag, its metrics.json and its log banner
    name the same code version as the rule; outside the workflow, the static hash of `entry_modules`."""
    return os.environ.get(FINGERPRINT_ENVIRONMENT) or code_hash(*entry_modules)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="print the code hash (and optionally the files) of package targets")
    parser.add_argument("targets", nargs="+", help="dotted names such as sslam.model or sslam.data.cache")
    parser.add_argument("--files", action="store_true", help="also list the files that go into the hash")
    args = parser.parse_args(argv)
    if args.files:
        for file in source_files(*args.targets):
            print(file.relative_to(PACKAGE_ROOT.parent))
    print(code_hash(*args.targets))


if __name__ == "__main__":
    main()
