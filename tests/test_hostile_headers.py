"""Hostile key blocks: every malformed key URI, key version or (scheme, wrap
algorithm) pair in a header is a FormatError at decode, before any parser,
provider, log line or terminal sees it; walks report such files and go on;
the command line prints file-derived text with control characters escaped.
docs/FORMAT.md section 3.5 is the grammar."""

from __future__ import annotations

import hashlib
import os
import struct

import pytest
from click.testing import CliRunner

from cmkfs.cli import cli
from cmkfs.cli.output import EXIT_ERROR, EXIT_FORMAT, printable
from cmkfs.errors import CMKError, FormatError
from cmkfs.filesystem import CMKFileSystem
from cmkfs.format import Header, KeyBlock
from cmkfs.providers.local import LocalVaultProvider
from cmkfs.rewrap import rewrap_tree
from tests.key_names import A256GCM, HOSTILE, LEGITIMATE, RSA256, WRAPPED


def raw_block(alg, uri, version, wrapped: bytes | None = None) -> bytes:
    """A key block encoded by hand: KeyBlock.encode refuses what these tests need."""
    u = uri if isinstance(uri, bytes) else uri.encode("utf-8")
    v = version if isinstance(version, bytes) else version.encode("utf-8")
    w = bytes(WRAPPED[alg]) if wrapped is None else wrapped
    return b"".join(
        (bytes([int(alg)]), struct.pack(">H", len(u)), u, struct.pack(">H", len(v)), v, struct.pack(">H", len(w)), w)
    )


def raw_header(block: bytes, params_and_commitment: bytes = bytes(88)) -> bytes:
    body = params_and_commitment + struct.pack(">I", len(block)) + block
    return body + hashlib.sha256(body).digest()[:16]


def valid_prefix() -> bytes:
    params = b"\x89CMK\r\n\x1a\n" + bytes([1, 1, 0, 0]) + struct.pack(">I", 4096) + bytes(32) + bytes(7) + b"\x00"
    return params + bytes(32)


@pytest.mark.parametrize("uri, version, alg, why", HOSTILE, ids=[f"{h[3]} {ascii(h[0] + '|' + h[1])}" for h in HOSTILE])
def test_hostile_key_block_is_a_format_error(uri, version, alg, why):
    header = raw_header(raw_block(alg, uri, version), valid_prefix())
    with pytest.raises(FormatError) as info:
        Header.decode(header)
    message = str(info.value)
    # One line, nothing unescaped from the file, bounded.
    assert message.isascii() and message.isprintable() and len(message) <= 300, message
    with pytest.raises(FormatError):
        KeyBlock.decode(raw_block(alg, uri, version))


def test_refusals_quote_the_name_escaped_and_bounded():
    with pytest.raises(FormatError) as info:
        KeyBlock.decode(raw_block(A256GCM, "local://k\x1b[2J", "1"))
    assert "\\x1b" in str(info.value) and "\x1b" not in str(info.value)
    long_uri = "local://k?" + "\x07" * 2000
    with pytest.raises(FormatError) as info:
        KeyBlock.decode(raw_block(A256GCM, long_uri, "1"))
    assert len(str(info.value)) <= 300 and "\x07" not in str(info.value)


@pytest.mark.parametrize("uri, version, alg", LEGITIMATE, ids=[ascii(x[0]) for x in LEGITIMATE])
def test_every_form_the_providers_write_decodes(uri, version, alg):
    block = KeyBlock(alg, uri, version, bytes(WRAPPED[alg]))
    assert KeyBlock.decode(block.encode()) == block
    assert KeyBlock.decode(raw_block(alg, uri, version)) == block


def test_encode_refuses_what_decode_refuses():
    # A writer must not produce a file that every reader refuses.
    for uri, version, alg, _ in HOSTILE:
        with pytest.raises(ValueError):
            KeyBlock(alg, uri, version, bytes(WRAPPED[alg])).encode()


def test_the_local_vault_writes_decodable_blocks(isolated_cmkfs_home):
    vault = LocalVaultProvider(isolated_cmkfs_home)
    vault.create("k")
    vault.rotate("k")
    for uri in ("local://k", "local://k?version=1", "local://k?version=02"):
        block = vault.wrap(uri, os.urandom(32))
        assert KeyBlock.decode(block.encode()) == block
        assert block.key_uri == "local://k"


# -- through the filesystem and the re-wrap walk ---------------------------------------------


@pytest.fixture
def vault(isolated_cmkfs_home):
    provider = LocalVaultProvider()
    provider.create("k")
    return provider


def new_fs() -> CMKFileSystem:
    return CMKFileSystem(key="local://k", target_protocol="file", segment_size=4096, skip_instance_cache=True)


def forge(path, uri, version="1", alg=A256GCM) -> None:
    """Replace the key block of the cmkfs file at ``path`` (checksum recomputed)."""
    with open(path, "rb") as f:
        blob = f.read()
    (block_len,) = struct.unpack(">I", blob[88:92])
    header_len = 92 + block_len + 16
    wrapped = blob[92 : header_len - 16][-60:]
    with open(path, "wb") as f:
        f.write(raw_header(raw_block(alg, uri, version, wrapped), blob[:88]) + blob[header_len:])


@pytest.mark.parametrize(
    "uri",
    ["local://k?version=\u00b2", "https://[/keys/x", "local://k?version=1", "https://v.vault.azure.net:99999/keys/x"],
)
def test_reading_a_hostile_file_is_a_format_error_before_any_vault_call(vault, tmp_path, uri):
    fs = new_fs()
    path = str(tmp_path / "f.bin")
    fs.pipe_file(path, b"secret")
    forge(path, uri, alg=RSA256 if uri.startswith("https") else A256GCM)
    reader = new_fs()
    with pytest.raises(FormatError):
        reader.cat_file(path)
    assert reader.keys.vault_calls == 0


def test_rewrap_tree_reports_hostile_files_and_goes_on(vault, tmp_path):
    fs = new_fs()
    root = tmp_path / "tree"
    root.mkdir()
    for name in ("a.bin", "b.bin", "c.bin", "d.bin"):
        fs.pipe_file(str(root / name), name.encode())
    forge(str(root / "b.bin"), "local://k?version=\u00b2")
    forge(str(root / "c.bin"), "https://[/keys/x", alg=RSA256)
    vault.rotate("k")

    results = {os.path.basename(r.path): r for r in rewrap_tree(fs, str(root))}
    assert sorted(results) == ["a.bin", "b.bin", "c.bin", "d.bin"]
    assert isinstance(results["b.bin"].error, FormatError) and isinstance(results["c.bin"].error, FormatError)
    assert results["a.bin"].changed and results["d.bin"].changed
    assert new_fs().cat_file(str(root / "d.bin")) == b"d.bin"


def test_rewrap_tree_reports_an_unexpected_value_error_and_goes_on(vault, tmp_path, monkeypatch):
    fs = new_fs()
    root = tmp_path / "tree"
    root.mkdir()
    for name in ("a.bin", "b.bin", "c.bin"):
        fs.pipe_file(str(root / name), name.encode())
    vault.rotate("k")
    real = LocalVaultProvider.unwrap

    def unwrap(self, key_block):
        if not hasattr(unwrap, "done"):
            unwrap.done = True
            raise ValueError("a parser deep in a provider choked")
        return real(self, key_block)

    monkeypatch.setattr(LocalVaultProvider, "unwrap", unwrap)
    results = list(rewrap_tree(fs, str(root)))
    assert [type(r.error) for r in results] == [ValueError, type(None), type(None)]
    assert [r.changed for r in results] == [False, True, True]


# -- the command line --------------------------------------------------------------------------


def test_printable_escapes_what_a_terminal_would_act_on():
    assert printable("plain text, caf\u00e9 / 100%") == "plain text, caf\u00e9 / 100%"
    assert printable("a\x1b[2Jb\n\r\t\x07\x00\x7f\x9b") == "a\\x1b[2Jb\\n\\r\\t\\x07\\x00\\x7f\\x9b"
    assert printable("x\u202ey\u2028z\ufeff") == "x\\u202ey\\u2028z\\ufeff"
    assert printable("back\\slash") == "back\\\\slash"  # so an escape in the output is never the file's text
    assert printable("\U000e0041") == "\\U000e0041"


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args):
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert "Traceback" not in result.output
        return result

    return invoke


def _no_controls(text: str) -> bool:
    return all(ch.isprintable() or ch == "\n" for ch in text)


def test_cli_rewrap_reports_hostile_files_escaped_and_goes_on(vault, tmp_path, run):
    fs = new_fs()
    root = tmp_path / "cli"
    root.mkdir()
    for name in ("a.bin", "b.bin", "z.bin"):
        fs.pipe_file(str(root / name), name.encode())
    forge(str(root / "b.bin"), "local://k?version=\u00b2")
    evil = root / "evil\x1b]0;pwned\x07\x1b[2J.bin"
    evil.write_bytes(b"not encrypted")
    vault.rotate("k")

    result = run("rewrap", f"cmk::file://{root}", "-r", "--key", "local://k")
    assert result.exit_code == EXIT_FORMAT, result.output
    assert _no_controls(result.stdout) and _no_controls(result.stderr), repr(result.output)
    assert "evil\\x1b]0;pwned\\x07\\x1b[2J.bin" in result.stderr
    assert "b.bin" in result.stderr and "re-wrapped 2, unchanged 0, failed 2" in result.stdout
    assert new_fs().cat_file(str(root / "z.bin")) == b"z.bin"


def test_cli_rewrap_unexpected_value_error_is_a_failed_file(vault, tmp_path, run, monkeypatch):
    fs = new_fs()
    root = tmp_path / "cli"
    root.mkdir()
    for name in ("a.bin", "b.bin"):
        fs.pipe_file(str(root / name), name.encode())
    vault.rotate("k")
    real = LocalVaultProvider.unwrap

    def unwrap(self, key_block):
        if not hasattr(unwrap, "done"):
            unwrap.done = True
            raise ValueError("bad \x1b[31mthing")
        return real(self, key_block)

    monkeypatch.setattr(LocalVaultProvider, "unwrap", unwrap)
    result = run("rewrap", f"cmk::file://{root}", "-r", "--key", "local://k")
    assert result.exit_code == EXIT_ERROR
    assert "bad \\x1b[31mthing" in result.stderr and _no_controls(result.stderr)
    assert "re-wrapped 1, unchanged 0, failed 1" in result.stdout


def test_cli_errors_are_escaped(vault, tmp_path, run):
    missing = tmp_path / "no\x1b[2Jsuch"
    result = run("rewrap", str(missing), "--key", "local://k")
    assert result.exit_code != 0
    assert "\x1b" not in result.stderr and "no\\x1b[2Jsuch" in result.stderr


def test_hostile_file_errors_are_cmk_errors():
    for uri, version, alg, _ in HOSTILE:
        with pytest.raises(CMKError):
            Header.decode(raw_header(raw_block(alg, uri, version), valid_prefix()))
