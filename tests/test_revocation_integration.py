"""Revocation end to end, in real processes, on the real clock.

A long-running process keeps reading an encrypted file and writing a new
one with a 2-second key cache TTL while ``cmkfs keys disable`` runs in
another process.  The promise under test: a fresh process is refused at
once; the running process, its open reader and its open writer are refused
within the TTL (plus a small scheduling margin); new writes are refused;
``cmkfs keys enable`` restores access.

Times are compared across processes with ``time.monotonic()``, which on
Linux is the system-wide CLOCK_MONOTONIC.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from cmkfs.keycache import KeyCache
from cmkfs.providers.local import LocalVaultProvider
from cmkfs.stream import EncryptingWriter

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="compares CLOCK_MONOTONIC across processes"
)

TTL = 2.0
MARGIN = 1.0  # loop period (0.05 s), scheduling on a busy 2-core machine
SEG = 4096

_RUNNING = textwrap.dedent(
    """
    import io, json, os, sys, time
    from cmkfs.errors import KeyRevokedError
    from cmkfs.keycache import KeyCache
    from cmkfs.stream import DecryptingReader, EncryptingWriter, FileSource

    path, out_path, ttl = sys.argv[1], sys.argv[2], float(sys.argv[3])

    def say(event, **kw):
        print(json.dumps({"event": event, "t": time.monotonic(), **kw}), flush=True)

    cache = KeyCache("local://drill", ttl=ttl)
    reader = DecryptingReader(FileSource(open(path, "rb")), cache, threads=1)
    sink = open(out_path, "wb")
    writer = EncryptingWriter(sink, cache, segment_size=4096, threads=1)
    seg, count = reader.segment_size, reader.segment_count
    say("ready")
    read_refused = write_refused = False
    last_read_ok = last_write_ok = None
    i = 0
    deadline = time.monotonic() + 60
    while not (read_refused and write_refused) and time.monotonic() < deadline:
        if not read_refused:
            try:
                reader.read((i % count) * seg, 100)
                last_read_ok = time.monotonic()
            except KeyRevokedError:
                read_refused = True
                say("read refused", last_ok=last_read_ok)
        if not write_refused:
            try:
                writer.write(os.urandom(4096))  # seals one segment per call after the first
                last_write_ok = time.monotonic()
            except KeyRevokedError:
                write_refused = True
                writer.abort()
                say("write refused", last_ok=last_write_ok)
        if i == 10:
            say("reading")
        i += 1
        time.sleep(0.05)
    try:
        EncryptingWriter(io.BytesIO(), cache, segment_size=4096)
        say("new write allowed")
    except KeyRevokedError:
        say("new write refused")
    sys.stdin.readline()  # the parent says: the key is enabled again
    try:
        data = reader.read(0, -1)
        say("restored", size=len(data))
    except Exception as exc:
        say("still refused", error=type(exc).__name__)
    """
)

_FRESH = textwrap.dedent(
    """
    import io, json, sys
    from cmkfs.errors import KeyRevokedError
    from cmkfs.keycache import KeyCache
    from cmkfs.stream import DecryptingReader, EncryptingWriter, FileSource

    result = {}
    try:
        DecryptingReader(FileSource(open(sys.argv[1], "rb")), KeyCache(ttl=2), threads=1).read(0, -1)
        result["read"] = "ok"
    except KeyRevokedError:
        result["read"] = "refused"
    try:
        w = EncryptingWriter(io.BytesIO(), KeyCache("local://drill", ttl=2), segment_size=4096)
        w.write(b"x")
        w.close()
        result["write"] = "ok"
    except KeyRevokedError:
        result["write"] = "refused"
    print(json.dumps(result))
    """
)


def _lines(stream, q):
    for line in stream:
        q.put(json.loads(line))
    q.put(None)


def _next(q, timeout=30.0) -> dict:
    try:
        item = q.get(timeout=timeout)
    except queue.Empty:
        pytest.fail("the running process said nothing")
    assert item is not None, "the running process died"
    return item


def _cmkfs(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cmkfs", *args], capture_output=True, text=True, timeout=60)


def _fresh(path) -> dict:
    done = subprocess.run([sys.executable, "-c", _FRESH, str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_revocation_reaches_running_processes_within_the_ttl(isolated_cmkfs_home, tmp_path):
    LocalVaultProvider().create("drill")
    path = tmp_path / "data.cmk"
    plain = os.urandom(20 * SEG)
    with open(path, "wb") as sink, EncryptingWriter(sink, KeyCache("local://drill", ttl=60), segment_size=SEG) as w:
        w.write(plain)
    assert _fresh(path) == {"read": "ok", "write": "ok"}

    child = subprocess.Popen(
        [sys.executable, "-c", _RUNNING, str(path), str(tmp_path / "out.cmk"), str(TTL)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    events: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(child.stdout, events), daemon=True).start()
    try:
        assert _next(events)["event"] == "ready"
        assert _next(events)["event"] == "reading"  # a steady state: cached key, segments flowing

        started = time.monotonic()
        disabled = _cmkfs("keys", "disable", "drill")
        done = time.monotonic()
        assert disabled.returncode == 0, disabled.stderr

        assert _fresh(path) == {"read": "refused", "write": "refused"}  # a fresh process: at once

        refusals = {}
        while len(refusals) < 2:
            event = _next(events, timeout=TTL + 10)
            refusals[event["event"]] = event
        for name in ("read refused", "write refused"):
            event = refusals[name]
            # The running process, its open reader and its open writer stop within the TTL.
            assert started <= event["t"] <= done + TTL + MARGIN, (name, event["t"] - done)
            if event["last_ok"] is not None:
                assert event["last_ok"] <= done + TTL + MARGIN
        assert _next(events)["event"] == "new write refused"

        enabled = _cmkfs("keys", "enable", "drill")
        assert enabled.returncode == 0, enabled.stderr
        child.stdin.write("go\n")
        child.stdin.flush()
        restored = _next(events)
        assert restored == {**restored, "event": "restored", "size": len(plain)}
        assert _fresh(path) == {"read": "ok", "write": "ok"}
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
        child.stdin.close()
        child.stdout.close()


def test_destroyed_key_stops_everything_for_good(isolated_cmkfs_home, tmp_path):
    LocalVaultProvider().create("drill")
    path = tmp_path / "data.cmk"
    with open(path, "wb") as sink, EncryptingWriter(sink, KeyCache("local://drill", ttl=60), segment_size=SEG) as w:
        w.write(os.urandom(3 * SEG))
    destroyed = _cmkfs("keys", "destroy", "drill", "--yes")
    assert destroyed.returncode == 0, destroyed.stderr
    assert _fresh(path) == {"read": "refused", "write": "refused"}
    assert _cmkfs("keys", "enable", "drill").returncode == 4
