#!/usr/bin/env bash
# Install cmkfs and run the main job on the embedded default: a local key vault
# in $CMKFS_HOME (default ~/.cmkfs) and an encrypted dataset on local disk.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec "${CMKFS_VENV:-.venv}/bin/cmkfs" demo "$@"
