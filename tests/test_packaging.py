"""pyproject.toml in the form setuptools >= 77 reads without deprecation warnings (`make env`, `make demo`):
an SPDX license string, the license file listed and present, and a build requirement that understands both."""
from pathlib import Path

import pytest

import sslam

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(sslam.__file__).resolve().parents[1]


def test_license_is_an_spdx_string_with_its_file():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"  # a table ({text = ...}) is deprecated
    files = project["project"]["license-files"]
    assert files and all((REPO / name).is_file() for name in files)
    assert "MIT License" in (REPO / files[0]).read_text()
    assert any(req.replace(" ", "").startswith("setuptools>=77") for req in project["build-system"]["requires"])
