"""sslam.fingerprints.schedule: a job keeps its fingerprint while the code it executed is unchanged — where
it was or where it moved to (digest rules 2) — and is re-scheduled when what it ran or read changed.

Each case records a small job in a copy of the package, edits the copy, and asks the copy's own scheduler
(in a subprocess, so that the copy's files are the package)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBE = {
    "__init__.py": '"""A probe package."""\n',
    "limits.py": 'SCALE = 3\nOTHER = 5\n',
    "numbers.py": '''from sslam._probe.limits import SCALE


def scaled(value, parser=None):
    if parser is not None:
        parser.add_argument("--x", help="the x of a scaled value")
    return value * SCALE + offset()


def offset():
    from sslam._probe.limits import OTHER

    return OTHER


def unused():
    return 0
''',
}
JOB = """
import sys
import argparse
import sslam
from sslam._probe.numbers import scaled
scaled(2, argparse.ArgumentParser())
from sslam.fingerprints import finish_recording
finish_recording()
"""
ASK = """
import json, sys
from sslam.fingerprints import Scheduler
result = Scheduler().scheduled(sys.argv[1], "sslam._probe.numbers")
print(json.dumps({"value": result.value, "changed": result.changed, "moved": result.moved}))
"""


@pytest.fixture
def copy(tmp_path) -> Path:
    shutil.copytree(REPO / "sslam", tmp_path / "sslam", ignore=shutil.ignore_patterns("__pycache__"))
    probe = tmp_path / "sslam" / "_probe"
    probe.mkdir()
    for name, text in PROBE.items():
        (probe / name).write_text(text)
    record = tmp_path / "job.code.json"
    _python(tmp_path, JOB, SSLAM_CODE_RECORD=str(record), SSLAM_FINGERPRINT="P0")
    return tmp_path


def _python(root: Path, program: str, *arguments: str, **environment: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(root), "SSLAM_CACHE": str(root / "cache"), **environment}
    env.pop("SSLAM_CODE_RECORD", None) if "SSLAM_CODE_RECORD" not in environment else None
    result = subprocess.run([sys.executable, "-c", program, *arguments], cwd=root, env=env, capture_output=True,
                            text=True, check=True)
    return result.stdout


def scheduled(root: Path) -> dict:
    return json.loads(_python(root, ASK, str(root / "job.code.json")))


def edit(root: Path, name: str, old: str, new: str) -> None:
    path = root / "sslam" / "_probe" / name
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


def test_the_record_names_what_ran_and_what_it_read(copy):
    record = json.loads((copy / "job.code.json").read_text())
    assert record["rules"] == 2 and record["fingerprint"] == "P0"
    assert {"sslam._probe.numbers:scaled", "sslam._probe.numbers:offset"} <= set(record["roots"])
    # The constant imported at module level and the one imported inside `offset` are both read.
    assert {"sslam._probe.limits:=SCALE", "sslam._probe.limits:=OTHER"} <= set(record["units"])
    assert "sslam._probe.numbers:unused" not in record["units"]
    assert not any(unit.startswith("sslam.fingerprints") for unit in record["units"])   # the machinery
    assert scheduled(copy) == {"value": "P0", "changed": [], "moved": {}}


def test_code_that_only_moved_keeps_its_fingerprint(copy):
    # `offset` moves to its own module and `numbers` imports it back; `limits` becomes `bounds`.
    edit(copy, "numbers.py", "\n\ndef offset():\n    from sslam._probe.limits import OTHER\n\n    return OTHER\n", "")
    edit(copy, "numbers.py", "from sslam._probe.limits import SCALE\n",
         "from sslam._probe.bounds import SCALE\nfrom sslam._probe.offsets import offset\n")
    (copy / "sslam" / "_probe" / "offsets.py").write_text(
        "def offset():\n    from sslam._probe.bounds import OTHER\n\n    return OTHER\n")
    (copy / "sslam" / "_probe" / "limits.py").rename(copy / "sslam" / "_probe" / "bounds.py")
    result = scheduled(copy)
    assert result["value"] == "P0" and result["changed"] == []
    assert result["moved"] == {"sslam._probe.numbers:offset": "sslam._probe.offsets:offset",
                               "sslam._probe.numbers:=offset": "sslam._probe.offsets:=offset",
                               "sslam._probe.limits:=SCALE": "sslam._probe.bounds:=SCALE",
                               "sslam._probe.limits:=OTHER": "sslam._probe.bounds:=OTHER",
                               "sslam._probe.limits:<module>": "sslam._probe.bounds:<module>"}


def test_help_texts_comments_and_unused_code_are_not_changes(copy):
    edit(copy, "numbers.py", 'help="the x of a scaled value"', 'help="x, to be scaled (a new help text)"')
    edit(copy, "numbers.py", "def unused():\n    return 0", "def unused():  # still unused\n    return 1")
    assert scheduled(copy)["value"] == "P0"


@pytest.mark.parametrize("name, old, new", [
    ("limits.py", "SCALE = 3", "SCALE = 4"),                       # a constant read through a module-level import
    ("limits.py", "OTHER = 5", "OTHER = 6"),                       # ... through an import inside a function
    ("numbers.py", "return value * SCALE", "return value * SCALE * 1"),   # the code itself
])
def test_a_change_to_what_ran_or_what_it_read_reschedules(copy, name, old, new):
    edit(copy, name, old, new)
    result = scheduled(copy)
    assert result["value"] != "P0" and result["changed"]


def test_an_import_that_now_names_other_data_reschedules(copy):
    # Same code, same names, but SCALE now comes from another module (with another value).
    (copy / "sslam" / "_probe" / "other.py").write_text("SCALE = 30\n")
    edit(copy, "numbers.py", "from sslam._probe.limits import SCALE", "from sslam._probe.other import SCALE")
    result = scheduled(copy)
    assert result["value"] != "P0" and result["changed"] == ["sslam._probe.numbers:scaled"]   # what reads it


def test_new_code_on_the_import_path_reschedules(copy):
    # The job's modules move into a package whose __init__ acts when imported: code the job never ran.
    package = copy / "sslam" / "_probe" / "inner"
    package.mkdir()
    (package / "__init__.py").write_text('print("importing inner")\n')
    (copy / "sslam" / "_probe" / "limits.py").rename(package / "limits.py")
    edit(copy, "numbers.py", "sslam._probe.limits", "sslam._probe.inner.limits")   # both imports
    result = scheduled(copy)
    assert result["changed"] == ["sslam._probe.inner:<module>"]
    (package / "__init__.py").write_text('"""A package that only holds modules."""\n')
    assert scheduled(copy)["value"] == "P0"


def test_a_new_import_of_a_module_that_acts_reschedules(copy):
    # `numbers` now imports, at module level, a module whose body does something: code the job never ran.
    (copy / "sslam" / "_probe" / "noisy.py").write_text('print("noisy")\nLOUD = 1\n')
    edit(copy, "numbers.py", "from sslam._probe.limits import SCALE\n",
         "from sslam._probe.limits import SCALE\nfrom sslam._probe.noisy import LOUD  # noqa: F401\n")
    assert scheduled(copy)["changed"] == ["sslam._probe.noisy:<module>"]
    (copy / "sslam" / "_probe" / "noisy.py").write_text('"""Quiet now."""\nLOUD = 1\n')
    assert scheduled(copy)["value"] == "P0"
