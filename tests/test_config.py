"""The embedded configuration file, and local sources that fail to open."""

from __future__ import annotations

import gc
import sys

import pytest

from cmkfs.config import CONFIG_FILE, default_key_uri, load_config
from cmkfs.errors import ConfigurationError
from cmkfs.targets import LocalSource


@pytest.mark.parametrize(
    "raw",
    [
        b'{"default_key": "local://\xff"}',  # not UTF-8: json raises UnicodeDecodeError, which has no .msg
        b"[" * 50_000,  # nested too deep for the decoder: RecursionError
        b'{"default_key": ',
    ],
    ids=["invalid-utf8", "deep-nesting", "truncated"],
)
def test_unreadable_config_is_a_configuration_error_naming_the_file(isolated_cmkfs_home, raw):
    path = isolated_cmkfs_home / CONFIG_FILE
    path.write_bytes(raw)
    with pytest.raises(ConfigurationError) as info:
        load_config()
    assert str(path) in str(info.value)
    with pytest.raises(ConfigurationError):
        default_key_uri()


def test_config_with_a_utf8_byte_order_mark_still_loads(isolated_cmkfs_home):
    (isolated_cmkfs_home / CONFIG_FILE).write_bytes('\ufeff{"default_key": "local://k"}'.encode())
    assert load_config() == {"default_key": "local://k"}


def test_missing_local_file_raises_only_file_not_found(tmp_path, monkeypatch):
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with pytest.raises(FileNotFoundError):
        LocalSource(str(tmp_path / "missing.bin"))
    gc.collect()  # the half-made object is gone by now; make sure of it
    assert [u.exc_value for u in unraisable] == []
