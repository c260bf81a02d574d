#!/usr/bin/env bash
# Install everything the test suite needs (venv, extras, SoftHSM2, Azurite) and run it:
# the checks (ruff, mypy), the whole suite on this Python, then the suite on every other
# supported Python found as python3.X (CMKFS_PYTHONS, default "3.10 3.12 3.13"; "" skips).
# Extra arguments go to pytest and run on this Python only, e.g. scripts/test.sh -k keycache
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
VENV=${CMKFS_VENV:-.venv}
if [ "$#" -gt 0 ]; then
    exec "$VENV/bin/python" -m pytest "$@"
fi

scripts/check.sh
"$VENV/bin/python" -m pytest

# An interpreter for Python X.Y: python3.X on PATH, else one that pyenv has installed.
find_python() {
    if "python$1" -c "" >/dev/null 2>&1; then
        command -v "python$1"
    elif command -v pyenv >/dev/null 2>&1; then
        local v
        v=$(pyenv versions --bare 2>/dev/null | grep -E "^$1\.[0-9]+$" | sort -V | tail -n 1)
        [ -n "$v" ] && [ -x "$(pyenv root)/versions/$v/bin/python$1" ] && echo "$(pyenv root)/versions/$v/bin/python$1"
    fi
}

own=$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
for version in ${CMKFS_PYTHONS-3.10 3.12 3.13}; do
    [ "$version" = "$own" ] && continue
    python=$(find_python "$version" || true)
    if [ -z "$python" ]; then
        echo "Python $version: not installed here, skipped"
        continue
    fi
    echo "== Python $version ($python)"
    PYTHON="$python" CMKFS_VENV=".venv-$version" scripts/bootstrap.sh test
    ".venv-$version/bin/python" -m pytest -q -p no:cacheprovider
done
