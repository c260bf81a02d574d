#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install cmkfs into it.
#   scripts/bootstrap.sh            core install (embedded key vault, local disk, Azure Blob)
#   scripts/bootstrap.sh test       plus the extras and system parts the test suite uses
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${CMKFS_VENV:-.venv}
what=${1:-core}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip

if [ "$what" = test ]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[azure,hsm,test,dev]"
    # SoftHSM2 is the real PKCS#11 token the HSM tests run against.
    if [ ! -e /usr/lib/softhsm/libsofthsm2.so ]; then
        sudo_=""
        [ "$(id -u)" = 0 ] || sudo_="sudo"
        $sudo_ apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -q softhsm2 >/dev/null
    fi
    # Azurite (npm) is installed by the test session itself, into the user's cache, on first use.
else
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e .
fi
