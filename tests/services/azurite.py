"""Azurite (the Azure Storage emulator) as a pytest plugin.

The session-scoped ``azurite`` fixture starts ``azurite-blob`` on 127.0.0.1
on a free port with in-memory persistence and stops it at the end of the
session.  The npm package is looked up, in order, at:

* ``$CMKFS_AZURITE_BIN`` (the path of an ``azurite-blob`` executable);
* the test cache, ``${XDG_CACHE_HOME:-~/.cache}/cmkfs-test/azurite-3.35.0``;

and installed into the test cache with ``npm`` when missing (about 40 s,
once).  Without Node.js/npm the fixture fails with a message saying what
to install: an integration test that did not run is not a pass.

``abfs`` gives each test an adlfs ``AzureBlobFileSystem`` over a fresh
container (``abfs_container`` names it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

AZURITE_VERSION = "3.35.0"
ACCOUNT_NAME = "devstoreaccount1"
# The emulator's published, well-known development key (not a secret).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
START_TIMEOUT = 30.0
INSTALL_TIMEOUT = 600.0


def pytest_configure(config):
    config.addinivalue_line("markers", "azurite: needs the Azurite blob emulator (started automatically)")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cmkfs-test" / f"azurite-{AZURITE_VERSION}"


def _installed_bin(root: Path) -> Path | None:
    candidate = root / "node_modules" / ".bin" / "azurite-blob"
    return candidate if candidate.exists() else None


def find_or_install_azurite() -> Path:
    """The ``azurite-blob`` executable, installing the npm package if needed."""
    explicit = os.environ.get("CMKFS_AZURITE_BIN")
    if explicit:
        if not os.access(explicit, os.X_OK):
            pytest.fail(f"CMKFS_AZURITE_BIN={explicit!r} is not an executable azurite-blob")
        return Path(explicit)
    root = cache_dir()
    found = _installed_bin(root)
    if found:
        return found
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.fail(
            "Azurite is needed for the Azure Blob tests and is not installed: install Node.js >= 18 "
            f"with npm (the tests then install azurite@{AZURITE_VERSION} into {root}), or set "
            "CMKFS_AZURITE_BIN to an azurite-blob executable"
        )
    root.mkdir(parents=True, exist_ok=True)
    # A lock, so parallel test processes install once.
    with open(root.parent / f".azurite-{AZURITE_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _installed_bin(root)
        if found:
            return found
        try:
            result = subprocess.run(
                [
                    npm,
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                    "--prefix",
                    str(root),
                    f"azurite@{AZURITE_VERSION}",
                ],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"npm install azurite@{AZURITE_VERSION} did not finish within {INSTALL_TIMEOUT:.0f} s")
        found = _installed_bin(root)
        if result.returncode != 0 or found is None:
            pytest.fail(
                f"npm install azurite@{AZURITE_VERSION} into {root} failed (exit {result.returncode}):\n"
                + result.stderr[-2000:]
            )
        return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Azurite:
    """A running Azurite blob service and how to reach it."""

    port: int
    process: subprocess.Popen = field(repr=False)
    log_path: Path
    host: str = "127.0.0.1"
    account_name: str = ACCOUNT_NAME
    account_key: str = field(default=ACCOUNT_KEY, repr=False)

    @property
    def blob_endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/{self.account_name}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account_name};"
            f"AccountKey={self.account_key};BlobEndpoint={self.blob_endpoint};"
        )

    @property
    def storage_options(self) -> dict:
        """adlfs options: ``abfs={...}`` in a chained URL's storage_options."""
        return {"connection_string": self.connection_string}

    def service_client(self):
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)

    def new_container(self, prefix: str = "t") -> str:
        """Create an empty container with a unique name and return the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:20]}".lower()[:63]
        with self.service_client() as client:
            client.create_container(name)
        return name

    def delete_container(self, name: str) -> None:
        with self.service_client() as client, contextlib.suppress(Exception):
            client.delete_container(name)

    def log_tail(self, limit: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""


def start_azurite(executable: Path, workdir: Path) -> Azurite:
    """Start azurite-blob on a free port; retry on the rare port race."""
    last_log = ""
    for _attempt in range(3):
        port = _free_port()
        log_path = workdir / f"azurite-{port}.log"
        cmd = [
            str(executable),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--inMemoryPersistence",  # (refused together with --location)
            "--skipApiVersionCheck",  # the SDK speaks a newer API version than the emulator knows
            "--disableTelemetry",
            "--silent",
            "--loose",
        ]
        log = open(log_path, "wb")  # noqa: SIM115 - the server writes to it for the whole session
        process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir, start_new_session=True
        )
        log.close()
        service = Azurite(port=port, process=process, log_path=log_path)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            if _accepts(port):
                return service
            time.sleep(0.1)
        exited = process.poll()
        last_log = service.log_tail()
        stop_azurite(service)
        if exited is not None and "EADDRINUSE" not in last_log:
            break  # a real failure, not the port race: do not retry
    pytest.fail(
        f"Azurite ({executable}) did not start listening on 127.0.0.1 within {START_TIMEOUT:.0f} s; "
        f"its output:\n{last_log}"
    )


def stop_azurite(service: Azurite) -> None:
    process = service.process
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    """A running Azurite blob service for the whole session."""
    executable = find_or_install_azurite()
    service = start_azurite(executable, tmp_path_factory.mktemp("azurite"))
    try:
        yield service
    finally:
        stop_azurite(service)


@pytest.fixture
def abfs_container(azurite):
    """A fresh, empty container for one test (deleted afterwards)."""
    name = azurite.new_container()
    yield name
    azurite.delete_container(name)


@pytest.fixture
def abfs(azurite, abfs_container):
    """An adlfs AzureBlobFileSystem over Azurite; ``abfs_container`` is empty and this test's own."""
    from adlfs import AzureBlobFileSystem

    fs = AzureBlobFileSystem(connection_string=azurite.connection_string, skip_instance_cache=True)
    yield fs
