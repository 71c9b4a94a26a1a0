"""The operator CLI (installed as `orders COMMAND`): order and inspection commands on the
service layer, the same implementation the REST API uses, against the Temporal and
PostgreSQL the settings name. The dev launcher `python scripts/cli.py` builds a CLI of
these commands, pointed at the embedded stack, and adds the stack's own (devstack/cli).

Exit codes: 0 success, 1 operational error (one line on stderr, never a traceback), 2
usage error, 3 `reconcile` left findings unresolved.
"""

from __future__ import annotations

from app.cli import inspect, orders, reconcile
from app.cli.common import OPERATOR, build_app, exit_now, run_app

# The operator's commands, in the order `--help` lists them.
COMMAND_GROUPS = (inspect.commands, orders.commands, reconcile.commands)


def main() -> None:
    """Console entry point: usage errors exit 2 (Click), operational errors exit 1."""
    exit_now(run_app(build_app(COMMAND_GROUPS), OPERATOR))


if __name__ == "__main__":
    main()
