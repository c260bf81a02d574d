"""Vaults for testing code that uses cmkfs, without a real vault.

``fake_key_vault()`` runs a fake Azure Key Vault over HTTPS on 127.0.0.1 for a ``with`` block::

    import fsspec
    from cmkfs.testing import fake_key_vault

    with fake_key_vault() as vault:
        vault.create_key("sales")
        fs = fsspec.filesystem("cmk", target_protocol="memory", **vault.filesystem_options("sales"))
        fs.pipe_file("/data.bin", b"rows")
        vault.disable("sales")  # reads fail once the key cache TTL has passed

``temporary_home()`` gives the embedded vault instead: a temporary ``$CMKFS_HOME`` whose key is the
process default for the ``with`` block.  Only the standard library and ``cryptography`` are needed
to import this package; the fake vault's clients need ``pip install 'cmkfs[azure]'``.
See docs/AZURE_KEY_VAULT.md, "Testing your code without a vault".
"""

from .embedded import temporary_home
from .fake_keyvault import (
    FakeKeyVault,
    FilesystemOptions,
    ProviderOptions,
    StaticTokenCredential,
    fake_key_vault,
)

__all__ = [
    "FakeKeyVault",
    "FilesystemOptions",
    "ProviderOptions",
    "StaticTokenCredential",
    "fake_key_vault",
    "temporary_home",
]
