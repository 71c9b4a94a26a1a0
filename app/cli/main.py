"""The operator CLI (installed as `orders COMMAND`): order and inspection commands on the
service layer, the same implementation the REST API uses, against the Temporal and
PostgreSQL the settings name. The dev launcher `python scripts/cli.py` adds the embedded
stack's commands (devstack/cli.py).

Exit codes: 0 success, 1 operational error (one line on stderr, never a traceback), 2
usage error, 3 `reconcile` left findings unresolved.
"""

from __future__ import annotations

# The command groups register themselves on the one Typer app when imported.
from app.cli import inspect, orders, reconcile
from app.cli.common import app, exit_now, run_app

__all__ = ["app", "inspect", "main", "orders", "reconcile"]


def main() -> None:
    """Console entry point: usage errors exit 2 (Click), operational errors exit 1."""
    exit_now(run_app())


if __name__ == "__main__":
    main()
