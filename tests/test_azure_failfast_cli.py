"""`cmkfs rewrap abfs://...` (and any command over Azure Blob) with no account or
no credentials: one line within seconds, not a traceback after minutes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.azure_isolation import closed_port, no_azure_credentials  # noqa: F401 - fixture

pytest.importorskip("adlfs")


def run(env, *args):
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "cmkfs", *args], capture_output=True, text=True, env=env, timeout=60)
    return result, time.monotonic() - start


def test_rewrap_abfs_with_no_account(no_azure_credentials, isolated_cmkfs_home):  # noqa: F811
    env = {**os.environ, "CMKFS_HOME": str(isolated_cmkfs_home)}
    result, took = run(env, "rewrap", "abfs://container/data", "-r")
    assert took < 10 and result.returncode == 7, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "account" in lines[0] and "Traceback" not in result.stderr


def test_rewrap_abfs_with_an_account_but_no_credentials(no_azure_credentials, isolated_cmkfs_home):  # noqa: F811
    env = {
        **os.environ,
        "CMKFS_HOME": str(isolated_cmkfs_home),
        "AZURE_STORAGE_ACCOUNT_NAME": "devstoreaccount1",
        "AZURE_STORAGE_ACCOUNT_URL": f"http://127.0.0.1:{closed_port()}/devstoreaccount1",
    }
    result, took = run(env, "rewrap", "abfs://container/data", "-r")
    assert took < 10 and result.returncode != 0, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
