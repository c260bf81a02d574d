#!/usr/bin/env bash
# Install everything the test suite needs (venv, extras, SoftHSM2, Azurite) and run it.
# Extra arguments go to pytest, e.g. scripts/test.sh -k keycache
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
exec "${CMKFS_VENV:-.venv}/bin/python" -m pytest "$@"
