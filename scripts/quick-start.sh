#!/usr/bin/env bash
# From a fresh clone to a running stack in one command (safe to run again):
# .venv + install, .env from .env.example, the embedded stack (PostgreSQL, Temporal + UI,
# workers, API), a health check, a short demo, then the URLs. No Docker needed; for the
# compose stack use `python scripts/cli.py start --compose`.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

if [ ! -x .venv/bin/python ]; then
    if ! PY=$(find_python); then
        echo "error: Python 3.11+ is required (set PYTHON=/path/to/python3.11)" >&2
        exit 1
    fi
    echo "==> creating .venv with $PY"
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: .venv uses $(.venv/bin/python --version 2>&1); remove .venv and use Python 3.11+" >&2
    exit 1
fi

# Reinstall only when pyproject.toml changed since the last run (the code itself is
# installed in editable mode).
stamp=.venv/.quick-start-installed
wanted=$(.venv/bin/python -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "==> installing the project into .venv"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[devstack]"
    echo "$wanted" > "$stamp"
fi

if [ ! -f .env ]; then
    echo "==> creating .env from .env.example"
    cp .env.example .env
fi

echo "==> starting the embedded stack"
.venv/bin/python scripts/cli.py start

echo "==> checking connections"
.venv/bin/python - <<'PY'
import sys

import httpx

from app.platform.settings import Settings
from devstack.stack.app_processes import api_url

url = f"{api_url(Settings())}/health"
try:
    response = httpx.get(url, timeout=5.0)
    body = response.json()
except (httpx.HTTPError, ValueError) as exc:
    sys.exit(f"error: {url} did not answer: {exc}")
for name, dep in body.get("dependencies", {}).items():
    print(f"  {name}: {dep.get('status')}")
if response.status_code != 200:
    sys.exit(f"error: {url} answered {response.status_code}")
print(f"  API: up ({url})")
PY

echo "==> running the demo"
.venv/bin/python scripts/cli.py demo

echo
echo "Ready. Everything keeps running in the background (python scripts/cli.py stop ends it)."
.venv/bin/python - <<'PY'
from devstack.cli import endpoints
from devstack.stack.config import StackSettings

settings = StackSettings()
for name, where in endpoints(settings):
    print(f"  {name:<14} {where}")
print()
profile = settings.fault_profile
if profile.strip().lower() == "off":
    print("Simulated faults are off (FAULT_PROFILE=off).")
else:
    print(
        f"Orders meet simulated faults by default (FAULT_PROFILE={profile}): most fail or retry."
    )
    print("  --fault-profile off runs one without them, as the README's walk does.")
print('Next: the walk in README.md ("Using it"), from its first line:')
print("  python scripts/cli.py start-workflow order-123 pmt-123 --fault-profile off")
PY
