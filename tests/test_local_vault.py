"""The embedded vault (``local://``): the provider contract plus what only a
vault on local disk must get right: permissions, passphrases, crash safety,
several processes at once, destroy."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cmkfs.audit import audit_log
from cmkfs.config import default_key_uri
from cmkfs.errors import (
    ConfigurationError,
    IntegrityError,
    KeyNotFoundError,
    KeyRevokedError,
    VaultUnavailableError,
)
from cmkfs.format import KeyBlock, WrapAlgorithm
from cmkfs.providers.base import provider_for
from cmkfs.providers.local import LocalVaultProvider, set_default_key
from cmkfs.secret import Secret

from .provider_contract import ProviderContract


class LocalBackend:
    def __init__(self, home):
        self.home = home
        self.provider = LocalVaultProvider(home)
        self.provider.create("main")
        self.provider.create("other")
        self.key_uri = "local://main"
        self.other_key_uri = "local://other"
        self.missing_key_uri = "local://missing"

    def disable(self):
        self.provider.disable("main")

    def enable(self):
        self.provider.enable("main")

    def rotate(self):
        return self.provider.rotate("main")


@pytest.fixture
def backend(isolated_cmkfs_home):
    return LocalBackend(isolated_cmkfs_home)


class TestLocalVaultContract(ProviderContract):
    pass


@pytest.fixture
def vault(isolated_cmkfs_home):
    return LocalVaultProvider(isolated_cmkfs_home)


def material_files(home, name):
    return sorted(p.name for p in (home / "vault" / name).iterdir() if p.name.endswith(".key"))


# -- format and API ----------------------------------------------------------


def test_wrapped_dek_follows_the_documented_rule(vault, isolated_cmkfs_home):
    """nonce(12) || AES-256-GCM(kek, dek, aad) || tag, aad = label || uri || 0 || version.

    Checked here with one-shot AESGCM and the raw KEK read from the vault file,
    not through the provider."""
    vault.create("sales")
    dek = os.urandom(32)
    block = vault.wrap("local://sales", dek)
    assert (block.wrap_alg, block.key_uri, block.key_version) == (WrapAlgorithm.A256GCM, "local://sales", "1")
    assert len(block.wrapped_dek) == 12 + 32 + 16
    kek = (isolated_cmkfs_home / "vault" / "sales" / "v1.key").read_bytes()
    aad = b"cmkfs/v1 wrap" + b"local://sales" + b"\x00" + b"1"
    assert AESGCM(kek).decrypt(block.wrapped_dek[:12], block.wrapped_dek[12:], aad) == dek
    # The same block under another version's label does not open: the version is bound.
    with pytest.raises(InvalidTag):
        AESGCM(kek).decrypt(block.wrapped_dek[:12], block.wrapped_dek[12:], b"cmkfs/v1 wrap" + b"local://sales\x002")
    # A key block survives the header encoding round trip and still unwraps.
    assert bytes(vault.unwrap(KeyBlock.decode(block.encode()))) == dek


def test_wrap_accepts_bytes_like_and_checks_types_and_sizes(vault):
    vault.create("k")
    dek = os.urandom(32)
    for value in (dek, bytearray(dek), memoryview(dek)):
        assert bytes(vault.unwrap(vault.wrap("local://k", value))) == dek
    with pytest.raises(TypeError):
        vault.wrap("local://k", dek.hex())
    with pytest.raises(ValueError):
        vault.wrap("local://k", dek[:31])
    with pytest.raises(TypeError):
        vault.unwrap(b"not a key block")
    unwrapped = vault.unwrap(vault.wrap("local://k", Secret(dek)))
    assert isinstance(unwrapped, Secret) and dek.hex() not in repr(unwrapped)  # hidden, and wipeable
    unwrapped.wipe()
    assert bytes(unwrapped) == bytes(32)


@pytest.mark.parametrize(
    "name", ["", ".", "..", ".lock", ".hidden", "a/b", "a\\b", "x" * 65, "\u00e9quipe", "a b", "a?b"]
)
def test_bad_key_names_are_refused(vault, name):
    with pytest.raises(ConfigurationError):
        vault.create(name)
    with pytest.raises(ConfigurationError):
        vault.wrap("local://" + name, os.urandom(32))


@pytest.mark.parametrize("uri", ["local:/k", "local://k?version=x", "local://k?foo=1", "local://k/v", "file://k"])
def test_bad_key_uris_are_refused(vault, uri):
    vault.create("k")
    with pytest.raises(ConfigurationError):
        vault.wrap(uri, os.urandom(32))


def test_good_key_names(vault):
    for name in ("a", "A-b_c.d", "x" * 64, "2025.sales-eu_1"):
        assert vault.create(name).key_uri == f"local://{name}"
    assert vault.list_keys() == sorted(["a", "A-b_c.d", "x" * 64, "2025.sales-eu_1"])


def test_versioned_uri_selects_version_and_unknown_versions_are_not_found(vault):
    vault.create("k")
    assert vault.rotate("k") == "2"
    assert vault.wrap("local://k?version=1", os.urandom(32)).key_version == "1"
    assert vault.wrap("local://k", os.urandom(32)).key_version == "2"
    with pytest.raises(KeyNotFoundError):
        vault.wrap("local://k?version=7", os.urandom(32))
    block = vault.wrap("local://k", os.urandom(32))
    with pytest.raises(KeyNotFoundError):
        vault.unwrap(replace(block, key_version="7"))


def test_foreign_wrap_algorithm_is_an_integrity_error(vault):
    vault.create("k")
    block = vault.wrap("local://k", os.urandom(32))
    with pytest.raises(IntegrityError):
        vault.unwrap(replace(block, wrap_alg=WrapAlgorithm.A256KWP))
    with pytest.raises(IntegrityError):
        vault.unwrap(replace(block, wrapped_dek=block.wrapped_dek[:-1]))


def test_describe_and_details_never_show_material(vault, isolated_cmkfs_home):
    vault.create("k")
    vault.rotate("k")
    info = vault.describe("local://k?version=1")
    assert (info.key_uri, info.current_version, info.enabled, info.versions, info.size_bits) == (
        "local://k",
        "2",
        True,
        ("1", "2"),
        256,
    )
    text = repr(info) + json.dumps(vault.details("k")) + repr(vault)
    for f in material_files(isolated_cmkfs_home, "k"):
        kek = (isolated_cmkfs_home / "vault" / "k" / f).read_bytes()
        assert kek.hex() not in text and kek.hex().upper() not in text
    with pytest.raises(KeyNotFoundError):
        vault.describe("local://nope")


def test_registry_serves_local_uris_from_cmkfs_home(isolated_cmkfs_home):
    provider = provider_for("local://x", home=str(isolated_cmkfs_home))
    assert isinstance(provider, LocalVaultProvider)
    assert provider.home == isolated_cmkfs_home
    provider.create("x")
    assert LocalVaultProvider().describe("local://x").enabled  # default home is $CMKFS_HOME


def test_empty_or_missing_vault(tmp_path):
    vault = LocalVaultProvider(tmp_path / "nowhere")
    assert vault.list_keys() == []
    with pytest.raises(KeyNotFoundError):
        vault.wrap("local://k", os.urandom(32))
    with pytest.raises(KeyNotFoundError):
        vault.disable("k")
    assert not (tmp_path / "nowhere").exists()  # reading never creates the vault


# -- state is on disk, re-read on every call -----------------------------------


def test_state_change_in_another_instance_takes_effect_at_the_next_call(isolated_cmkfs_home):
    user = LocalVaultProvider(isolated_cmkfs_home)
    admin = LocalVaultProvider(isolated_cmkfs_home)
    admin.create("k")
    block = user.wrap("local://k", os.urandom(32))
    admin.disable("k")
    with pytest.raises(KeyRevokedError):
        user.unwrap(block)
    with pytest.raises(KeyRevokedError):
        user.wrap("local://k", os.urandom(32))
    assert user.describe("local://k").enabled is False
    admin.enable("k")
    user.unwrap(block)
    assert admin.rotate("k") == "2"
    assert user.wrap("local://k", os.urandom(32)).key_version == "2"  # new files use it at once


def test_disabled_key_cannot_be_rotated(vault):
    vault.create("k")
    vault.disable("k")
    with pytest.raises(KeyRevokedError):
        vault.rotate("k")
    vault.disable("k")  # idempotent
    vault.enable("k")
    assert vault.rotate("k") == "2"


# -- permissions ---------------------------------------------------------------


def test_files_are_private_whatever_the_umask(isolated_cmkfs_home):
    old = os.umask(0)
    try:
        vault = LocalVaultProvider(isolated_cmkfs_home / "fresh")
        vault.create("k")
        vault.rotate("k")
        vault.set_default("k")
    finally:
        os.umask(old)
    home = isolated_cmkfs_home / "fresh"
    seen = 0
    for root, _dirs, files in os.walk(home):
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o700, root
        for f in files:
            assert stat.S_IMODE(os.stat(os.path.join(root, f)).st_mode) == 0o600, f
            seen += 1
    assert seen >= 5  # config.json, .lock, meta.json, v1.key, v2.key


def test_an_existing_home_keeps_its_mode_but_the_vault_is_private(tmp_path):
    home = tmp_path / "project"
    home.mkdir()
    os.chmod(home, 0o755)
    LocalVaultProvider(home).create("k")
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o755  # not ours to change
    assert stat.S_IMODE(os.stat(home / "vault").st_mode) == 0o700
    os.chmod(home / "vault", 0o755)
    LocalVaultProvider(home).create("j")  # the next change makes it private again
    assert stat.S_IMODE(os.stat(home / "vault").st_mode) == 0o700


# -- passphrase ----------------------------------------------------------------


def test_passphrase_protects_material(isolated_cmkfs_home):
    vault = LocalVaultProvider(isolated_cmkfs_home, passphrase="correct horse")
    vault.create("k")
    assert vault.details("k")["protection"] == "passphrase"
    raw = (isolated_cmkfs_home / "vault" / "k" / "v1.key").read_bytes()
    assert len(raw) == 60  # nonce || encrypted KEK || tag, never the raw 32 bytes
    dek = os.urandom(32)
    block = vault.wrap("local://k", dek)

    right = LocalVaultProvider(isolated_cmkfs_home, passphrase=b"correct horse")
    assert bytes(right.unwrap(block)) == dek

    wrong = LocalVaultProvider(isolated_cmkfs_home, passphrase="battery staple")
    with pytest.raises(ConfigurationError, match="wrong passphrase"):
        wrong.unwrap(block)
    with pytest.raises(ConfigurationError, match="wrong passphrase"):
        wrong.rotate("k")  # a version under a mistyped passphrase would be lost
    assert vault.details("k")["current_version"] == "1"

    missing = LocalVaultProvider(isolated_cmkfs_home)
    with pytest.raises(ConfigurationError, match="CMKFS_PASSPHRASE"):
        missing.unwrap(block)
    assert "correct horse" not in repr(vault)
    with pytest.raises(TypeError):
        LocalVaultProvider(isolated_cmkfs_home, passphrase=123)


def test_passphrase_from_environment(isolated_cmkfs_home, monkeypatch):
    monkeypatch.setenv("CMKFS_PASSPHRASE", "from env")
    vault = LocalVaultProvider(isolated_cmkfs_home)
    vault.create("k")
    assert vault.rotate("k") == "2"
    dek = os.urandom(32)
    block = vault.wrap("local://k?version=1", dek)
    assert bytes(LocalVaultProvider(isolated_cmkfs_home).unwrap(block)) == dek
    monkeypatch.setenv("CMKFS_PASSPHRASE", "other")
    with pytest.raises(ConfigurationError, match="wrong passphrase"):
        LocalVaultProvider(isolated_cmkfs_home).unwrap(block)
    # An unprotected key next to it needs no passphrase.
    monkeypatch.delenv("CMKFS_PASSPHRASE")
    LocalVaultProvider(isolated_cmkfs_home).create("plain", protect=False)
    with pytest.raises(ConfigurationError):
        LocalVaultProvider(isolated_cmkfs_home).create("locked", protect=True)


def test_material_cannot_be_swapped_between_versions(isolated_cmkfs_home):
    vault = LocalVaultProvider(isolated_cmkfs_home, passphrase="pw")
    vault.create("k")
    vault.rotate("k")
    d = isolated_cmkfs_home / "vault" / "k"
    (d / "v2.key").write_bytes((d / "v1.key").read_bytes())
    with pytest.raises(ConfigurationError):
        LocalVaultProvider(isolated_cmkfs_home, passphrase="pw").wrap("local://k", os.urandom(32))


# -- crash safety ------------------------------------------------------------------


def test_leftovers_of_a_crash_are_ignored_and_cleaned(vault, isolated_cmkfs_home):
    vault.create("k")
    dek = os.urandom(32)
    block = vault.wrap("local://k", dek)
    d = isolated_cmkfs_home / "vault" / "k"
    (d / ".tmp-abc123").write_bytes(b'{"format": 1, "state": "ena')  # a half-written meta.json
    (d / "v2.key").write_bytes(os.urandom(32))  # material of a rotation that never committed
    assert vault.details("k")["current_version"] == "1"
    assert bytes(vault.unwrap(block)) == dek
    assert vault.wrap("local://k", dek).key_version == "1"
    assert "k" in vault.list_keys()
    assert vault.rotate("k") == "2"  # the orphan is replaced, not adopted
    assert sorted(p.name for p in d.iterdir()) == ["meta.json", "v1.key", "v2.key"]
    assert bytes(vault.unwrap(vault.wrap("local://k", dek))) == dek


def test_half_created_key_is_not_a_key(vault, isolated_cmkfs_home):
    vault.create("a")
    (isolated_cmkfs_home / "vault" / "b").mkdir()
    (isolated_cmkfs_home / "vault" / "b" / "v1.key").write_bytes(os.urandom(32))
    assert vault.list_keys() == ["a"]
    with pytest.raises(KeyNotFoundError):
        vault.wrap("local://b", os.urandom(32))
    vault.create("b")  # the leftover directory is reused and its stray material replaced
    assert vault.wrap("local://b", os.urandom(32)).key_version == "1"


def test_interrupted_metadata_write_keeps_the_old_state(vault, isolated_cmkfs_home, monkeypatch):
    import cmkfs.providers.local as local

    vault.create("k")
    before = (isolated_cmkfs_home / "vault" / "k" / "meta.json").read_bytes()
    real_replace = os.replace

    def crash_on_meta(src, dst):
        if str(dst).endswith("meta.json"):
            raise OSError(5, "simulated crash before rename")
        return real_replace(src, dst)

    monkeypatch.setattr(local.os, "replace", crash_on_meta)
    with pytest.raises(VaultUnavailableError):
        vault.rotate("k")
    with pytest.raises(VaultUnavailableError):
        vault.disable("k")
    monkeypatch.setattr(local.os, "replace", real_replace)
    assert (isolated_cmkfs_home / "vault" / "k" / "meta.json").read_bytes() == before
    assert vault.details("k")["state"] == "enabled"
    assert vault.rotate("k") == "2"


def test_damaged_metadata_is_a_vault_error(vault, isolated_cmkfs_home):
    vault.create("k")
    meta = isolated_cmkfs_home / "vault" / "k" / "meta.json"
    for damage in (b"", b"{", b"[]", json.dumps({"format": 1}).encode(), b"x" * (2 * 1024 * 1024)):
        meta.write_bytes(damage)
        with pytest.raises(VaultUnavailableError):
            vault.wrap("local://k", os.urandom(32))
    (isolated_cmkfs_home / "vault" / "other").mkdir()


_ROTATE_FOREVER = textwrap.dedent(
    """
    import os, sys
    from cmkfs.providers.local import LocalVaultProvider
    vault = LocalVaultProvider(sys.argv[1])
    print("ready", flush=True)
    while True:
        vault.rotate("k")
        vault.unwrap(vault.wrap("local://k", os.urandom(32)))
    """
)


def test_killed_writer_never_leaves_a_broken_vault(vault, isolated_cmkfs_home):
    """SIGKILL a process at random moments while it rotates: the vault stays whole."""
    vault.create("k")
    dek = os.urandom(32)
    first = vault.wrap("local://k", dek)
    rng = random.Random(1234)
    for _ in range(6):
        child = subprocess.Popen(
            [sys.executable, "-c", _ROTATE_FOREVER, str(isolated_cmkfs_home)], stdout=subprocess.PIPE
        )
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.02, 0.25))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        check = LocalVaultProvider(isolated_cmkfs_home)
        details = check.details("k")
        versions = [v["version"] for v in details["versions"]]
        assert versions == [str(i) for i in range(1, len(versions) + 1)]
        for v in versions:  # every committed version has its material
            assert (isolated_cmkfs_home / "vault" / "k" / f"v{v}.key").stat().st_size == 32
        assert bytes(check.unwrap(first)) == dek
        assert bytes(check.unwrap(check.wrap("local://k", dek))) == dek
    assert int(vault.details("k")["current_version"]) > 1


# -- concurrency -------------------------------------------------------------------


def _hammer(home: str, worker: int, rounds: int) -> list:
    vault = LocalVaultProvider(home)
    out = []
    for _ in range(rounds):
        version = vault.rotate("shared")
        dek = os.urandom(32)
        block = vault.wrap("local://shared", dek)
        assert bytes(vault.unwrap(block)) == dek
        out.append((version, block.key_version, block.encode().hex(), dek.hex()))
    return out


def test_concurrent_processes_keep_the_vault_consistent(vault, isolated_cmkfs_home):
    vault.create("shared")
    workers, rounds = 4, 6
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        results = pool.starmap(_hammer, [(str(isolated_cmkfs_home), w, rounds) for w in range(workers)])
    rotated = [r[0] for rs in results for r in rs]
    assert len(set(rotated)) == workers * rounds  # no two rotations produced the same version
    details = vault.details("shared")
    assert [v["version"] for v in details["versions"]] == [str(i) for i in range(1, workers * rounds + 2)]
    assert details["current_version"] == str(workers * rounds + 1)
    for rs in results:
        for _, _, block_hex, dek_hex in rs:
            assert bytes(vault.unwrap(KeyBlock.decode(bytes.fromhex(block_hex)))).hex() == dek_hex
    leftovers = [p.name for p in (isolated_cmkfs_home / "vault" / "shared").iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == []


def test_concurrent_threads_share_one_provider(vault):
    from concurrent.futures import ThreadPoolExecutor

    vault.create("t")

    def work(i):
        if i % 5 == 0:
            return vault.rotate("t")
        dek = os.urandom(32)
        assert bytes(vault.unwrap(vault.wrap("local://t", dek))) == dek
        return None

    with ThreadPoolExecutor(4) as pool:
        versions = [v for v in pool.map(work, range(40)) if v]
    assert sorted(versions, key=int) == [str(i) for i in range(2, 10)]


# -- destroy ------------------------------------------------------------------------


def test_destroy_removes_material_and_revokes_for_good(vault, isolated_cmkfs_home):
    vault.create("k")
    vault.rotate("k")
    dek = os.urandom(32)
    blocks = [vault.wrap("local://k?version=1", dek), vault.wrap("local://k", dek)]
    vault.destroy("k")
    assert material_files(isolated_cmkfs_home, "k") == []
    assert [p.name for p in (isolated_cmkfs_home / "vault" / "k").iterdir()] == ["meta.json"]
    for block in blocks:
        with pytest.raises(KeyRevokedError, match="destroyed"):
            vault.unwrap(block)
    with pytest.raises(KeyRevokedError):
        vault.wrap("local://k", dek)
    with pytest.raises(KeyRevokedError):
        vault.enable("k")
    with pytest.raises(KeyRevokedError):
        vault.rotate("k")
    with pytest.raises(ConfigurationError):
        vault.create("k")  # the name stays taken: old files must never look like they belong to a new key
    info = vault.describe("local://k")
    assert info.enabled is False and info.versions == ()
    assert vault.details("k")["state"] == "destroyed"
    vault.destroy("k")  # idempotent
    with pytest.raises(KeyNotFoundError):
        vault.destroy("nope")


def test_destroy_one_version(vault, isolated_cmkfs_home):
    vault.create("k")
    dek = os.urandom(32)
    old = vault.wrap("local://k", dek)
    vault.rotate("k")
    new = vault.wrap("local://k", dek)
    with pytest.raises(ConfigurationError, match="rotate first"):
        vault.destroy("k", "2")
    with pytest.raises(KeyNotFoundError):
        vault.destroy("k", "9")
    vault.destroy("k", "1")
    assert material_files(isolated_cmkfs_home, "k") == ["v2.key"]
    with pytest.raises(KeyRevokedError):
        vault.unwrap(old)
    assert bytes(vault.unwrap(new)) == dek
    assert vault.describe("local://k").versions == ("2",)
    assert vault.rotate("k") == "3"  # version numbers are never reused


def test_destroy_overwrites_before_unlinking(vault, isolated_cmkfs_home, monkeypatch):
    import cmkfs.providers.local as local

    vault.create("k")
    path = isolated_cmkfs_home / "vault" / "k" / "v1.key"
    kek = path.read_bytes()
    seen = []
    real_unlink = os.unlink

    def spy(p, *a, **kw):
        if str(p).endswith(".key"):
            with open(p, "rb") as fh:
                seen.append(fh.read())
        return real_unlink(p, *a, **kw)

    monkeypatch.setattr(local.os, "unlink", spy)
    vault.destroy("k")
    assert seen == [bytes(32)] and kek != bytes(32)


# -- audit and default key ----------------------------------------------------------


def test_management_operations_are_audited_without_material(vault, isolated_cmkfs_home, monkeypatch, tmp_path):
    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv("CMKFS_AUDIT_LOG", str(log))
    vault.create("k")
    vault.rotate("k")
    kek_hex = [(isolated_cmkfs_home / "vault" / "k" / f).read_bytes().hex() for f in ("v1.key", "v2.key")]
    vault.disable("k")
    vault.enable("k")
    with pytest.raises(KeyNotFoundError):
        vault.rotate("missing")
    vault.destroy("k")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["op"], r["key_uri"], r["version"], r["outcome"]) for r in records] == [
        ("create", "local://k", "1", "ok"),
        ("rotate", "local://k", "2", "ok"),
        ("disable", "local://k", None, "ok"),
        ("enable", "local://k", None, "ok"),
        ("rotate", "local://missing", None, "KeyNotFoundError"),
        ("destroy", "local://k", None, "ok"),
    ]
    text = log.read_text().lower()
    assert not any(h in text for h in kek_hex)
    assert audit_log().path == str(log)


def test_default_key_in_config(vault, isolated_cmkfs_home):
    with pytest.raises(ConfigurationError):
        default_key_uri()
    vault.create("sales")
    with pytest.raises(KeyNotFoundError):
        vault.set_default("nope")
    (isolated_cmkfs_home / "config.json").write_text(json.dumps({"other": 1}))
    assert vault.set_default("sales") == "local://sales"
    assert default_key_uri() == "local://sales"
    assert json.loads((isolated_cmkfs_home / "config.json").read_text()) == {"default_key": "local://sales", "other": 1}
    set_default_key("local://x", isolated_cmkfs_home)
    assert default_key_uri(isolated_cmkfs_home) == "local://x"
