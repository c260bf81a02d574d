#!/usr/bin/env bash
# Lint, format check and strict type check, with the tools pinned in the dev extra.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CMKFS_VENV:-.venv}
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy"
