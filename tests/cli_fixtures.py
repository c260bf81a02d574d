"""Fixtures shared by the CLI file-command tests: a runner, and a tenant key set as the default."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cmkfs.cli import cli
from cmkfs.policy import load_policy
from cmkfs.providers.local import LocalVaultProvider


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args, env=None):
        result = runner.invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)
        assert "Traceback" not in result.output
        return result

    return invoke


@pytest.fixture
def key(isolated_cmkfs_home):
    LocalVaultProvider(isolated_cmkfs_home).create("tenant")
    policy = load_policy(isolated_cmkfs_home)
    policy.default_key = "local://tenant"
    policy.save()
    return "local://tenant"
