"""A throwaway embedded vault (``local://``) for tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["temporary_home"]


@contextmanager
def temporary_home(name: str = "test") -> Iterator[str]:
    """A new, private ``CMKFS_HOME`` holding key ``name``, as the process default; yields its key URI.

    For the ``with`` block ``$CMKFS_HOME`` names the temporary directory and ``$CMKFS_KEY`` the key
    (``local://NAME``), so ``cmk::`` URLs need no ``key`` option.  Afterwards both variables are
    put back, this process's cached data keys of the key are dropped and the directory is removed.
    Environment variables are process-wide: do not run two of these at once in one process.
    """
    from ..config import ENV_HOME, ENV_KEY, environment
    from ..keycache import purge_key
    from ..providers.local import LocalVaultProvider

    home = Path(tempfile.mkdtemp(prefix="cmkfs-home-"))  # 0700, as the embedded vault wants its home
    key_uri = ""
    try:
        # No passphrase protection: a test key needs none, and scrypt would make every test slower.
        key_uri = LocalVaultProvider(home=home).create(name, protect=False).key_uri
        with environment(**{ENV_HOME: str(home), ENV_KEY: key_uri}):
            yield key_uri
    finally:
        if key_uri:
            purge_key(key_uri)  # the next temporary home's key has the same URI, but not the same material
        shutil.rmtree(home, ignore_errors=True)
