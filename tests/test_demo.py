"""The README's main job: ``cmkfs demo`` on the embedded default."""

from __future__ import annotations

import json
import subprocess
import sys

from cmkfs.format import MAGIC


def test_demo_runs_end_to_end_and_leaves_only_ciphertext(tmp_path):
    store = tmp_path / "store"
    proc = subprocess.run(
        [sys.executable, "-m", "cmkfs", "demo", "--dir", str(store), "--rows", "3000", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["key_uri"] == "local://demo"
    assert result["refused_after_disable"] is True
    assert result["restored_after_enable"] is True
    assert set(result["revenue_by_region"]) == {"north", "south", "east", "west"}
    files = [p for p in store.rglob("*") if p.is_file()]
    assert len(files) == result["files"] >= 4
    for path in files:
        raw = path.read_bytes()
        assert raw.startswith(MAGIC)
        # Neither Parquet nor PNG structure nor the data's words survive on disk.
        for marker in (b"PAR1", b"IHDR", b"north", b"revenue"):
            assert marker not in raw, (path, marker)


def test_demo_reuses_a_configured_default_key(tmp_path):
    created = subprocess.run(
        [sys.executable, "-m", "cmkfs", "keys", "create", "sales", "--default"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "local://sales" in created.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "cmkfs", "demo", "--dir", str(tmp_path / "s"), "--rows", "500", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["key_uri"] == "local://sales"
