"""Moved to devstack.stack.postgres. This name is kept only for tests/platform/test_tls.py,
which is being edited elsewhere; delete it once that file imports from devstack.stack."""

from devstack.stack.postgres import initdb, pg_run_as, prepare_pg_dirs

__all__ = ["initdb", "pg_run_as", "prepare_pg_dirs"]
