#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install cmkfs into it.
#   scripts/bootstrap.sh            cmkfs and the demo extra (embedded key vault, local disk, Azure Blob, charts)
#   scripts/bootstrap.sh test       an editable install with the extras and system parts the test suite uses
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${CMKFS_VENV:-.venv}
what=${1:-demo}
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

step() { printf '==> %s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
    step "creating the virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi

if [ "$what" = test ]; then
    "${PIP[@]}" install --quiet --upgrade pip
    "${PIP[@]}" install --quiet -e ".[azure,hsm,test,dev]"
    # SoftHSM2 is the real PKCS#11 token the HSM tests run against; fuse3 brings libfuse and
    # fusermount3 for the mount tests (which need /dev/fuse as well).
    missing=()
    [ -e /usr/lib/softhsm/libsofthsm2.so ] || missing+=(softhsm2)
    command -v fusermount3 >/dev/null || missing+=(fuse3)
    if [ ${#missing[@]} -gt 0 ]; then
        sudo_=""
        [ "$(id -u)" = 0 ] || sudo_="sudo"
        $sudo_ apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -q "${missing[@]}" >/dev/null
    fi
    # Azurite (npm) is installed by the test session itself, into the user's cache, on first use.
else
    # A regular (not editable) install: what a user gets from pip, and no build-backend chatter.
    if "$VENV/bin/python" -c "import cmkfs, matplotlib, pandas" 2>/dev/null; then
        step "updating cmkfs in $VENV"
        "${PIP[@]}" install --quiet ".[demo]"
    else
        step "installing cmkfs and its demo extra (pyarrow, pandas, matplotlib) into $VENV: a minute or two the first time"
        "${PIP[@]}" install --upgrade pip | grep -v '^Requirement already satisfied' || true
        "${PIP[@]}" install --progress-bar on ".[demo]" | grep -v '^Requirement already satisfied' || true
    fi
fi
