"""Moved to devstack.stack.config. This name is kept only for tests/platform/test_tls.py,
which is being edited elsewhere; delete it once that file imports from devstack.stack."""

from devstack.stack.config import DEFAULT_PG_SETTINGS

__all__ = ["DEFAULT_PG_SETTINGS"]
