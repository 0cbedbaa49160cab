"""code_hash: stable across copies, follows package-internal imports, scoped per target."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sslam.provenance import code_hash, source_files

REPO = Path(__file__).resolve().parents[2]


def hash_in(root: Path, *targets: str) -> str:
    """code_hash computed by the package copy under `root` (a fresh interpreter, so nothing is cached)."""
    program = f"from sslam.provenance import code_hash; print(code_hash({', '.join(map(repr, targets))}))"
    return subprocess.run([sys.executable, "-c", program], cwd=root, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture
def package_copy(tmp_path) -> Path:
    shutil.copytree(REPO / "sslam", tmp_path / "sslam", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_hash_is_stable_across_copies(package_copy):
    assert hash_in(package_copy, "sslam.audio") == code_hash("sslam.audio")
    assert len(code_hash("sslam.audio")) == 16


def test_imports_are_followed_but_scopes_stay_apart(package_copy):
    files = {path.relative_to(REPO / "sslam").as_posix() for path in source_files("sslam.tables")}
    assert {"tables/aggregate.py", "configuration.py", "errors.py", "__init__.py"} <= files
    assert not any(name.startswith(("model/", "objective/")) for name in files)
    before = {target: hash_in(package_copy, target) for target in ("sslam.tables", "sslam.audio")}
    with open(package_copy / "sslam" / "configuration.py", "a") as handle:  # imported by the tables
        handle.write("\n# an edit\n")
    assert hash_in(package_copy, "sslam.tables") != before["sslam.tables"]
    assert hash_in(package_copy, "sslam.audio") == before["sslam.audio"]  # audio does not import it


def test_unknown_target_is_an_error():
    with pytest.raises(ValueError, match="not a module or package"):
        code_hash("sslam.no_such_module")
