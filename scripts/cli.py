#!/usr/bin/env python3
"""Launcher for the order service CLI: `python scripts/cli.py --help`.

Works from a plain shell: outside the project's .venv it re-runs itself with
.venv/bin/python (created by scripts/quick-start.sh), so nobody has to activate anything.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"


def ensure_project_python() -> None:
    """Re-exec the running script with the project's venv interpreter when we are not in it,
    and make the project importable (it need not be pip-installed)."""
    venv_python = VENV / "bin" / "python"
    in_venv = Path(sys.prefix).resolve() == VENV.resolve()
    if not in_venv and venv_python.exists():
        # The venv's python must be called by its own path (not resolved) to be "in" it.
        script = os.path.abspath(sys.argv[0])
        os.execv(str(venv_python), [str(venv_python), script, *sys.argv[1:]])
    if sys.version_info < (3, 11):  # noqa: UP036 - this file may run under any python3
        sys.exit("error: Python 3.11+ is needed; run ./scripts/quick-start.sh first")
    sys.path.insert(0, str(ROOT))


if __name__ == "__main__":
    ensure_project_python()
    try:
        from devstack.cli import main
    except ImportError as exc:
        sys.exit(f"error: {exc}; run ./scripts/quick-start.sh first (it creates .venv)")
    main()
