"""An environment with no Azure credential anywhere, and no way for one to reach the network.

AZURE_*, managed identity and az CLI settings are removed, HOME is a fresh directory (no az CLI or
shared token cache), PATH holds only the interpreter's directory (no ``az``), and the managed
identity endpoint is a closed port on 127.0.0.1, so every credential source fails locally.
"""

from __future__ import annotations

import os
import socket
import sys

import pytest

from cmkfs.azure_preflight import forget_checks

__all__ = ["closed_port", "no_azure_credentials"]


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def no_azure_credentials(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith(("AZURE_", "IDENTITY_", "MSI_", "IMDS_")) or name.endswith(("_PROXY", "_proxy")):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable))
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", f"http://127.0.0.1:{closed_port()}")
    forget_checks()
    yield home
    forget_checks()
