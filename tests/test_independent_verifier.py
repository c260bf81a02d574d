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
