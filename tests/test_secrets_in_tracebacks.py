"""Key material, PINs and passphrases never reach an error report.

Error reporters that capture local variables (Sentry by default,
``traceback.TracebackException(capture_locals=True)``) show ``repr()`` of every
local of every frame in a traceback and in its chained causes.  One DEK
protects a whole batch of files, so a failing sink, a refused key or a vault
error must not leave a DEK, a file key or a key-encryption key in any frame
as ``bytes`` or ``bytearray``; nor may an HSM's user PIN or the embedded
vault's passphrase sit in a frame as ``str`` or ``bytes``: they live only
inside objects whose repr hides them.
"""

from __future__ import annotations

import errno
import json
import os
import traceback
import uuid
from dataclasses import replace
from secrets import token_hex

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from cmkfs.errors import (
    ConfigurationError,
    IntegrityError,
    KeyNotFoundError,
    KeyRevokedError,
    VaultUnavailableError,
)
from cmkfs.filesystem import CMKFileSystem
from cmkfs.format import Header, KeyBlock, WrapAlgorithm
from cmkfs.keycache import KeyCache
from cmkfs.keys import StaticKeySource
from cmkfs.providers import local as local_vault
from cmkfs.providers.azure_keyvault import AzureKeyVaultProvider
from cmkfs.providers.local import LocalVaultProvider
from cmkfs.rewrap import rewrap_file
from cmkfs.segment import derive_file_key
from cmkfs.stream import BytesSource, DecryptingReader, EncryptingWriter, decrypt_bytes, encrypt_bytes, read_header

SEG = 4096
KEY = "local://k"


# -- the check ---------------------------------------------------------------------------------


def _forms(secret: bytes) -> dict[str, str]:
    """How ``secret`` shows in a formatted report: inside a bytes or bytearray repr (they quote and
    escape differently when the content holds a quote), as hex, as text."""
    return {
        "repr": repr(secret)[2:-1],
        "bytearray repr": repr(bytearray(secret))[12:-2],
        "hex": secret.hex(),
        "latin-1": secret.decode("latin-1"),
    }


def _where(report: traceback.TracebackException, form: str) -> str:
    """The frames and local names whose repr contains ``form`` (for the failure message)."""
    places, seen, todo = [], set(), [report]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        for frame in item.stack:
            places += [f"{frame.name}:{name}" for name, value in (frame.locals or {}).items() if form in value]
        todo += [item.__cause__, item.__context__]
    return ", ".join(places) or "the messages"


def _leaks(exc: BaseException, **secrets: bytes) -> list[str]:
    report = traceback.TracebackException.from_exception(exc, capture_locals=True)
    text = "".join(report.format())
    found = []
    for label, secret in secrets.items():
        assert len(secret) >= 16, label
        for kind, form in _forms(secret).items():
            if form in text:
                found.append(f"{label} ({kind}) in {_where(report, form)}")
    return found


def _assert_hidden(exc: BaseException, **secrets: bytes) -> None:
    text = "".join(traceback.TracebackException.from_exception(exc, capture_locals=True).format())
    assert "cmkfs" in text  # the report does reach into the library's frames
    leaks = _leaks(exc, **secrets)
    assert not leaks, "key material in the error report: " + "; ".join(leaks)


def _raised(call, expected: type[BaseException] = Exception) -> BaseException:
    """The exception ``call()`` raises, caught in a frame that holds no key material."""
    try:
        call()
    except expected as exc:
        return exc
    pytest.fail("no error was raised")


@pytest.mark.parametrize("secret", [os.urandom(32), b"'" + os.urandom(31)], ids=["random", "quote"])
def test_the_check_finds_key_material_in_a_local(secret):
    def leaky(material):
        held = bytearray(material)  # noqa: F841 - the local the check must find
        raise OSError("sink failed")

    found = _leaks(_raised(lambda: leaky(secret), OSError), key=secret)
    assert any("leaky:held" in item for item in found)


# -- helpers -------------------------------------------------------------------------------------


class _RecordingVault(LocalVaultProvider):
    """The embedded vault, remembering each DEK it is asked to wrap (so the test knows what to look for)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[bytes] = []

    def wrap(self, key_uri, dek):
        self.seen.append(bytes(dek))
        return super().wrap(key_uri, dek)


class _RecordingAzure(AzureKeyVaultProvider):
    def wrap(self, key_uri, dek):
        self.seen.append(bytes(dek))
        return super().wrap(key_uri, dek)


class FailingSink:
    """A sink whose ``fail_at``-th write fails, as a full disk or a dropped upload does."""

    def __init__(self, fail_at: int) -> None:
        self.fail_at = fail_at
        self.writes: list[bytes] = []  # what it was asked to write (ciphertext)

    def write(self, data) -> int:
        self.writes.append(bytes(data))
        if len(self.writes) >= self.fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        return len(data)


class _FailingAudit:
    """An audit log that cannot record a successful vault call (a read-only or full disk)."""

    def record(self, operation, key_uri, version, outcome, **extra) -> None:
        if outcome == "ok":
            raise OSError(errno.EROFS, "Read-only file system")


@pytest.fixture
def vault(isolated_cmkfs_home):
    provider = _RecordingVault()
    provider.create("k")
    return provider


def _cache(vault, key_uri: str | None = KEY, **kwargs) -> KeyCache:
    kwargs.setdefault("retry_attempts", 1)
    return KeyCache(key_uri, providers=lambda _uri: vault, **kwargs)


def _file_key(dek: bytes, header: Header) -> bytes:
    return bytes(derive_file_key(dek, header.params)[0])


def _header(blob: bytes) -> Header:
    return read_header(BytesSource(blob))


def _rsa_jwk(key_ops: list[str]) -> tuple[dict, bytes]:
    """A private RSA JWK for Azure local mode, and its private exponent (the KEK's secret part)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()
    public = private.public_numbers

    def raw(value: int) -> bytes:
        return value.to_bytes((value.bit_length() + 7) // 8, "big")

    jwk = {
        "kid": "k/0123abcd",
        "kty": "RSA",
        "key_ops": key_ops,
        "n": raw(public.n),
        "e": raw(public.e),
        "d": raw(private.d),
        "p": raw(private.p),
        "q": raw(private.q),
        "dp": raw(private.dmp1),
        "dq": raw(private.dmq1),
        "qi": raw(private.iqmp),
    }
    return jwk, raw(private.d)


# -- (a) a failing sink ----------------------------------------------------------------------------


def test_header_write_failure_shows_no_key():
    dek = os.urandom(32)
    keys = StaticKeySource(dek, KeyBlock(WrapAlgorithm.A256GCM, "local://tests", "1", b"\x5a" * 60))
    sink = FailingSink(fail_at=1)
    exc = _raised(lambda: EncryptingWriter(sink, keys, segment_size=SEG, threads=1), OSError)
    header = Header.decode(sink.writes[0])
    _assert_hidden(exc, dek=dek, file_key=_file_key(dek, header))


def test_segment_write_failure_shows_no_key(vault):
    cache = _cache(vault)
    encrypt_bytes(b"an earlier file of the batch", cache)
    sink = FailingSink(fail_at=2)

    def write() -> None:
        with EncryptingWriter(sink, cache, segment_size=SEG, threads=1) as writer:
            writer.write(b"\x01" * (3 * SEG + 10))

    exc = _raised(write, OSError)
    header = Header.decode(sink.writes[0])
    dek = bytes(vault.unwrap(header.key_block))
    _assert_hidden(exc, dek=dek, file_key=_file_key(dek, header))


# -- (b) a moved key block -------------------------------------------------------------------------


def test_moved_key_block_shows_no_key(vault):
    writer = _cache(vault, max_files_per_dek=1)  # two files, two DEKs, one KEK
    a = encrypt_bytes(b"a" * 100, writer, segment_size=SEG)
    b = encrypt_bytes(b"b" * 100, writer, segment_size=SEG)
    ha, hb = _header(a), _header(b)
    assert ha.key_block != hb.key_block
    forged = hb.with_key_block(ha.key_block).encode() + b[hb.length :]
    exc = _raised(lambda: decrypt_bytes(forged, _cache(vault, None)), IntegrityError)
    dek_a, dek_b = bytes(vault.unwrap(ha.key_block)), bytes(vault.unwrap(hb.key_block))
    _assert_hidden(exc, moved_dek=dek_a, file_key=_file_key(dek_a, hb), file_dek=dek_b)


# -- (c) a refused key ---------------------------------------------------------------------------


def test_disabled_key_on_read_shows_no_key(vault):
    blob = encrypt_bytes(b"r" * (3 * SEG), _cache(vault), segment_size=SEG)
    header = _header(blob)
    dek = bytes(vault.unwrap(header.key_block))
    reader = DecryptingReader(BytesSource(blob), _cache(vault, None), threads=1)  # an open handle
    vault.disable("k")
    exc = _raised(lambda: decrypt_bytes(blob, _cache(vault, None)), KeyRevokedError)
    _assert_hidden(exc, dek=dek, file_key=_file_key(dek, header))
    # The refusal purged every cache: the open handle asks again and is refused too.
    exc = _raised(lambda: reader.read(0, SEG), KeyRevokedError)
    _assert_hidden(exc, dek=dek, file_key=_file_key(dek, header))


def test_refused_wrap_on_write_shows_no_key(vault):
    vault.disable("k")
    exc = _raised(lambda: EncryptingWriter(FailingSink(99), _cache(vault), segment_size=SEG), KeyRevokedError)
    (dek,) = vault.seen
    _assert_hidden(exc, dek=dek)


def test_refused_wrap_in_rewrap_shows_no_key(vault, tmp_path):
    vault.create("other")
    fs = CMKFileSystem(skip_instance_cache=True, key=KEY, target_protocol="file", segment_size=SEG)
    path = str(tmp_path / "f.bin")
    fs.pipe_file(path, b"payload" * 1000)
    with open(path, "rb") as f:
        header = _header(f.read())
    dek = bytes(vault.unwrap(header.key_block))
    vault.disable("other")
    # A versioned target skips the up-front check: the vault refuses at the wrap itself.
    exc = _raised(lambda: rewrap_file(fs, path, key="local://other?version=1"), KeyRevokedError)
    _assert_hidden(exc, dek=dek)


def test_refused_wrap_in_azure_local_mode_shows_no_key():
    jwk, private_exponent = _rsa_jwk(["unwrapKey"])  # an exported key that may not wrap
    provider = _RecordingAzure.from_jwk(jwk)
    provider.seen = []
    cache = KeyCache("https://local.invalid/keys/k", providers=lambda _uri: provider, retry_attempts=1)
    exc = _raised(lambda: EncryptingWriter(FailingSink(99), cache, segment_size=SEG))
    (dek,) = provider.seen
    _assert_hidden(exc, dek=dek, kek=private_exponent)


# -- (d) a vault error inside an unwrap -----------------------------------------------------------


def test_damaged_key_material_shows_no_key(vault, isolated_cmkfs_home):
    blob = encrypt_bytes(b"d" * 100, _cache(vault), segment_size=SEG)
    dek = bytes(vault.unwrap(_header(blob).key_block))
    material = isolated_cmkfs_home / "vault" / "k" / "v1.key"
    kek = material.read_bytes()
    assert len(kek) == 32  # stored without a passphrase
    material.write_bytes(kek + b"\n")  # an editor added a newline
    exc = _raised(lambda: decrypt_bytes(blob, _cache(vault, None)), VaultUnavailableError)
    _assert_hidden(exc, dek=dek, kek=kek)
    exc = _raised(lambda: encrypt_bytes(b"new", _cache(vault)), VaultUnavailableError)
    _assert_hidden(exc, dek=vault.seen[-1], kek=kek)


def test_unwrap_refused_inside_azure_local_mode_shows_no_key():
    jwk, private_exponent = _rsa_jwk(["wrapKey", "unwrapKey"])
    provider = AzureKeyVaultProvider.from_jwk(jwk)
    cache = KeyCache("https://local.invalid/keys/k", providers=lambda _uri: provider, retry_attempts=1)
    blob = encrypt_bytes(b"z" * 100, cache, segment_size=SEG)
    header = _header(blob)
    dek = bytes(provider.unwrap(header.key_block))
    bad = bytearray(header.key_block.wrapped_dek)
    bad[7] ^= 1
    forged = header.with_key_block(
        KeyBlock(header.key_block.wrap_alg, header.key_block.key_uri, header.key_block.key_version, bytes(bad))
    ).encode()
    forged += blob[header.length :]
    reader = KeyCache(None, providers=lambda _uri: provider, retry_attempts=1, trusted_vaults=["local.invalid"])
    exc = _raised(lambda: decrypt_bytes(forged, reader), IntegrityError)
    _assert_hidden(exc, dek=dek, kek=private_exponent)


def test_failure_after_the_vault_answered_shows_no_key(vault):
    blob = encrypt_bytes(b"u" * 100, _cache(vault), segment_size=SEG)
    header = _header(blob)
    dek = bytes(vault.unwrap(header.key_block))
    exc = _raised(lambda: decrypt_bytes(blob, _cache(vault, None, audit=_FailingAudit())), OSError)
    _assert_hidden(exc, dek=dek, file_key=_file_key(dek, header))


def test_refusals_are_translated(vault):
    # The errors above are the library's own, not a third party's leaking through.
    jwk, _ = _rsa_jwk(["unwrapKey"])
    with pytest.raises(ConfigurationError):
        AzureKeyVaultProvider.from_jwk(jwk).wrap("https://local.invalid/keys/k", os.urandom(32))


# -- (e) an HSM's user PIN -------------------------------------------------------------------------


@pytest.fixture
def hsm_key(softhsm):
    """A fresh AES key on the test token (made through a provider that is closed again)."""
    maker = softhsm.provider()
    try:
        yield maker.create_key(softhsm.token_label, f"tb-{uuid.uuid4().hex[:10]}")
    finally:
        maker.close()


def _pin_provider(softhsm, source: str, key_uri: str, tmp_path, monkeypatch):
    """A provider that takes the token's PIN from ``source``, and the key URI to write with."""
    from cmkfs.providers.pkcs11 import PKCS11Provider

    pin_file = tmp_path / "pin"
    pin_file.write_text(softhsm.user_pin + "\n")
    if source == "argument":
        return softhsm.provider(), key_uri
    if source == "environment":
        monkeypatch.setenv("CMKFS_PKCS11_PIN", softhsm.user_pin)
        return PKCS11Provider(module=softhsm.module), key_uri
    if source == "pin file":
        return PKCS11Provider(module=softhsm.module, pin_source=str(pin_file)), key_uri
    assert source == "pin-source in the key URI"
    return PKCS11Provider(module=softhsm.module), f"{key_uri}?pin-source=file://{pin_file}"


@pytest.mark.parametrize("source", ["argument", "environment", "pin file", "pin-source in the key URI"])
def test_made_up_key_version_in_a_header_shows_no_pin(softhsm, hsm_key, source, tmp_path, monkeypatch):
    # Anyone who can write to storage can plant this header: the real key, a version that does not exist.
    provider, key_uri = _pin_provider(softhsm, source, hsm_key, tmp_path, monkeypatch)
    try:
        blob = encrypt_bytes(b"h" * 100, _cache(provider, key_uri), segment_size=SEG)
        header = _header(blob)
        dek = bytes(provider.unwrap(header.key_block))
        forged = header.with_key_block(replace(header.key_block, key_version="99")).encode() + blob[header.length :]
        exc = _raised(lambda: decrypt_bytes(forged, _cache(provider, None)), KeyNotFoundError)
        _assert_hidden(exc, pin=softhsm.user_pin.encode(), dek=dek)
    finally:
        provider.close()


@pytest.mark.parametrize("logged_in", [False, True], ids=["rejected by the token", "while logged in"])
def test_failed_login_shows_no_pin(softhsm, hsm_key, logged_in):
    from cmkfs.providers.pkcs11 import close_sessions

    wrong = "wrong-pin-" + uuid.uuid4().hex  # a PIN the token has not refused before
    holder = softhsm.provider()  # with the right PIN
    try:
        if logged_in:
            holder.describe(hsm_key)  # the process is logged in: a second PIN is refused before the token sees it
        else:
            close_sessions()
        other = softhsm.provider(pin=wrong)
        try:
            exc = _raised(lambda: other.wrap(hsm_key, os.urandom(32)), ConfigurationError)
        finally:
            other.close()
        if not logged_in:
            assert type(exc.__cause__).__name__ == "PinIncorrect"  # the token itself said no
        _assert_hidden(exc, wrong_pin=wrong.encode(), pin=softhsm.user_pin.encode())
    finally:
        holder.close()


def test_pin_file_that_is_not_utf8_shows_no_pin(tmp_path):
    from cmkfs.providers.pkcs11 import PKCS11Provider

    pin = b"\xff" + token_hex(12).encode()  # the file's bytes are the PIN, even when they do not decode
    (tmp_path / "pin").write_bytes(pin + b"\n")
    provider = PKCS11Provider(module=str(tmp_path / "no-module.so"), pin_source=str(tmp_path / "pin"))
    exc = _raised(lambda: provider.describe("pkcs11:token=t;object=k"), ConfigurationError)
    assert "not UTF-8" in str(exc)
    _assert_hidden(exc, pin=pin)


# -- (f) the embedded vault's passphrase -----------------------------------------------------------


def _passphrase() -> str:
    return "pp-" + token_hex(16)


@pytest.fixture(params=["str", "bytes", "environment"])
def protected(request, isolated_cmkfs_home, monkeypatch):
    """A passphrase-protected key ``local://k``: (a function making providers for it, its passphrase)."""
    passphrase = _passphrase()

    def make(given: str = passphrase) -> LocalVaultProvider:
        if request.param == "environment":
            monkeypatch.setenv(local_vault.ENV_PASSPHRASE, given)
            return LocalVaultProvider()
        return LocalVaultProvider(passphrase=given.encode() if request.param == "bytes" else given)

    make().create("k", protect=True)
    return make, passphrase


def _failing_material_write(monkeypatch) -> None:
    """Writing key material fails as on a full disk (the vault's directories stay writable for root)."""
    real = local_vault._atomic_write

    def atomic_write(path, data):
        if path.name.endswith(".key"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(local_vault, "_atomic_write", atomic_write)


def test_failing_rotate_shows_no_passphrase(protected, monkeypatch):
    make, passphrase = protected
    vault = make()
    _failing_material_write(monkeypatch)
    exc = _raised(lambda: vault.rotate("k"), VaultUnavailableError)
    assert isinstance(exc.__cause__, OSError)
    _assert_hidden(exc, passphrase=passphrase.encode())


def test_rotate_with_damaged_material_shows_no_passphrase(protected, isolated_cmkfs_home):
    make, passphrase = protected
    material = isolated_cmkfs_home / "vault" / "k" / "v1.key"
    material.write_bytes(material.read_bytes()[:-1])
    exc = _raised(lambda: make().rotate("k"), VaultUnavailableError)
    _assert_hidden(exc, passphrase=passphrase.encode())


def test_rotate_with_a_mistyped_passphrase_shows_neither(protected):
    make, passphrase = protected
    mistyped = passphrase[:-1] + ("0" if passphrase[-1] != "0" else "1")
    typo = make(mistyped)  # made out here: the check reads every frame under _raised, the lambda's too
    exc = _raised(lambda: typo.rotate("k"), ConfigurationError)
    assert "wrong passphrase" in str(exc)
    _assert_hidden(exc, passphrase=passphrase.encode(), mistyped=mistyped.encode())


class _ScryptOutOfMemory:
    """scrypt failing to get its 32 MiB, as on a small or overcommitted host."""

    def __init__(self, **_params) -> None:
        pass

    def derive(self, key_material) -> bytes:
        raise MemoryError()

    def derive_into(self, key_material, buffer) -> int:
        raise MemoryError()


def test_failing_kdf_on_unwrap_shows_no_passphrase(protected, monkeypatch):
    make, passphrase = protected
    blob = encrypt_bytes(b"p" * 100, _cache(make()), segment_size=SEG)
    dek = bytes(make().unwrap(_header(blob).key_block))
    monkeypatch.setattr(local_vault, "Scrypt", _ScryptOutOfMemory)
    reader = make()  # a new provider derives the passphrase key again
    exc = _raised(lambda: decrypt_bytes(blob, _cache(reader, None)), MemoryError)
    _assert_hidden(exc, passphrase=passphrase.encode(), dek=dek)


@pytest.mark.parametrize("damage", [{"n": 3}, {"salt": "abc"}], ids=["scrypt cost not a power of two", "bad salt"])
def test_damaged_protection_on_unwrap_shows_no_passphrase(protected, isolated_cmkfs_home, damage):
    make, passphrase = protected
    blob = encrypt_bytes(b"q" * 100, _cache(make()), segment_size=SEG)
    dek = bytes(make().unwrap(_header(blob).key_block))
    meta_file = isolated_cmkfs_home / "vault" / "k" / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["protection"].update(damage)
    meta_file.write_text(json.dumps(meta))
    exc = _raised(lambda: decrypt_bytes(blob, _cache(make(), None)), VaultUnavailableError)
    _assert_hidden(exc, passphrase=passphrase.encode(), dek=dek)
