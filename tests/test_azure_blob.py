"""Azure Blob targets against a real Azurite (started by tests/services/azurite.py).

The sink and source are exercised directly with the streaming engine, and
then through the ``cmk`` filesystem (``cmk::abfs://...``).
"""

from __future__ import annotations

import errno
import importlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from cmkfs import targets
from cmkfs.errors import ConfigurationError, IntegrityError
from cmkfs.format import DEFAULT_SEGMENT_SIZE, TAG_SIZE, ContentClass
from cmkfs.keycache import KeyCache
from cmkfs.providers.local import LocalVaultProvider
from cmkfs.stream import DecryptingReader, EncryptingWriter, read_header
from cmkfs.targets import azure as targets_azure
from cmkfs.targets.azure import AzureBlobSink, AzureBlobSource, blob_metadata, set_blob_metadata
from tests.markers import needs_pandas_chained_urls

pytestmark = [pytest.mark.azurite, pytest.mark.timeout(120)]

KEY_NAME = "azure-test"
SMALL_BLOCK = 64 * 1024  # forces many staged blocks with small files


@pytest.fixture
def vault(isolated_cmkfs_home):
    provider = LocalVaultProvider(isolated_cmkfs_home)
    provider.create(KEY_NAME)
    return provider


@pytest.fixture
def keys(vault):
    return KeyCache(f"local://{KEY_NAME}", providers=lambda uri: vault)


def encrypt_to(sink, keys, data: bytes, *, step: int = 100_003, **kwargs):
    with EncryptingWriter(sink, keys, threads=1, **kwargs) as writer:
        for pos in range(0, len(data), step):
            writer.write(data[pos : pos + step])
    return writer


def decrypt_from(fs, path, keys, **kwargs):
    with AzureBlobSource(fs, path, **kwargs) as source, DecryptingReader(source, keys, threads=1) as reader:
        return reader.read(0, -1)


def read_blob_header(fs, path):
    source = targets.open_range_source(fs, path)
    try:
        return read_header(source)
    finally:
        source.close()


def blob_bytes(azurite, container, name) -> bytes:
    with azurite.service_client() as client:
        return client.get_blob_client(container, name).download_blob().readall()


def uncommitted_blocks(azurite, container, name) -> list:
    with azurite.service_client() as client:
        _, uncommitted = client.get_blob_client(container, name).get_block_list("uncommitted")
        return uncommitted


# -- the sink ----------------------------------------------------------------


def test_commit_publishes_blob_with_metadata(abfs, abfs_container, keys, azurite):
    path = f"{abfs_container}/dir/data.bin"
    data = os.urandom(700_000)
    sink = AzureBlobSink(abfs, path, {"origin": "test"}, block_size=SMALL_BLOCK)
    writer = encrypt_to(sink, keys, data, segment_size=64 * 1024, content_class=ContentClass.PARQUET)
    assert sink.bytes_written > 10 * SMALL_BLOCK
    assert not abfs.exists(path)  # staged, not visible
    assert len(uncommitted_blocks(azurite, abfs_container, "dir/data.bin")) >= 10
    sink.commit()

    abfs.invalidate_cache()
    assert abfs.info(path)["size"] == sink.bytes_written
    meta = blob_metadata(abfs, path)
    header = writer.header
    assert meta == {
        "cmkfs_format": 1,
        "cmkfs_key_uri": f"local://{KEY_NAME}",
        "cmkfs_key_version": header.key_block.key_version,
        "cmkfs_plaintext_size": len(data),
        "cmkfs_segment_size": 64 * 1024,
        "cmkfs_header_length": header.length,
        "cmkfs_content_class": "parquet",
    }
    assert abfs.info(path)["metadata"]["origin"] == "test"
    assert read_blob_header(abfs, path) == header
    assert decrypt_from(abfs, path, keys) == data
    # Nothing the metadata says is secret: no key bytes, only names.
    assert all(len(str(v)) < 200 for v in meta.values())


@pytest.mark.parametrize("size", [0, 1, DEFAULT_SEGMENT_SIZE + 1])
def test_boundary_sizes_round_trip(abfs, abfs_container, keys, size):
    path = f"{abfs_container}/sized-{size}"
    data = os.urandom(size)
    sink = AzureBlobSink(abfs, path)
    encrypt_to(sink, keys, data)
    sink.commit()
    assert blob_metadata(abfs, path)["cmkfs_plaintext_size"] == size
    assert decrypt_from(abfs, path, keys) == data


def test_discard_leaves_nothing_and_keeps_previous_version(abfs, abfs_container, keys, azurite):
    path = f"{abfs_container}/kept.bin"
    old = os.urandom(300_000)
    sink = AzureBlobSink(abfs, path)
    encrypt_to(sink, keys, old)
    sink.commit()
    committed = blob_bytes(azurite, abfs_container, "kept.bin")

    replacement = AzureBlobSink(abfs, path, block_size=SMALL_BLOCK)
    encrypt_to(replacement, keys, os.urandom(1_000_000))
    assert uncommitted_blocks(azurite, abfs_container, "kept.bin")  # really staged
    replacement.discard()
    replacement.discard()  # idempotent
    with pytest.raises(ValueError):
        replacement.write(b"x")
    assert blob_bytes(azurite, abfs_container, "kept.bin") == committed
    assert decrypt_from(abfs, path, keys) == old

    fresh = AzureBlobSink(abfs, f"{abfs_container}/never.bin", block_size=SMALL_BLOCK)
    encrypt_to(fresh, keys, os.urandom(500_000))
    fresh.discard()
    abfs.invalidate_cache()
    assert not abfs.exists(f"{abfs_container}/never.bin")
    assert abfs.ls(abfs_container, detail=False) == [path]


def test_zero_bytes_commit_an_empty_blob(abfs, abfs_container):
    sink = AzureBlobSink(abfs, f"{abfs_container}/empty")
    sink.commit()  # not a cmkfs stream: no cmkfs metadata, but still atomic
    assert abfs.cat_file(f"{abfs_container}/empty") == b""
    assert blob_metadata(abfs, f"{abfs_container}/empty") == {}


def test_engine_abort_mid_stream_commits_nothing(abfs, abfs_container, keys):
    path = f"{abfs_container}/aborted.bin"
    sink = AzureBlobSink(abfs, path, block_size=SMALL_BLOCK)
    with pytest.raises(RuntimeError):
        with EncryptingWriter(sink, keys, threads=1) as writer:
            writer.write(os.urandom(400_000))
            raise RuntimeError("producer failed")
    sink.discard()
    assert not abfs.exists(path)


def test_exclusive_create(abfs, abfs_container, keys):
    path = f"{abfs_container}/once.bin"
    first = AzureBlobSink(abfs, path, exclusive=True)
    racer = AzureBlobSink(abfs, path, exclusive=True)  # both pass the courtesy check
    encrypt_to(first, keys, b"first")
    encrypt_to(racer, keys, b"second")
    first.commit()
    with pytest.raises(FileExistsError):
        racer.commit()  # If-None-Match: * at commit decides
    with pytest.raises(FileExistsError):
        AzureBlobSink(abfs, path, exclusive=True)
    assert decrypt_from(abfs, path, keys) == b"first"


def test_missing_container_is_file_not_found(abfs, keys):
    sink = AzureBlobSink(abfs, "no-such-container-x1/file.bin")
    encrypt_to(sink, keys, b"data")
    with pytest.raises(FileNotFoundError) as info:
        sink.commit()
    # Service error code and path only: never the account, key or request URL.
    assert "ContainerNotFound" in str(info.value)
    assert "AccountKey" not in str(info.value) and "127.0.0.1" not in str(info.value)
    assert "AccountKey" not in repr(sink)
    with pytest.raises(FileNotFoundError):
        AzureBlobSource(abfs, "no-such-container-x1/file.bin")
    with pytest.raises(IsADirectoryError):
        AzureBlobSink(abfs, "just-a-container")


def _sdk_error(kind: str, code: str | None = None, status: int | None = None):
    from azure.core import exceptions

    exc = getattr(exceptions, kind)("https://acct.blob.core.windows.net/c/b?sig=SECRET")
    exc.error_code, exc.status_code = code, status
    return exc


@pytest.mark.parametrize(
    ("kind", "code", "status", "writing", "expected", "err", "message"),
    [
        (
            "ResourceNotFoundError",
            "BlobNotFound",
            404,
            False,
            FileNotFoundError,
            errno.ENOENT,
            "no such blob or container (BlobNotFound)",
        ),
        ("HttpResponseError", None, 404, False, FileNotFoundError, errno.ENOENT, "no such blob or container (404)"),
        (
            "ResourceExistsError",
            "BlobAlreadyExists",
            409,
            False,
            FileExistsError,
            errno.EEXIST,
            "blob exists (BlobAlreadyExists)",
        ),
        (
            "ResourceExistsError",
            "LeaseIdMissing",
            409,
            True,
            FileExistsError,
            errno.EEXIST,
            "blob exists (LeaseIdMissing)",
        ),
        (
            "ResourceExistsError",
            "LeaseIdMissing",
            409,
            False,
            OSError,
            errno.EIO,
            "Azure Storage request failed (LeaseIdMissing)",
        ),
        (
            "ResourceModifiedError",
            "ConditionNotMet",
            412,
            True,
            FileExistsError,
            errno.EEXIST,
            "blob exists (create-only write)",
        ),
        (
            "ResourceModifiedError",
            "ConditionNotMet",
            412,
            False,
            OSError,
            errno.ESTALE,
            "the blob was replaced while it was being read; open it again",
        ),
        (
            "ClientAuthenticationError",
            "AuthenticationFailed",
            403,
            False,
            PermissionError,
            errno.EACCES,
            "access denied by Azure Storage (AuthenticationFailed)",
        ),
        (
            "HttpResponseError",
            "InvalidBlockList",
            400,
            True,
            OSError,
            errno.EBUSY,
            "another writer committed this blob first; nothing was written",
        ),
        (
            "HttpResponseError",
            "InvalidHeaderValue",
            400,
            True,
            OSError,
            errno.EIO,
            "Azure Storage request failed (InvalidHeaderValue)",
        ),
        ("ServiceRequestError", None, None, False, ConnectionError, errno.ECONNREFUSED, "cannot reach Azure Storage"),
        ("ServiceResponseError", None, None, True, ConnectionError, errno.ECONNREFUSED, "cannot reach Azure Storage"),
        ("AzureError", None, None, False, OSError, errno.EIO, "Azure Storage request failed (AzureError)"),
    ],
)
def test_sdk_errors_become_builtins(kind, code, status, writing, expected, err, message):
    original = _sdk_error(kind, code, status)
    with pytest.raises(OSError) as info, targets_azure._storage_errors("c/b", writing=writing):
        raise original
    assert type(info.value) is expected
    assert (info.value.errno, info.value.strerror, info.value.filename) == (err, message, "c/b")
    assert info.value.__cause__ is original
    assert "SECRET" not in str(info.value)  # SDK messages can quote a SAS token: never copied


def test_sdk_range_error_is_an_integrity_error_and_others_pass_through():
    with pytest.raises(IntegrityError), targets_azure._storage_errors("c/b"):
        raise _sdk_error("HttpResponseError", "InvalidRange", 416)
    plain = KeyError("not from the SDK")
    with pytest.raises(KeyError) as info, targets_azure._storage_errors("c/b"):
        raise plain
    assert info.value is plain


def test_killed_writer_leaves_previous_blob(abfs, abfs_container, keys, azurite, isolated_cmkfs_home):
    path = f"{abfs_container}/crash.bin"
    old = os.urandom(200_000)
    sink = AzureBlobSink(abfs, path)
    encrypt_to(sink, keys, old)
    sink.commit()
    committed = blob_bytes(azurite, abfs_container, "crash.bin")

    child = textwrap.dedent(
        """
        import os, sys, time
        from adlfs import AzureBlobFileSystem
        from cmkfs.keycache import KeyCache
        from cmkfs.providers.local import LocalVaultProvider
        from cmkfs.stream import EncryptingWriter
        from cmkfs.targets.azure import AzureBlobSink

        vault = LocalVaultProvider(os.environ["CMKFS_HOME"])
        keys = KeyCache(sys.argv[3], providers=lambda uri: vault)
        fs = AzureBlobFileSystem(connection_string=sys.argv[1])
        sink = AzureBlobSink(fs, sys.argv[2], block_size=64 * 1024)
        writer = EncryptingWriter(sink, keys, threads=1)
        writer.write(os.urandom(2_000_000))
        while sink._pending:
            sink._wait_one()
        print("staged", flush=True)
        time.sleep(60)
        """
    )
    env = dict(os.environ, CMKFS_HOME=str(isolated_cmkfs_home))
    proc = subprocess.Popen(
        [sys.executable, "-c", child, azurite.connection_string, path, f"local://{KEY_NAME}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "staged", proc.stderr.read() if proc.poll() is not None else line
        assert len(uncommitted_blocks(azurite, abfs_container, "crash.bin")) >= 20
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert blob_bytes(azurite, abfs_container, "crash.bin") == committed
    assert decrypt_from(abfs, path, keys) == old


# -- the source --------------------------------------------------------------


@pytest.fixture
def big_blob(abfs, abfs_container, keys):
    path = f"{abfs_container}/big.bin"
    data = os.urandom(20 * 1024 * 1024)
    sink = AzureBlobSink(abfs, path)
    writer = encrypt_to(sink, keys, data, step=4 * 1024 * 1024)
    sink.commit()
    return path, data, writer.header.length


def test_range_reads_fetch_only_what_they_need(abfs, keys, big_blob):
    path, data, header_len = big_blob
    seg_ct = DEFAULT_SEGMENT_SIZE + TAG_SIZE
    source = AzureBlobSource(abfs, path)
    assert source.size == abfs.info(path)["size"]
    with DecryptingReader(source, keys, threads=1) as reader:
        assert reader.read(len(data) - 100, 100) == data[-100:]
        assert source.bytes_fetched < 2 * seg_ct + header_len
        before = source.bytes_fetched
        middle = 10 * 1024 * 1024 + 12345
        assert reader.read(middle, 100) == data[middle : middle + 100]
        assert source.bytes_fetched - before == seg_ct  # exactly the one segment
    assert source.requests <= 4  # properties, header probe, final segment, middle segment


def test_source_with_listed_size_and_adlfs_client(abfs, keys, big_blob):
    path, data, _ = big_blob
    size = abfs.info(path)["size"]
    for use_adlfs in (False, True):
        source = AzureBlobSource(abfs, path, size=size, use_adlfs_client=use_adlfs)
        assert source.requests == 0  # the listed size saves the properties request
        with DecryptingReader(source, keys, threads=1) as reader:
            assert reader.read(5_000_000, 1_000_000) == data[5_000_000:6_000_000]


def test_replaced_blob_is_not_mixed_into_a_read(abfs, abfs_container, keys):
    path = f"{abfs_container}/swap.bin"
    for content in (b"a" * 600_000, b"b" * 600_000):
        sink = AzureBlobSink(abfs, path)
        encrypt_to(sink, keys, content, segment_size=64 * 1024)
        if content[:1] == b"a":
            sink.commit()
            source = AzureBlobSource(abfs, path)
            reader = DecryptingReader(source, keys, threads=1)
            assert reader.read(0, 10) == b"a" * 10
        else:
            sink.commit()
    with pytest.raises(OSError) as info:
        reader.read(300_000, 10)
    assert info.value.errno == errno.ESTALE
    reader.close()


def test_adlfs_client_sink(abfs, abfs_container, keys):
    path = f"{abfs_container}/via-adlfs.bin"
    data = os.urandom(300_000)
    sink = AzureBlobSink(abfs, path, block_size=SMALL_BLOCK, use_adlfs_client=True)
    encrypt_to(sink, keys, data)
    sink.commit()
    assert blob_metadata(abfs, path)["cmkfs_plaintext_size"] == len(data)
    assert decrypt_from(abfs, path, keys, use_adlfs_client=True) == data


def test_header_helpers_and_metadata_rewrite(abfs, abfs_container, keys, vault):
    path = f"{abfs_container}/hdr.bin"
    sink = AzureBlobSink(abfs, path, {"owner": "finance"})
    header = encrypt_to(sink, keys, os.urandom(100_000)).header
    sink.commit()
    source = AzureBlobSource(abfs, path)
    assert read_header(source) == header
    assert source.requests == 2 and source.bytes_fetched <= 4096  # properties, one ranged GET of the header

    new_version = vault.rotate(KEY_NAME)
    rewrapped = header.with_key_block(vault.wrap(f"local://{KEY_NAME}", bytes(32)))
    set_blob_metadata(abfs, path, rewrapped)
    meta = blob_metadata(abfs, path)
    assert meta["cmkfs_key_version"] == new_version
    assert abfs.info(path)["metadata"]["owner"] == "finance"  # other entries kept


def test_deprecated_module_still_works(abfs, abfs_container, keys):
    with pytest.warns(DeprecationWarning, match="cmkfs.targets.azure"):
        import cmkfs.targets_azure

        old = importlib.reload(cmkfs.targets_azure)  # warns again when an earlier test imported it
    assert old.AzureBlobSink is AzureBlobSink and old.blob_metadata is blob_metadata
    path = f"{abfs_container}/old-api.bin"
    sink = AzureBlobSink(abfs, path)
    header = encrypt_to(sink, keys, b"data").header
    sink.commit()
    assert old.read_blob_header(abfs, path) == header
    assert old.read_header_range(abfs, path) == header.encode()


def test_registered_for_adlfs_protocols(abfs, abfs_container, keys):
    path = f"{abfs_container}/registered.bin"
    sink = targets.open_atomic_sink(abfs, path)
    assert isinstance(sink, AzureBlobSink)
    encrypt_to(sink, keys, b"hello")
    sink.commit()
    source = targets.open_range_source(abfs, path)
    assert isinstance(source, AzureBlobSource)
    with DecryptingReader(source, keys, threads=1) as reader:
        assert reader.read() == b"hello"
    assert set(targets_azure.PROTOCOLS) <= set(targets._SINKS)


# -- through the cmk filesystem ------------------------------------------------


@pytest.fixture
def cmk_key(isolated_cmkfs_home):
    # A name of its own per test: CMKFileSystem instances are cached by options.
    name = f"az-{os.urandom(4).hex()}"
    LocalVaultProvider().create(name)
    return f"local://{name}"


@pytest.fixture
def cmkfs(azurite, cmk_key):
    import fsspec

    return fsspec.filesystem(
        "cmk", target_protocol="abfs", target_options=azurite.storage_options, key=cmk_key, skip_instance_cache=True
    )


def test_url_round_trip(azurite, abfs_container, cmk_key):
    import fsspec

    from cmkfs.format import MAGIC

    url = f"cmk::abfs://{abfs_container}/reports/q1.bin"
    options = {"abfs": azurite.storage_options, "cmk": {"key": cmk_key}}
    data = b"quarterly numbers " * 50_000
    with fsspec.open(url, "wb", **options) as f:
        f.write(data)
    with fsspec.open(url, "rb", **options) as f:
        assert f.read() == data
    raw = blob_bytes(azurite, abfs_container, "reports/q1.bin")
    assert raw.startswith(MAGIC) and b"quarterly" not in raw
    assert blob_metadata_via_url(azurite, abfs_container, "reports/q1.bin")["cmkfs_key_uri"] == cmk_key


def blob_metadata_via_url(azurite, container, name) -> dict:
    with azurite.service_client() as client:
        props = client.get_blob_client(container, name).get_blob_properties()
    return targets_azure.decode_metadata(props.metadata)


def test_filesystem_ls_info_sizes_exact(cmkfs, abfs_container):
    sizes = [
        0,
        1,
        DEFAULT_SEGMENT_SIZE - 1,
        DEFAULT_SEGMENT_SIZE,
        DEFAULT_SEGMENT_SIZE + 1,
        2 * DEFAULT_SEGMENT_SIZE + 500,
    ]
    payloads = {f"{abfs_container}/d/f{n}": os.urandom(n) for n in sizes}
    for path, data in payloads.items():
        cmkfs.pipe_file(path, data)
    listed = {e["name"]: e for e in cmkfs.ls(f"{abfs_container}/d", detail=True)}
    assert {name: e["size"] for name, e in listed.items()} == {p: len(d) for p, d in payloads.items()}
    assert all(e["encrypted"] for e in listed.values())
    for path, data in payloads.items():
        assert cmkfs.info(path)["size"] == len(data)
        assert cmkfs.cat_file(path) == data
        assert cmkfs.cat_file(path, start=-7) == data[-7:]
        assert blob_metadata(cmkfs.fs, path)["cmkfs_plaintext_size"] == len(data)
    assert blob_metadata(cmkfs.fs, f"{abfs_container}/d/f1")["cmkfs_content_class"] == "other"


def test_failed_write_commits_nothing(cmkfs, abfs_container, azurite):
    path = f"{abfs_container}/ledger.csv"
    cmkfs.pipe_file(path, b"id,amount\n1,10\n")
    before = blob_bytes(azurite, abfs_container, "ledger.csv")
    with pytest.raises(RuntimeError):
        with cmkfs.open(path, "wb") as f:
            f.write(os.urandom(9 * 1024 * 1024))  # more than two blocks staged
            raise RuntimeError("export failed")
    assert blob_bytes(azurite, abfs_container, "ledger.csv") == before
    with pytest.raises(RuntimeError):
        with cmkfs.open(f"{abfs_container}/new.csv", "wb") as f:
            f.write(b"partial")
            raise RuntimeError("export failed")
    cmkfs.invalidate_cache()
    assert not cmkfs.exists(f"{abfs_container}/new.csv")
    assert cmkfs.cat_file(path) == b"id,amount\n1,10\n"


def test_seek_to_end_reads_little(cmkfs, abfs_container):
    path = f"{abfs_container}/big.bin"
    data = os.urandom(20 * 1024 * 1024)
    cmkfs.pipe_file(path, data)
    with cmkfs.open(path, "rb") as f:
        f.seek(-100, 2)
        assert f.read() == data[-100:]
        fetched = f._source.bytes_fetched
    assert fetched < 2 * (DEFAULT_SEGMENT_SIZE + TAG_SIZE) + 4096


@needs_pandas_chained_urls
def test_pandas_parquet_round_trip_and_column_subset(azurite, abfs_container, cmk_key, cmkfs):
    np = pytest.importorskip("numpy")
    pd = pytest.importorskip("pandas")

    url = f"cmk::abfs://{abfs_container}/tables/wide.parquet"
    options = {"cmk": {"key": cmk_key}, "abfs": azurite.storage_options}
    rng = np.random.default_rng(7)
    df = pd.DataFrame({name: rng.random(300_000) for name in "abcdefgh"})
    df["label"] = [f"row-{i % 1000}" for i in range(len(df))]
    df.to_parquet(url, storage_options=options)

    back = pd.read_parquet(url, storage_options=options)
    pd.testing.assert_frame_equal(back, df)

    path = f"{abfs_container}/tables/wide.parquet"
    assert blob_metadata(cmkfs.fs, path)["cmkfs_content_class"] == "parquet"
    stored = cmkfs.fs.info(path)["size"]
    with cmkfs.open(path, "rb") as f:
        subset = pd.read_parquet(f, columns=["b"])
        fetched = f._source.bytes_fetched
    pd.testing.assert_frame_equal(subset, df[["b"]])
    # One float column of eight, plus the footer, segment rounding at both
    # ends of the column chunk and one segment of read-ahead: about a sixth.
    assert fetched < 0.3 * stored, (fetched, stored)


def test_concurrent_writers_never_mix(abfs, abfs_container, keys):
    path = f"{abfs_container}/race.bin"
    slow = AzureBlobSink(abfs, path, block_size=SMALL_BLOCK)
    fast = AzureBlobSink(abfs, path, block_size=SMALL_BLOCK)
    slow_data, fast_data = os.urandom(400_000), os.urandom(300_000)
    encrypt_to(slow, keys, slow_data)
    encrypt_to(fast, keys, fast_data)
    fast.commit()
    # The first commit dropped the slow writer's uncommitted blocks.
    with pytest.raises(OSError) as info:
        slow.commit()
    assert info.value.errno == errno.EBUSY
    assert decrypt_from(abfs, path, keys) == fast_data
    later = AzureBlobSink(abfs, path)
    encrypt_to(later, keys, slow_data)
    later.commit()  # writers that do not overlap: the last one wins
    assert decrypt_from(abfs, path, keys) == slow_data


# -- failing fast: the preflight before the first storage request --------------------------------

from tests.azure_isolation import closed_port, no_azure_credentials  # noqa: E402,F401 - closed_port; a fixture


def _account_fs(azurite, port=None, **options):
    from adlfs import AzureBlobFileSystem

    host = f"127.0.0.1:{port or azurite.port}"
    return AzureBlobFileSystem(
        account_name=azurite.account_name, account_host=host, skip_instance_cache=True, **options
    )


@pytest.mark.usefixtures("no_azure_credentials")
def test_no_credential_fails_within_seconds_in_one_line(azurite, abfs_container):
    fs = _account_fs(azurite)  # an account name and nothing to sign in with: DefaultAzureCredential
    start = time.monotonic()
    with pytest.raises(ConfigurationError) as info:
        targets.open_range_source(fs, f"{abfs_container}/data.bin")
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "\n" not in message and "Azure Storage account devstoreaccount1" in message
    assert "az login" in message and "AZURE_CLIENT_ID" in message


@pytest.mark.usefixtures("no_azure_credentials")
def test_no_credential_fails_fast_for_writers_too(azurite, abfs_container):
    fs = _account_fs(azurite)
    start = time.monotonic()
    with pytest.raises(ConfigurationError, match="could not get an Azure access token"):
        targets.open_atomic_sink(fs, f"{abfs_container}/data.bin")
    assert time.monotonic() - start < 10


@pytest.mark.usefixtures("no_azure_credentials")
def test_unreachable_account_fails_within_seconds(azurite):
    from adlfs import AzureBlobFileSystem

    elsewhere = azurite.connection_string.replace(f":{azurite.port}/", f":{closed_port()}/")
    fs = AzureBlobFileSystem(connection_string=elsewhere, skip_instance_cache=True)
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="cannot reach Azure Storage account devstoreaccount1") as info:
        targets.open_range_source(fs, "container/data.bin")
    assert time.monotonic() - start < 10
    assert info.value.filename == "container/data.bin"


@pytest.mark.usefixtures("no_azure_credentials")
def test_wrong_account_key_is_a_configuration_error(azurite, abfs_container):
    from adlfs import AzureBlobFileSystem

    wrong = azurite.connection_string.replace(azurite.account_key, "d3Jvbmcga2V5" * 8)
    fs = AzureBlobFileSystem(connection_string=wrong, skip_instance_cache=True)
    with pytest.raises(ConfigurationError, match="refused the credentials"):
        targets.open_range_source(fs, f"{abfs_container}/data.bin")


@pytest.mark.usefixtures("no_azure_credentials")
def test_no_account_at_all_says_how_to_name_one():
    with pytest.raises(ConfigurationError, match="set AZURE_STORAGE_ACCOUNT_NAME or pass abfs="):
        targets_azure.open_blob_filesystem("abfs")


@pytest.mark.usefixtures("no_azure_credentials")
def test_open_blob_filesystem_with_azurite_works(azurite, abfs_container, keys):
    fs = targets_azure.open_blob_filesystem("abfs", connection_string=azurite.connection_string)
    sink = targets.open_atomic_sink(fs, f"{abfs_container}/ok.bin")
    encrypt_to(sink, keys, b"rows" * 1000)
    sink.commit()
    assert decrypt_from(fs, f"{abfs_container}/ok.bin", keys) == b"rows" * 1000
