"""The independent verifier (``scripts/verify_vectors.py``) agrees with the
stored test vectors, and is able to disagree with them.

The verifier is a from-the-specification decryptor that imports nothing from
``cmkfs``; these tests run it as a subprocess with the current interpreter.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "verify_vectors.py"
VECTORS = ROOT / "tests" / "vectors" / "v1.json"


def run_verifier(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def summary(out: str) -> str:
    lines = out.strip().splitlines()
    assert lines, "verifier printed nothing"
    return lines[-1]


def vector_line(out: str, name: str) -> str:
    matches = [line for line in out.splitlines() if line.split(" ", 2)[1:2] == [name]]
    assert len(matches) == 1, f"expected one line for {name!r} in:\n{out}"
    return matches[0]


def test_verifier_agrees_with_stored_vectors():
    proc = run_verifier()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    n = len(json.loads(VECTORS.read_text(encoding="utf-8"))["vectors"])
    assert summary(proc.stdout) == f"{n} passed, 0 failed"
    assert "0 failed" in proc.stdout


def test_verifier_accepts_a_directory(tmp_path):
    (tmp_path / "v1.json").write_bytes(VECTORS.read_bytes())
    proc = run_verifier("--vectors", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert summary(proc.stdout).endswith(" passed, 0 failed")


@pytest.mark.parametrize(
    "name, where",
    [
        ("one-byte", -1),  # last byte of the final tag
        ("multi-segment", 5000),  # inside segment 1, a non-final segment
        ("multi-segment", 20),  # a salt byte: caught by the header checksum
        ("segment-plus-one", 0),  # the magic: no longer a cmkfs file at all
        ("wrap-a256kwp", 140),  # inside the RFC 5649 wrapped DEK (header checksum)
    ],
)
def test_verifier_reports_a_corrupted_ok_vector(tmp_path, name, where):
    doc = json.loads(VECTORS.read_text(encoding="utf-8"))
    n = len(doc["vectors"])
    (vec,) = [v for v in doc["vectors"] if v["name"] == name]
    assert vec["outcome"] == "ok"
    data = bytearray.fromhex(vec["ciphertext"])
    data[where] ^= 0x01
    vec["ciphertext"] = data.hex()  # the expected outcome stays "ok"
    path = tmp_path / "corrupted.json"
    path.write_text(json.dumps(doc), encoding="utf-8")

    proc = run_verifier("--vectors", str(path))
    assert proc.returncode != 0, proc.stdout
    assert summary(proc.stdout) == f"{n - 1} passed, 1 failed"
    assert vector_line(proc.stdout, name).startswith("FAIL ")


@pytest.mark.parametrize("name", ["wrap-rsa-oaep-256", "wrap-rsa-oaep-sha1", "wrap-a256kwp"])
def test_verifier_unwrap_refuses_a_changed_wrapped_dek(tmp_path, name):
    """A wrapped-DEK byte flipped and the header checksum recomputed: only the unwrap can tell."""
    doc = json.loads(VECTORS.read_text(encoding="utf-8"))
    (vec,) = [v for v in doc["vectors"] if v["name"] == name]
    data = bytearray.fromhex(vec["ciphertext"])
    k = int.from_bytes(data[88:92], "big")
    h = 108 + k
    data[h - 16 - 5] ^= 0x01  # inside wrapped_dek, the last field of the key block
    data[h - 16 : h] = hashlib.sha256(bytes(data[: h - 16])).digest()[:16]
    vec["ciphertext"] = data.hex()
    path = tmp_path / "rewrapped.json"
    path.write_text(json.dumps({"vectors": [vec]}), encoding="utf-8")

    proc = run_verifier("--vectors", str(path))
    assert proc.returncode != 0, proc.stdout
    assert summary(proc.stdout) == "0 passed, 1 failed"
    assert "got integrity (step 9" in vector_line(proc.stdout, name)


def test_verifier_does_not_use_the_library():
    """The verifier runs with ``cmkfs`` made unimportable."""
    code = (
        "import runpy, sys; sys.modules['cmkfs'] = None; sys.argv = [sys.argv[0]]; "
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert summary(proc.stdout).endswith(" passed, 0 failed")


def test_worked_example_of_the_specification():
    """The intermediate values printed in FORMAT.md, vector ``one-byte``."""
    spec = importlib.util.spec_from_file_location("_cmkfs_verify_vectors", SCRIPT)
    vv = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = vv
    try:
        spec.loader.exec_module(vv)
        (vec,) = [v for v in json.loads(VECTORS.read_text(encoding="utf-8"))["vectors"] if v["name"] == "one-byte"]
        result = vv.decrypt(bytes.fromhex(vec["ciphertext"]), bytes.fromhex(vec["kek"]))
    finally:
        sys.modules.pop(spec.name, None)
    hdr = result.header
    assert len(bytes.fromhex(vec["ciphertext"])) == 208
    assert (hdr.key_block_len, hdr.header_len) == (83, 191)
    assert vv.wrap_aad(hdr.key_uri, hdr.key_version).hex() == (
        "636d6b66732f763120777261706c6f63616c3a2f2f766563746f72730031"
    )
    assert result.dek.hex() == "85c693f33a6fe67fba3bdd5a56758dd3b3ac9aedd870197714b48abf2aef4f28"
    assert result.file_key.hex() == "ca1650ef854f0fcbe6e1e519619aeee228b87782cf80499f6e310e4acab50410"
    assert hdr.commitment.hex() == "7c877097c0609873c6ce6825d4fab82e0321051ae353291e01607fb1b48c5b5b"
    assert vv.segment_nonce(hdr.nonce_prefix, 0, True).hex() == "f1ed4c34e51b310000000001"
    assert result.plaintext == b"\x42"


@pytest.fixture
def vv():
    """The verifier as a module (it imports nothing from cmkfs)."""
    spec = importlib.util.spec_from_file_location("_cmkfs_verify_vectors", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_verifier_refuses_key_name_vectors_by_the_name_rules_alone(vv, monkeypatch):
    """With its FORMAT.md 3.5 check switched off, the verifier decrypts every
    key-name vector (except the one that is not UTF-8): the check is what refuses them."""
    doc = json.loads(VECTORS.read_text(encoding="utf-8"))
    by_name = {v["name"]: v for v in doc["vectors"]}
    names = [n for n in by_name if n.startswith(("key-uri-", "key-version-", "wrap-alg-mismatch"))]
    assert len(names) >= 15
    for name in names:
        agrees, message = vv.check_vector(by_name[name])
        assert agrees and "(3.5)" in message or name == "key-uri-not-utf8", (name, message)
    monkeypatch.setattr(vv, "check_key_names", lambda *args: None)
    for name in names:
        vec = by_name[name]
        if name == "key-uri-not-utf8":
            continue
        result = vv.decrypt(bytes.fromhex(vec["ciphertext"]), vv.parse_kek(vec["kek"]))
        assert result.plaintext == bytes.fromhex(by_name[vec["derived_from"]]["plaintext"]), name


def _library_accepts(alg, uri: str, version: str) -> bool:
    from cmkfs.errors import FormatError
    from cmkfs.format import check_key_names

    try:
        check_key_names(alg, uri, version)
    except FormatError:
        return False
    return True


def _verifier_accepts(vv, alg, uri: str, version: str) -> bool:
    try:
        vv.check_key_names(alg.name, uri, version)
    except vv.FormatError:
        return False
    return True


def test_library_and_verifier_agree_on_key_names(vv):
    from tests.key_names import HOSTILE, LEGITIMATE

    for uri, version, alg, why in HOSTILE:
        assert not _verifier_accepts(vv, alg, uri, version), why
    for uri, version, alg in LEGITIMATE:
        assert _verifier_accepts(vv, alg, uri, version), uri


# Pieces of key URIs and versions, valid and not, spliced into valid names: near misses are
# where two implementations of a grammar disagree.
_PIECES = [
    "local://",
    "https://",
    "pkcs11:",
    "token=",
    ";object=",
    ";type=",
    "secret-key",
    "private",
    "/keys/",
    "k",
    "K-1",
    "v.vault.azure.net",
    "[::1]",
    "[",
    "]",
    ":",
    ":443",
    ":0",
    ":65536",
    "/",
    "?",
    "#",
    "%",
    "%41",
    "%C3%A9",
    "%c3",
    "%0A",
    "%FF",
    "%3D",
    "=",
    ";",
    ".",
    "-",
    "_",
    "~",
    "x",
    "0",
    "01",
    "1",
    "9" * 21,
    "\x00",
    "\x1b",
    " ",
    "\u00b2",
    "\u00e9",
    "a" * 64,
    "@",
    "A",
    "f",
    "x0a",
]
_EDIT = st.tuples(st.booleans(), st.integers(0, 400), st.integers(0, 3), st.sampled_from(_PIECES + [""]))


def _edited(text: str, edit) -> str:
    _, pos, cut, insert = edit
    pos %= len(text) + 1
    return text[:pos] + insert + text[pos + cut :]


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    base=st.integers(0, 10**6),
    edits=st.lists(_EDIT, max_size=3),
    alg=st.one_of(st.none(), st.sampled_from(["A256GCM", "RSA_OAEP_256", "A256KWP", "RSA_OAEP_SHA1"])),
)
def test_library_and_verifier_agree_on_any_key_name(vv, base, edits, alg):
    from cmkfs.format import WrapAlgorithm
    from tests.key_names import HOSTILE, LEGITIMATE

    names = LEGITIMATE + [h[:3] for h in HOSTILE]
    uri, version, wrap_alg = names[base % len(names)]
    for edit in edits:
        if edit[0]:
            uri = _edited(uri, edit)
        else:
            version = _edited(version, edit)
    wrap_alg = WrapAlgorithm[alg] if alg else wrap_alg
    assert _library_accepts(wrap_alg, uri, version) == _verifier_accepts(vv, wrap_alg, uri, version), (uri, version)
