"""Fixtures of tests/workflow; the helpers live in workflow_helpers.py (a unique module name, so that
`from workflow_helpers import ...` never picks up another folder's conftest)."""
from workflow_helpers import *  # noqa: F401,F403  (re-exports the fixtures)
