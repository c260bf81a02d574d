"""Key URIs and vault names the *user* configures (not file headers): a bad
one is a one-line ConfigurationError, never a bare ValueError."""

from __future__ import annotations

import pytest

from cmkfs.errors import ConfigurationError
from cmkfs.filesystem import CMKFileSystem
from cmkfs.keycache import KeyCache, trusted_vault_hosts
from cmkfs.providers.base import redact_key_uri
from cmkfs.providers.local import parse_local_uri

BAD_KEYS = [
    "local://k?version=\u00b2",
    "local://k?version=\u0661",
    "https://[/keys/x",
    "https://v.vault.azure.net:99999/keys/x",
]


@pytest.mark.parametrize("uri", BAD_KEYS)
def test_bad_configured_key_is_a_configuration_error(uri, tmp_path):
    with pytest.raises(ConfigurationError):
        if uri.startswith("local://"):
            parse_local_uri(uri)
        else:
            KeyCache(uri)
    fs = CMKFileSystem(target_protocol="file", key=uri, skip_instance_cache=True)
    with pytest.raises(ConfigurationError):
        fs.pipe_file(str(tmp_path / "x"), b"data")


@pytest.mark.parametrize("entry", ["https://[x", "[::1", "host:99999"])
def test_bad_trusted_vault_entry_is_a_configuration_error(entry):
    with pytest.raises(ConfigurationError):
        trusted_vault_hosts([entry])


def test_redaction_never_raises_or_echoes_an_unparsable_url():
    shown = redact_key_uri("https://[user:secret@/keys/x")
    assert "secret" not in shown and shown.startswith("https://")
