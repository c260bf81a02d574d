"""The one write contract: ``close()`` publishes, a failing ``with`` block or
garbage collection discards, ``commit()`` after a failure raises, and
``with fs.transaction:`` publishes every file of the block or none.

Wrappers cmkfs does not control (``io.TextIOWrapper``, pandas' handles)
close, and so publish, exactly as they would over a plain file: each such
case is checked against a plain memory file, and again inside a transaction,
where the previous version must survive."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import fsspec
import pandas as pd
import pyarrow.fs
import pytest
from fsspec.implementations.arrow import ArrowFSWrapper

from cmkfs.errors import CMKError
from cmkfs.files import WriteState
from cmkfs.filesystem import CMKFileSystem, TransactionError
from cmkfs.providers.local import LocalVaultProvider
from tests.markers import needs_pandas_chained_urls

PREVIOUS = b"PREVIOUS VERSION"


@pytest.fixture
def key(isolated_cmkfs_home):
    LocalVaultProvider().create("contract")
    return "local://contract"


@pytest.fixture
def fs(tmp_path, key):
    return CMKFileSystem(target_protocol="file", key=key, skip_instance_cache=True)


@pytest.fixture
def path(fs, tmp_path):
    p = str(tmp_path / "report.csv")
    fs.pipe_file(p, PREVIOUS)
    return p


def plain_outcome(job) -> bytes | None:
    """What ``job(url, storage_options)`` leaves on a plain memory file that held PREVIOUS."""
    mem = fsspec.filesystem("memory")
    mem.pipe_file("/contract-plain.csv", PREVIOUS)
    with contextlib.suppress(Exception):
        job("memory://contract-plain.csv", {})
    out = mem.cat_file("/contract-plain.csv") if mem.exists("/contract-plain.csv") else None
    mem.rm("/contract-plain.csv")
    return out


# -- the failure cases of the issue: plain-file behaviour, and atomic in a transaction ---------


def to_csv_bad_option(url, so):
    pd.DataFrame({"a": [1, 2]}).to_csv(url, compression={"method": "gzip", "no_such_option": 1}, storage_options=so)


def to_csv_zstd_missing(url, so):
    pd.DataFrame({"a": [1, 2]}).to_csv(url, compression="zstd", storage_options=so)


FAILING_JOBS = {"to_csv bad compression option": to_csv_bad_option, "to_csv zstd missing": to_csv_zstd_missing}


@needs_pandas_chained_urls
@pytest.mark.parametrize("name", sorted(FAILING_JOBS))
def test_failed_pandas_write_is_atomic_in_a_transaction(fs, path, key, name, monkeypatch):
    monkeypatch.setitem(sys.modules, "zstandard", None)  # "zstd without zstandard", whatever is installed
    job = FAILING_JOBS[name]
    url, so = f"cmk::file://{path}", {"cmk": {"key": key}}
    # Without a transaction cmk:// does what a plain file does.
    expected = plain_outcome(job)
    with pytest.raises(Exception):
        job(url, so)
    assert (fs.cat_file(path) if fs.exists(path) else None) == expected
    fs.pipe_file(path, PREVIOUS)
    # The documented recipe: the instance pandas will use, in a transaction.
    txfs, _ = fsspec.url_to_fs(url, **so)
    with pytest.raises(Exception) as failure:
        with txfs.transaction:
            job(url, so)
    assert not isinstance(failure.value, TransactionError)  # pandas' own error, not ours
    assert fs.cat_file(path) == PREVIOUS


def test_text_wrapper_cmkfs_does_not_control(fs, path):
    with pytest.raises(RuntimeError):
        with io.TextIOWrapper(fs.open(path, "wb")) as f:
            f.write("partial")
            raise RuntimeError
    assert fs.cat_file(path) == b"partial"  # closed, so published, as over a plain file
    fs.pipe_file(path, PREVIOUS)
    with pytest.raises(RuntimeError):
        with fs.transaction:
            with io.TextIOWrapper(fs.open(path, "wb")) as f:
                f.write("partial")
                raise RuntimeError
    assert fs.cat_file(path) == PREVIOUS


def test_close_after_a_handled_exception_publishes(fs, tmp_path):
    @contextlib.contextmanager
    def handled():
        try:
            yield
        except ZeroDivisionError:
            pass  # handled: the program goes on

    target = str(tmp_path / "kept")
    f = fs.open(target, "wb")
    f.write(b"keep me")
    with handled():
        _ = 1 / 0
    f.close()
    assert fs.cat_file(target) == b"keep me"

    class Cleanup:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            g = fs.open(str(tmp_path / "from-cleanup"), "wb")
            g.write(b"error report")
            g.close()  # an unrelated block's cleanup: its failure is not this file's

    with pytest.raises(KeyError):
        with Cleanup():
            raise KeyError
    assert fs.cat_file(str(tmp_path / "from-cleanup")) == b"error report"


# -- the writer's own contract ---------------------------------------------------------------


def test_failing_with_block_discards_and_close_publishes(fs, path):
    with pytest.raises(RuntimeError):
        with fs.open(path, "wb") as f:
            f.write(b"half")
            raise RuntimeError
    assert f.state is WriteState.DISCARDED and fs.cat_file(path) == PREVIOUS
    f = fs.open(path, "wb")
    f.write(b"new")
    f.close()
    assert f.state is WriteState.COMMITTED and fs.cat_file(path) == b"new"


def test_commit_or_close_after_a_failure_raises(fs, path):
    f = fs.open(path, "wb")
    with pytest.raises(TypeError):
        f.write("not bytes")  # refused before anything was sealed: the stream goes on
    assert f.state is WriteState.OPEN

    def broken(data):
        raise OSError("disk full")

    f._sink.write = broken  # the storage fails under a write that seals segments
    with pytest.raises(OSError):
        f.write(b"x" * 600_000)
    assert f.state is WriteState.FAILED
    with pytest.raises(ValueError, match="report.csv"):
        f.close()  # says so, never silently: the program believed it wrote the file
    with pytest.raises(ValueError, match="report.csv"):
        f.commit()
    with pytest.raises(OSError):  # a with block that swallowed nothing: the write's own error
        with fs.open(path, "wb") as g:
            g._sink.write = broken
            g.write(b"y" * 600_000)
    g = fs.open(path, "wb")
    g.write(b"dropped")
    g.discard()
    with pytest.raises(ValueError, match="discarded"):
        g.commit()
    assert fs.cat_file(path) == PREVIOUS


def test_autocommit_false_seals_and_waits(fs, path):
    f = fs.open(path, "wb", autocommit=False)
    f.write(b"sealed")
    f.close()
    assert f.state is WriteState.SEALED and fs.cat_file(path) == PREVIOUS
    f.commit()
    assert fs.cat_file(path) == b"sealed"
    g = fs.open(path, "wb", autocommit=False)
    g.write(b"forgotten")
    g.close()
    del g
    import gc
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    assert fs.cat_file(path) == b"sealed"  # a sealed file nobody commits is dropped, never published


# -- transactions ------------------------------------------------------------------------------


def test_transaction_publishes_all_or_nothing(fs, tmp_path):
    a, b, c = (str(tmp_path / n) for n in "abc")
    fs.pipe_file(a, b"old a")
    with fs.transaction:
        fs.pipe_file(a, b"new a")
        with fs.open(b, "w") as f:
            f.write("new b")
        with fs.open(c, "wb", compression="gzip") as g:
            g.write(b"new c")
        assert fs.cat_file(a) == b"old a" and not fs.exists(b)  # nothing visible before the end
    assert fs.cat_file(a) == b"new a" and fs.cat_file(b) == b"new b"
    with fs.open(c, "rb", compression="gzip") as g:
        assert g.read() == b"new c"


def test_transaction_with_a_discarded_file_publishes_nothing(fs, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    fs.pipe_file(a, b"old a")
    with pytest.raises(TransactionError, match="discarded"):
        with fs.transaction:
            fs.pipe_file(a, b"new a")
            with contextlib.suppress(RuntimeError):
                with fs.open(b, "wb") as f:
                    f.write(b"half")
                    raise RuntimeError  # handled, but b was dropped
    assert fs.cat_file(a) == b"old a" and not fs.exists(b)
    with pytest.raises(TransactionError, match="still open"):
        with fs.transaction:
            fs.pipe_file(a, b"new a")
            unfinished = fs.open(b, "wb")
            unfinished.write(b"never closed")
    assert fs.cat_file(a) == b"old a" and not fs.exists(b)
    assert not fs._intrans  # the failed transaction ended: later writes publish at once
    fs.pipe_file(b, b"after")
    assert fs.cat_file(b) == b"after"


def test_start_and_end_transaction(fs, tmp_path):
    p = str(tmp_path / "p")
    fs.start_transaction()
    fs.pipe_file(p, b"deferred")
    assert not fs.exists(p)
    fs.end_transaction()
    assert fs.cat_file(p) == b"deferred"


def test_put_file_in_a_transaction_is_deferred(fs, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024))
    dest = str(tmp_path / "dest.bin")
    with pytest.raises(RuntimeError):
        with fs.transaction:
            fs.put_file(str(src), dest)
            raise RuntimeError
    assert not fs.exists(dest)
    with fs.transaction:
        fs.put_file(str(src), dest)
    assert fs.cat_file(dest) == src.read_bytes()


# -- interpreter exit, and no frame inspection ----------------------------------------------------


def test_writer_open_at_interpreter_exit_is_discarded(key, tmp_path, isolated_cmkfs_home):
    fs = CMKFileSystem(target_protocol="file", key=key, skip_instance_cache=True)
    p = str(tmp_path / "exit.txt")
    fs.pipe_file(p, PREVIOUS)
    child = textwrap.dedent(f"""
        import io
        from cmkfs.filesystem import CMKFileSystem
        fs = CMKFileSystem(target_protocol="file", key={key!r})
        # io.TextIOWrapper is not cmkfs's: its finaliser would close (publish) at exit.
        HELD = io.TextIOWrapper(fs.open({p!r}, "wb"))
        HELD.write("unfinished")
    """)
    env = {**os.environ, "CMKFS_HOME": str(isolated_cmkfs_home)}
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", child], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert fs.cat_file(p) == PREVIOUS


def test_no_behaviour_depends_on_the_call_stack():
    source = Path(__file__).parents[1] / "cmkfs"
    for module in source.rglob("*.py"):
        text = module.read_text(encoding="utf-8")
        for needle in ("_getframe", "f_back", "f_locals", "inspect.stack", "currentframe"):
            assert needle not in text, f"{module.name} uses {needle}"


def test_errors_are_cmk_errors():
    assert issubclass(TransactionError, CMKError)


# -- found in review: nesting, compressors that close their file, forks, exit ----------------


def test_nested_transactions_join_the_outermost(fs, tmp_path):
    a, b, c = (str(tmp_path / n) for n in "abc")
    fs.pipe_file(a, b"old a")

    def helper():
        with fs.transaction:  # a library function that makes its own writes atomic
            fs.pipe_file(b, b"new b")

    with pytest.raises(RuntimeError):
        with fs.transaction:
            fs.pipe_file(a, b"new a")
            helper()
            fs.pipe_file(c, b"new c")
            assert not fs.exists(b)  # the inner end did not publish
            raise RuntimeError
    assert fs.cat_file(a) == b"old a" and not fs.exists(b) and not fs.exists(c)
    with fs.transaction:
        fs.pipe_file(a, b"new a")
        helper()
        fs.pipe_file(c, b"new c")
    assert (fs.cat_file(a), fs.cat_file(b), fs.cat_file(c)) == (b"new a", b"new b", b"new c")


def test_a_failed_inner_block_dooms_the_transaction(fs, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    with pytest.raises(TransactionError, match="KeyError"):
        with fs.transaction:
            fs.pipe_file(a, b"a")
            with contextlib.suppress(KeyError):
                with fs.transaction:
                    fs.pipe_file(b, b"b")
                    raise KeyError
    assert not fs.exists(a) and not fs.exists(b)
    fs.start_transaction()
    fs.pipe_file(a, b"a")
    fs.start_transaction()  # joins
    fs.pipe_file(b, b"b")
    fs.end_transaction()
    assert not fs.exists(b)
    fs.end_transaction()
    assert fs.cat_file(a) == b"a" and fs.cat_file(b) == b"b"


def test_a_compressor_that_closes_its_file_cannot_publish(fs, path):
    pytest.importorskip("zstandard")
    with pytest.raises(RuntimeError):
        with fs.open(path, "wb", compression="zstd") as f:
            f.write(b"half of the new rows\n")
            raise RuntimeError
    assert fs.cat_file(path) == PREVIOUS
    f = fs.open(path, "wb", compression="zstd")
    f.write(b"unfinished, dropped by GC\n")
    del f
    import gc
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    assert fs.cat_file(path) == PREVIOUS
    with fs.open(path, "wb", compression="zstd") as f:
        f.write(b"complete")
    with fs.open(path, "rb", compression="zstd") as f:
        assert f.read() == b"complete"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_cannot_use_its_parents_writer(fs, path):
    f = fs.open(path, "wb")
    f.write(b"parent's data " * 1000)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            try:
                f.write(b"child")  # would reuse the parent's nonces under the same key
            except ValueError:
                f.discard()  # forgets its copy, never touches the parent's temp file
                code = 0 if f.state is WriteState.DISCARDED else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    f.write(b"and the rest")
    f.close()  # the parent's temp file is still there
    assert fs.cat_file(path) == b"parent's data " * 1000 + b"and the rest"


def test_a_log_handler_closed_at_exit_keeps_its_log(key, tmp_path, isolated_cmkfs_home):
    """logging closes its handlers from an atexit hook: a handler that owns its
    stream closes it there, and that close publishes, as over a plain file.  A
    stream nobody closes is still open when the interpreter tears down, and
    is discarded."""
    closed, unclosed = str(tmp_path / "closed.log"), str(tmp_path / "unclosed.log")
    child = textwrap.dedent(f"""
        import logging, sys
        from cmkfs.filesystem import CMKFileSystem

        class OwningHandler(logging.StreamHandler):  # closes its stream, as FileHandler does
            def close(self):
                self.flush()
                self.stream.close()
                super().close()

        fs = CMKFileSystem(target_protocol="file", key={key!r})
        log = logging.getLogger()
        log.addHandler(OwningHandler(fs.open({closed!r}, "w")))
        log.addHandler(logging.StreamHandler(fs.open({unclosed!r}, "w")))  # never closes its stream
        log.warning("refresh finished")
        sys.exit(0)
    """)
    env = {**os.environ, "CMKFS_HOME": str(isolated_cmkfs_home)}
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", child], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    fs = CMKFileSystem(target_protocol="file", key=key, skip_instance_cache=True)
    assert fs.cat_file(closed) == b"refresh finished\n"
    assert not fs.exists(unclosed)


class _UndeletableStore(ArrowFSWrapper):
    """Local disk through pyarrow (a target cmkfs writes through its generic sink) whose deletes
    fail, as an FTP server refusing DELE does (fault injection)."""

    def rm_file(self, path):
        raise PermissionError(13, "deletes are refused here", path)


@pytest.mark.parametrize("when", ["at open", "inside the with block"])
def test_a_failed_delete_of_the_partial_file_does_not_hide_why_the_write_failed(when, caplog, tmp_path):
    vault = LocalVaultProvider()
    key = vault.create("undeletable", protect=False).key_uri
    target = _UndeletableStore(pyarrow.fs.LocalFileSystem(), skip_instance_cache=True)
    fs = CMKFileSystem(fs=target, key=key, skip_instance_cache=True)
    (tmp_path / "w").mkdir()
    path = f"{tmp_path}/w/f.bin"
    if when == "at open":
        vault.disable("undeletable")
        with pytest.raises(CMKError) as raised:
            fs.open(path, "wb")
        assert type(raised.value).__name__ == "KeyRevokedError"
    else:
        with pytest.raises(ZeroDivisionError), fs.open(path, "wb") as f:
            f.write(b"x" * 10)
            1 / 0  # noqa: B018 - the caller's own failure
    assert "could not be removed (PermissionError)" in caplog.text
    # This target is written in place (docs/FILESYSTEM.md): what the failed delete leaves behind
    # must never read as a file, even with the key usable again.
    vault.enable("undeletable")
    if os.path.exists(path):
        with pytest.raises(CMKError):
            CMKFileSystem(target_protocol="file", key=key, skip_instance_cache=True).cat_file(path)
