"""`scripts/cli.py` whose PostgreSQL port defaults to TEST_DEFAULT_POSTGRES_PORT, not 5432.

5432 belongs to whoever runs a stack on this machine; with this launcher a test plays a
newcomer who never set POSTGRES_PORT (the port is a default, which `start` may move when
it is taken) on a port of its own. Everything else is the real CLI.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from devstack.stack.config import StackSettings


class DefaultPortSettings(StackSettings):
    postgres_port: int = int(os.environ["TEST_DEFAULT_POSTGRES_PORT"])


if __name__ == "__main__":
    from devstack.cli import main

    main(DefaultPortSettings)
