"""The key-deadline clock counts time the host spends suspended."""

from __future__ import annotations

import sys
import time

import pytest

from cmkfs import clock
from cmkfs.keycache import KeyCache
from cmkfs.providers.local import LocalVaultProvider

TTL = 60.0


def test_key_cache_deadlines_are_on_the_key_clock(isolated_cmkfs_home):
    LocalVaultProvider().create("clock-test")
    cache = KeyCache("local://clock-test", ttl=TTL)
    assert cache.clock is clock.key_clock
    before = clock.key_clock()
    data_key = cache.data_key_for_write()
    after = clock.key_clock()
    assert before + TTL <= data_key.expires_at <= after + TTL


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CLOCK_BOOTTIME is Linux's")
def test_on_linux_the_key_clock_is_boottime(monkeypatch):
    assert (clock.KEY_CLOCK_NAME, clock.COUNTS_SUSPEND) == ("CLOCK_BOOTTIME", True)
    before = time.clock_gettime(time.CLOCK_BOOTTIME)
    now = clock.key_clock()
    assert before <= now <= time.clock_gettime(time.CLOCK_BOOTTIME)
    # BOOTTIME and MONOTONIC differ only by the time spent suspended, which
    # may be nothing on this host: tell them apart with a fake clock_gettime.
    readings = {time.CLOCK_BOOTTIME: 7200.0 + 10.0, time.CLOCK_MONOTONIC: 10.0}
    monkeypatch.setattr(time, "clock_gettime", readings.__getitem__)
    monkeypatch.setattr(time, "monotonic", lambda: 10.0)
    assert clock.key_clock() == 7210.0  # two hours asleep still count


@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        ("linux", "CLOCK_BOOTTIME"),
        ("darwin", "CLOCK_MONOTONIC"),
        ("win32", "time.monotonic"),
        ("freebsd14", "time.monotonic"),
    ],
)
def test_each_platform_gets_its_documented_clock(monkeypatch, platform, expected):
    monkeypatch.setattr(sys, "platform", platform)
    # macOS documents CLOCK_MONOTONIC as counting sleep (time.monotonic() there
    # does not); this host's constants stand in for the real platform's.
    name, clock_id = clock._choose()
    assert name == expected
    assert (clock_id is None) == (expected == "time.monotonic")


def test_a_kernel_without_the_clock_falls_back_to_monotonic(monkeypatch):
    def refuse(clock_id):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(time, "clock_gettime", refuse)
    assert clock._choose() == ("time.monotonic", None)
