"""``cmkfs keys show|rotate|disable|enable`` on Azure Key Vault keys (the HTTPS test vault) and
PKCS#11 keys (SoftHSM2), and the fail-fast preflight through the real ``python -m cmkfs``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from urllib.parse import quote

import pytest
from click.testing import CliRunner

from cmkfs.cli import cli
from cmkfs.cli.output import EXIT_CONFIG, EXIT_VAULT
from cmkfs.errors import KeyRevokedError
from cmkfs.providers.azure_keyvault import AzureKeyVaultProvider
from cmkfs.providers.base import register_provider
from tests.azure_isolation import no_azure_credentials  # noqa: F401 - a fixture

pytestmark = pytest.mark.timeout(120)


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def write_policy(home, **azure):
    (home / "config.json").write_text(json.dumps({"azure": azure}))


@pytest.fixture
def vault_keys(keyvault, isolated_cmkfs_home):
    """https:// keys served with the test vault's token; every other option from config.json."""

    def factory(**options):
        return AzureKeyVaultProvider(credential=keyvault.credential, **options)

    register_provider("https://", factory)
    write_policy(isolated_cmkfs_home, connection_verify=keyvault.verify, verify_challenge_resource=False)
    keyvault.create_key("sales")
    yield keyvault
    register_provider("https://", "cmkfs.providers.azure_keyvault:AzureKeyVaultProvider")


def test_show_rotate_disable_enable_an_azure_key(vault_keys):
    uri = vault_keys.key_uri("sales")
    shown = invoke("keys", "show", uri, "--json")
    assert shown.exit_code == 0, shown.output
    details = json.loads(shown.stdout)
    assert details["state"] == "enabled" and details["key_uri"] == uri and len(details["versions"]) == 1
    first = details["current_version"]

    rotated = invoke("keys", "rotate", uri, "--json")
    assert rotated.exit_code == 0, rotated.output
    version = json.loads(rotated.stdout)["current_version"]
    assert version != first
    assert json.loads(invoke("keys", "show", uri, "--json").stdout)["versions"] == [first, version]

    provider = AzureKeyVaultProvider(**vault_keys.provider_options())
    block = provider.wrap(uri, os.urandom(32))
    disabled = invoke("keys", "disable", uri)
    assert disabled.exit_code == 0 and "disabled (2 version(s))" in disabled.stderr
    with pytest.raises(KeyRevokedError):
        provider.unwrap(block)  # the vault itself refuses
    assert json.loads(invoke("keys", "show", uri, "--json").stdout)["state"] == "disabled"

    assert invoke("keys", "enable", uri).exit_code == 0
    assert len(bytes(provider.unwrap(block))) == 32
    provider.close()
    text = invoke("keys", "show", uri)
    assert f"current version: {version}" in text.stdout and "state:           enabled" in text.stdout


def test_missing_azure_key_is_exit_3(vault_keys):
    result = invoke("keys", "show", vault_keys.key_uri("nope"))
    assert result.exit_code == 3 and result.stderr.count("\n") == 1


def test_policy_options_are_what_makes_tls_work(vault_keys, isolated_cmkfs_home):
    write_policy(isolated_cmkfs_home, verify_challenge_resource=False)  # no CA for the test vault
    result = invoke("keys", "show", vault_keys.key_uri("sales"))
    assert result.exit_code == EXIT_VAULT, result.output


@pytest.mark.usefixtures("no_azure_credentials")
def test_no_credential_in_a_real_process_is_one_line_exit_7(keyvault, isolated_cmkfs_home):
    keyvault.create_key("sales")
    write_policy(isolated_cmkfs_home, connection_verify=keyvault.verify, verify_challenge_resource=False)
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "cmkfs", "keys", "show", keyvault.key_uri("sales")],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"PYTHONPATH": os.getcwd()},
    )
    assert time.monotonic() - start < 10
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert keyvault.url in proc.stderr and "az login" in proc.stderr


# -- PKCS#11 -----------------------------------------------------------------------------------


@pytest.fixture
def hsm_key(softhsm):
    provider = softhsm.provider()
    label = f"cli-{os.urandom(4).hex()}"
    provider.create_key(softhsm.token_label, label)
    provider.close()
    binding = f"?module-path={quote(softhsm.module, safe='/')}&pin-value={softhsm.user_pin}"
    return softhsm.key_uri(label), softhsm.key_uri(label) + binding


def test_rotate_disable_enable_a_pkcs11_key(softhsm, hsm_key):
    uri, bound = hsm_key
    rotated = invoke("keys", "rotate", bound, "--json")
    assert rotated.exit_code == 0, rotated.output
    assert json.loads(rotated.stdout) == {"key_uri": uri, "current_version": "2"}
    assert "pin-value" not in rotated.output

    assert invoke("keys", "disable", bound).exit_code == 0
    details = json.loads(invoke("keys", "show", bound, "--json").stdout)
    assert details["state"] == "disabled" and details["current_version"] == "2"
    provider = softhsm.provider()
    try:
        with pytest.raises(KeyRevokedError):
            provider.wrap(uri, os.urandom(32))  # the token refuses: CKA_WRAP is false
        assert invoke("keys", "enable", bound).exit_code == 0
        assert provider.wrap(uri, os.urandom(32)).key_version == "2"
    finally:
        provider.close()
