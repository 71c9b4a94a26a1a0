#!/usr/bin/env bash
# The whole test suite from a fresh clone: creates or reuses .venv, installs everything the
# tests need, checks lint/format/types, then runs unit, integration and e2e tests against
# real servers (Temporal dev server, time-skipping test server, embedded PostgreSQL) that
# the suite starts and stops itself. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: Python 3.11+ is required (found: $("$PYTHON" --version 2>&1))" >&2
    exit 1
fi

if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "$PYTHON" -m venv .venv
fi
echo "==> installing the project and its test tools"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'

# checkov scans the Kubernetes manifests (tests/deploy/test_k8s.py). It gets a venv of its
# own, .venv/checkov: it pins packaging below what pytest uses here and brings some 80
# packages the project does not need. Pinned: a new release brings new checks, taken on
# deliberately (deploy/k8s/checkov.yaml).
CHECKOV_VERSION=3.3.30
installed_checkov() {
    .venv/checkov/bin/python -c 'import importlib.metadata as m; print(m.version("checkov"))' 2>/dev/null
}
if [ "$(installed_checkov)" != "$CHECKOV_VERSION" ]; then
    echo "==> installing checkov $CHECKOV_VERSION into .venv/checkov"
    "$PYTHON" -m venv .venv/checkov
    .venv/checkov/bin/python -m pip install --quiet --upgrade pip
    .venv/checkov/bin/python -m pip install --quiet "checkov==$CHECKOV_VERSION"
fi

# The console's browser tests drive Debian's Chromium through Playwright (never
# `playwright install`: it downloads a browser this machine cannot fetch).
if [ ! -x /usr/bin/chromium ]; then
    echo "==> installing chromium (Debian package)"
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

# The TLS test needs a PostgreSQL built with OpenSSL (the embedded wheel has none).
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    echo "==> installing postgresql (Debian package, for the TLS test)"
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi

# promtool checks and unit-tests the alert rules (tests/deploy). Debian ships it only in
# the prometheus package, server included (on a systemd host apt also enables that service).
if ! command -v promtool >/dev/null 2>&1; then
    echo "==> installing promtool (Debian package prometheus, for the alert rule tests)"
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

echo "==> ruff"
.venv/bin/ruff check app devstack tests scripts
.venv/bin/ruff format --check app devstack tests scripts
echo "==> mypy"
.venv/bin/mypy

echo "==> pytest"
.venv/bin/python -m pytest -p no:cacheprovider "$@"
