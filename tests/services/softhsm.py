"""A real SoftHSM2 token for the test session (a pytest plugin).

The ``softhsm`` fixture writes a ``softhsm2.conf`` whose token directory lives
in a temporary directory, points ``SOFTHSM2_CONF`` at it, and initialises one
token with random PINs through ``softhsm2-util``.  SoftHSM2 reads its
configuration when the library is first loaded and a loaded library stays
loaded, so there is one token per test session: tests make their own keys
with fresh labels instead of fresh tokens.

SoftHSM2 is a system package (Debian/Ubuntu: ``apt-get install -y softhsm2``).
When it is missing the fixture fails with that instruction rather than
skipping, so CI cannot silently pass without testing the HSM provider.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
MODULE_ENV = "CMKFS_PKCS11_MODULE"
PACKAGE_HINT = "install the Debian package softhsm2 (apt-get install -y softhsm2)"


@dataclass(frozen=True)
class SoftHSM:
    """The session's token: library path, token label, PINs (hidden from repr)."""

    module: str
    token_label: str
    directory: Path
    conf: Path
    user_pin: str = field(repr=False)
    so_pin: str = field(repr=False)

    def provider(self, **options):
        """A fresh :class:`~cmkfs.providers.pkcs11.PKCS11Provider` logged in to this token."""
        from cmkfs.providers.pkcs11 import PKCS11Provider

        options.setdefault("module", self.module)
        options.setdefault("pin", self.user_pin)
        return PKCS11Provider(**options)

    def key_uri(self, label: str) -> str:
        return f"pkcs11:token={quote(self.token_label, safe='')};object={quote(label, safe='')}"


def _find_softhsm() -> tuple[str, str]:
    module = os.environ.get(MODULE_ENV) or DEFAULT_MODULE
    util = shutil.which("softhsm2-util")
    if not os.path.isfile(module) or util is None:
        missing = [f"PKCS#11 module {module}"] if not os.path.isfile(module) else []
        if util is None:
            missing.append("softhsm2-util")
        pytest.fail(f"SoftHSM2 is not installed ({' and '.join(missing)} not found): {PACKAGE_HINT}", pytrace=False)
    return module, util


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory) -> SoftHSM:
    module, util = _find_softhsm()
    pkcs11 = sys.modules.get("pkcs11")
    if pkcs11 is not None and module in getattr(pkcs11, "_loaded", {}):
        pytest.fail(
            "the SoftHSM2 library was loaded before SOFTHSM2_CONF was set; it reads its config only once", pytrace=False
        )
    directory = tmp_path_factory.mktemp("softhsm")
    tokens = directory / "tokens"
    tokens.mkdir(mode=0o700)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"
    )
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)  # before the library is first loaded in this process
    hsm = SoftHSM(
        module=module,
        token_label=f"cmkfs-test-{secrets.token_hex(4)}",
        directory=directory,
        conf=conf,
        user_pin=secrets.token_hex(8),
        so_pin=secrets.token_hex(8),
    )
    try:
        done = subprocess.run(
            [
                util,
                "--module",
                module,
                "--init-token",
                "--free",
                "--label",
                hsm.token_label,
                "--so-pin",
                hsm.so_pin,
                "--pin",
                hsm.user_pin,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            # The command line holds the PINs: report only the tool's own output.
            pytest.fail(
                f"softhsm2-util --init-token failed: {done.stderr.strip() or done.stdout.strip()}", pytrace=False
            )
        yield hsm
    finally:
        _close_providers()
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous
        shutil.rmtree(directory, ignore_errors=True)  # token files hold the test keys


def _close_providers() -> None:
    """Log out of the token before its files are removed."""
    module = sys.modules.get("cmkfs.providers.pkcs11")
    if module is not None:
        module.close_sessions()
