"""Fixtures of tests/train; the helpers live in train_helpers.py (a unique module name, so that
`from train_helpers import ...` never picks up another folder's conftest)."""
from train_helpers import *  # noqa: F401,F403  (re-exports the fixtures)
