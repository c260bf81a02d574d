"""Vault calls and wall time for many small-file writes, warm key cache vs cold, per provider.

A refresh job that writes 10,000 rendered images must not make 10,000 vault
calls: the key cache reuses one data key for many files (each file still
derives its own key) until the TTL or the per-DEK file limit.  This runs,
for each key provider that can run here:

* ``local://``   the embedded vault in a temporary ``$CMKFS_HOME``;
* ``https://``   Azure Key Vault's REST protocol, served by the project's
  HTTPS test server on 127.0.0.1 (the same one the tests use), RSA-2048;
* ``pkcs11:``    a SoftHSM2 token initialised in a temporary directory.

and writes (then reads) small encrypted files through the streaming engine
with a warm cache (default TTL) and a cold one (``ttl=0``: every file asks the
vault: a write asks once to wrap and once more at its first segment, a
read once at open and once per later segment fetch, since a zero TTL
means "confirm on every use").  The cold run uses fewer files, since each costs a vault round trip;
rates are per file so the two compare.

Usage::

    python benchmarks/bench_keys.py            # 10,000 warm files, 1,000 cold
    python benchmarks/bench_keys.py --quick
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import environment, save_json, table
from cmkfs.keycache import KeyCache
from cmkfs.stream import BytesSource, DecryptingReader, EncryptingWriter

FILE_SIZE = 50_000  # a rendered report image


class _Collect:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        return len(data)


def _local(tmp: Path):
    from cmkfs.providers.local import LocalVaultProvider

    provider = LocalVaultProvider(home=tmp / "home")
    provider.create("bench")
    return "local://bench", provider, lambda: None


def _azure(tmp: Path):
    from cmkfs.providers.azure_keyvault import AzureKeyVaultProvider
    from tests.services.kv_server import KeyVaultServer

    server = KeyVaultServer(tmp)
    server.start()
    server.create_key("bench", 2048)
    provider = AzureKeyVaultProvider(**server.provider_options())
    return server.key_uri("bench"), provider, server.stop


def _pkcs11(tmp: Path):
    module = os.environ.get("CMKFS_PKCS11_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
    util = shutil.which("softhsm2-util")
    if not os.path.isfile(module) or util is None:
        raise RuntimeError("SoftHSM2 is not installed (apt-get install -y softhsm2)")
    tokens = tmp / "tokens"
    tokens.mkdir()
    conf = tmp / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    pin = os.urandom(8).hex()
    subprocess.run(
        [
            util,
            "--module",
            module,
            "--init-token",
            "--free",
            "--label",
            "bench",
            "--so-pin",
            os.urandom(8).hex(),
            "--pin",
            pin,
        ],
        check=True,
        capture_output=True,
    )
    from cmkfs.providers.pkcs11 import PKCS11Provider

    provider = PKCS11Provider(module=module, pin=pin)
    provider.create_key("bench", "kek")
    return "pkcs11:token=bench;object=kek", provider, provider.close


PROVIDERS = {"local://": _local, "https:// (Key Vault REST, test server)": _azure, "pkcs11: (SoftHSM2)": _pkcs11}


def run(key_uri: str, provider, files: int, ttl: float) -> tuple[float, int, float, int]:
    """Write then read ``files`` small files; return (write s, write calls, read s, read calls)."""
    payload = os.urandom(FILE_SIZE)
    cache = KeyCache(key_uri, ttl=ttl, providers=lambda _uri: provider)
    blobs = []
    t0 = time.perf_counter()
    for _ in range(files):
        sink = _Collect()
        with EncryptingWriter(sink, cache, threads=1) as writer:
            writer.write(payload)
        blobs.append(b"".join(sink.parts))
    write_s = time.perf_counter() - t0
    write_calls = cache.vault_calls
    # A read-only cache trusts no remote vault by itself: name the writer's.
    trusted = [key_uri] if key_uri.startswith("https://") else None
    reader_cache = KeyCache(None, ttl=ttl, providers=lambda _uri: provider, trusted_vaults=trusted)
    t0 = time.perf_counter()
    for blob in blobs:
        with DecryptingReader(BytesSource(blob), reader_cache, threads=1) as reader:
            if reader.read(0, -1) != payload:
                raise AssertionError("round trip failed")
    read_s = time.perf_counter() - t0
    cache.close()
    reader_cache.close()
    return write_s, write_calls, read_s, reader_cache.vault_calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few files: a smoke run")
    parser.add_argument("--files", type=int, default=None, help="files per warm run (default 10,000)")
    parser.add_argument("--cold-files", type=int, default=None, help="files per cold run (default 1,000)")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    warm_n = args.files or (300 if args.quick else 10_000)
    cold_n = args.cold_files or (50 if args.quick else 1_000)

    rows, results = [], {"environment": environment(), "warm_files": warm_n, "cold_files": cold_n, "rows": []}
    for name, setup in PROVIDERS.items():
        with tempfile.TemporaryDirectory(prefix="cmkfs-bench-keys-") as tmp:
            try:
                key_uri, provider, stop = setup(Path(tmp))
            except Exception as exc:  # noqa: BLE001 - report and go on with the other providers
                print(f"{name}: not measured ({type(exc).__name__}: {exc})")
                continue
            try:
                run(key_uri, provider, 50, 900.0)  # warm-up: imports, thread pool, first connections
                for label, n, ttl in (("warm (ttl 900 s)", warm_n, 900.0), ("cold (ttl 0)", cold_n, 0.0)):
                    w_s, w_calls, r_s, r_calls = run(key_uri, provider, n, ttl)
                    row = [name, label, n, w_calls, n / w_s, r_calls, n / r_s]
                    rows.append(row)
                    results["rows"].append(
                        dict(
                            zip(
                                [
                                    "provider",
                                    "cache",
                                    "files",
                                    "write_vault_calls",
                                    "write_files_per_s",
                                    "read_vault_calls",
                                    "read_files_per_s",
                                ],
                                row,
                                strict=False,
                            )
                        )
                    )
            finally:
                stop()
    print(f"\nSmall files ({FILE_SIZE // 1000} KB each) through the engine: vault calls and files/s")
    print(table(["provider", "cache", "files", "write calls", "writes/s", "read calls", "reads/s"], rows))
    if args.json:
        save_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
