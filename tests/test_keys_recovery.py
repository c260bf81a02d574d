"""The recovery snippet of docs/KEYS.md ("On-disk format") unwraps the data
key of real files from a real vault that cmkfs created, with ``cryptography``
alone: the code block is taken from the document and run with ``cmkfs``
made unimportable, so the document cannot drift from the vault's encoding."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cmkfs.filesystem import CMKFileSystem
from cmkfs.providers.local import LocalVaultProvider
from cmkfs.stream import BytesSource, read_header

ROOT = Path(__file__).resolve().parent.parent
KEYS_MD = ROOT / "docs" / "KEYS.md"
MARKER = "<!-- recovery snippet:"


def snippet() -> str:
    text = KEYS_MD.read_text(encoding="utf-8")
    after = text[text.index(MARKER) :]
    match = re.search(r"```python\n(.*?)\n```", after, re.S)
    assert match is not None, "the recovery snippet's code block is missing from docs/KEYS.md"
    return match.group(1)


def recover(tmp_path, path, vault_dir, passphrase=None):
    """Run the snippet in a fresh interpreter that cannot import cmkfs; the DEK hex, or the error."""
    script = tmp_path / "recover_dek.py"
    script.write_text(snippet() + "\n", encoding="utf-8")
    code = (
        "import sys, runpy; sys.modules['cmkfs'] = None; "
        f"ns = runpy.run_path({str(script)!r}); "
        f"print(ns['recover_dek']({str(path)!r}, {str(vault_dir)!r}, {passphrase!r}).hex())"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return proc.stdout.strip() if proc.returncode == 0 else proc.stderr.strip().splitlines()[-1]


def file_dek(vault: LocalVaultProvider, path) -> str:
    with open(path, "rb") as f:
        header = read_header(BytesSource(f.read()))
    return bytes(vault.unwrap(header.key_block)).hex()


@pytest.mark.parametrize("passphrase", [None, "correct horse \u00e9"])
def test_the_documented_snippet_recovers_every_version(tmp_path, isolated_cmkfs_home, monkeypatch, passphrase):
    if passphrase is not None:
        monkeypatch.setenv("CMKFS_PASSPHRASE", passphrase)
    vault = LocalVaultProvider()
    vault.create("sales")
    files = []
    for version in ("1", "2"):
        if version == "2":
            assert vault.rotate("sales") == "2"
        path = tmp_path / f"v{version}.bin"
        fs = CMKFileSystem(key="local://sales", target_protocol="file", skip_instance_cache=True)
        fs.pipe_file(str(path), b"data under version " + version.encode())
        files.append(path)
    vault_dir = isolated_cmkfs_home / "vault"
    meta = (vault_dir / "sales" / "meta.json").read_text()
    assert ('"kdf": "scrypt"' in meta) == (passphrase is not None)
    deks = [file_dek(vault, path) for path in files]
    assert len(set(deks)) == 2 and all(len(d) == 64 for d in deks)

    assert [recover(tmp_path, path, vault_dir, passphrase) for path in files] == deks
    if passphrase is not None:
        assert recover(tmp_path, files[0], vault_dir, "wrong") == "cryptography.exceptions.InvalidTag"

    # Disabling is cmkfs's refusal, not cryptography: as KEYS.md says, the material still unlocks.
    vault.disable("sales")
    assert recover(tmp_path, files[0], vault_dir, passphrase) == deks[0]
    # A destroyed version is gone for good.
    vault.enable("sales")
    vault.destroy("sales", version="1")
    assert recover(tmp_path, files[0], vault_dir, passphrase).startswith("FileNotFoundError")
    assert recover(tmp_path, files[1], vault_dir, passphrase) == deks[1]
