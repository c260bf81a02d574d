"""Fail fast on Azure: check credentials and endpoints with short timeouts before the first real call.

Without a usable credential the Azure SDK retries for minutes (the storage pipeline backs off
four times around a ``DefaultAzureCredential`` that tries eight sources) and then raises a
traceback.  The Key Vault provider and the Azure Blob target call in here once per process per
(endpoint, credential) instead, and turn what is missing into one line:
:class:`~cmkfs.errors.ConfigurationError` when nothing here can sign in or the name is wrong,
:class:`~cmkfs.errors.VaultUnavailableError` when a vault cannot be reached.

It also builds credentials from option *names* (``"default"``, ``"cli"``, ``"environment"``,
``"managed_identity"``, ``"workload_identity"``): only strings and booleans travel in options,
because options end up in fsspec tokens and pickles.  docs/AZURE_KEY_VAULT.md and
docs/AZURE_BLOB.md describe both.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

from .errors import CMKError, ConfigurationError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

__all__ = [
    "CREDENTIAL_KINDS",
    "PREFLIGHT_TIMEOUT",
    "SLOW_PREFLIGHT_TIMEOUT",
    "CREDENTIAL_FIX",
    "STORAGE_ACCOUNT_FIX",
    "check_token",
    "check_reachable",
    "credential_hint",
    "make_credential",
    "once",
    "forget_checks",
    "options_of",
]

#: Seconds a check may take when no credential source is visible (only a managed identity endpoint
#: could still answer, and on an Azure VM it answers in well under a second).
PREFLIGHT_TIMEOUT = 5.0
#: Seconds when one is visible: ``az account get-access-token`` alone can take several seconds.
SLOW_PREFLIGHT_TIMEOUT = 30.0
CREDENTIAL_KINDS = ("default", "cli", "environment", "managed_identity", "workload_identity")
CREDENTIAL_FIX = (
    "sign in with `az login`, set AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET, "
    "or pass credential= (a credential object, or one of " + ", ".join(CREDENTIAL_KINDS) + ")"
)
STORAGE_ACCOUNT_FIX = (
    "set AZURE_STORAGE_ACCOUNT_NAME or pass abfs={'account_name': ...} "
    "(or a connection string: AZURE_STORAGE_CONNECTION_STRING or abfs={'connection_string': ...})"
)
_ENV_SECRET = ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_FEDERATED_TOKEN_FILE")
_ENV_IDENTITY = ("IDENTITY_ENDPOINT", "MSI_ENDPOINT")

_checked: dict[tuple[str, ...], object] = {}  # marker -> what it names (kept alive: its id stays unique)
_lock = threading.Lock()


def once(marker: tuple[str, ...], keep: object, check: Callable[[], None]) -> None:
    """Run ``check()`` unless it passed before for ``marker`` in this process.

    A failed check is not remembered: the next call checks again (the user may have signed in)."""
    with _lock:
        if marker in _checked:
            return
    check()
    with _lock:
        _checked[marker] = keep


def forget_checks() -> None:
    """Forget every passed check (tests; a process that changed its environment)."""
    with _lock:
        _checked.clear()


# -- credentials ---------------------------------------------------------------


def make_credential(kind: str, *, managed_identity_client_id: str | None = None) -> TokenCredential:
    """A synchronous azure-identity credential named by ``kind`` (one of :data:`CREDENTIAL_KINDS`)."""
    if kind not in CREDENTIAL_KINDS:
        raise ConfigurationError(f"azure credential must be one of {', '.join(CREDENTIAL_KINDS)}, not {kind!r}")
    try:
        import azure.identity as identity
    except ImportError as exc:
        raise ConfigurationError("Azure support needs extra packages: pip install 'cmkfs[azure]'") from exc
    if kind == "cli":
        return identity.AzureCliCredential()
    if kind == "environment":
        return identity.EnvironmentCredential()
    if kind == "managed_identity":
        return identity.ManagedIdentityCredential(client_id=managed_identity_client_id)
    if kind == "workload_identity":
        return identity.WorkloadIdentityCredential()
    if managed_identity_client_id:
        return identity.DefaultAzureCredential(managed_identity_client_id=managed_identity_client_id)
    return identity.DefaultAzureCredential()


def credential_hint() -> str:
    """What this process could sign in with, from the environment alone (no network)."""
    found = []
    if os.environ.get("AZURE_CLIENT_ID") and os.environ.get("AZURE_TENANT_ID"):
        secret = [v for v in _ENV_SECRET if os.environ.get(v)]
        found.append("AZURE_CLIENT_ID/AZURE_TENANT_ID with " + (secret[0] if secret else "no secret or certificate"))
    else:
        found.append("no AZURE_CLIENT_ID/AZURE_TENANT_ID")
    found.append("az CLI on PATH" if shutil.which("az") else "no az CLI on PATH")
    endpoint = [v for v in _ENV_IDENTITY if os.environ.get(v)]
    found.append(f"managed identity endpoint in {endpoint[0]}" if endpoint else "no managed identity endpoint set")
    return ", ".join(found)


def _visible_source() -> bool:
    return bool(
        (os.environ.get("AZURE_CLIENT_ID") and os.environ.get("AZURE_TENANT_ID"))
        or shutil.which("az")
        or any(os.environ.get(v) for v in _ENV_IDENTITY)
    )


class _QuietThread(logging.Filter):
    """Drops the preflight thread's azure-identity warnings: its one-line error replaces their
    many lines (the chained exception keeps them for ``--debug``)."""

    ident: int | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.ident


def check_token(
    credential: TokenCredential, scope: str, where: str, *, timeout: float | None = None, fix: str = CREDENTIAL_FIX
) -> None:
    """Get one token for ``scope`` within ``timeout`` seconds, or raise ConfigurationError naming ``where``.

    The call runs in a daemon thread: a credential that hangs (a firewalled identity endpoint, an
    ``az`` waiting on a prompt) is abandoned, not waited for."""
    if timeout is None:
        timeout = SLOW_PREFLIGHT_TIMEOUT if _visible_source() else PREFLIGHT_TIMEOUT
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            credential.get_token(scope)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            outcome.append(exc)

    worker = threading.Thread(target=attempt, name="cmkfs-azure-preflight", daemon=True)
    quiet = _QuietThread()
    loggers = [logging.getLogger(n) for n in list(logging.Logger.manager.loggerDict) if n.startswith("azure.identity")]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        worker.start()
        quiet.ident = worker.ident
        worker.join(timeout)
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)
    if not outcome:
        raise ConfigurationError(
            f"could not get an Azure access token for {where} within {timeout:g} s ({credential_hint()}): {fix}"
        )
    error = outcome[0]
    if error is None:
        return
    if isinstance(error, CMKError):
        raise error
    if isinstance(error, Exception):
        # The SDK's text lists every source it tried over many lines; the chained error keeps it.
        raise ConfigurationError(
            f"could not get an Azure access token for {where} ({credential_hint()}): {fix}"
        ) from error
    raise error


# -- endpoints -----------------------------------------------------------------------


def _proxied(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    proxies = getproxies()
    return bool(proxies.get(urlsplit(url).scheme) or proxies.get("all")) and not proxy_bypass(host)


def check_reachable(
    url: str, where: str, *, unreachable: Callable[[str], Exception], timeout: float = PREFLIGHT_TIMEOUT
) -> None:
    """Open (and close) one TCP connection to ``url``'s host within ``timeout`` seconds.

    A name that does not resolve is a ConfigurationError (a mistyped account or vault); a host
    that does not answer raises ``unreachable(message)``.  Behind a proxy the check is left to
    the SDK, which goes through it."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise ConfigurationError(f"{where}: {url!r} names no host")
    if _proxied(url):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise ConfigurationError(f"{where}: host {host} does not resolve; check the name") from None
    last: OSError | None = None
    for family, kind, proto, _, address in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(timeout)
                sock.connect(address)
                return
        except OSError as exc:
            last = exc
    reason = "timed out" if isinstance(last, socket.timeout) else (getattr(last, "strerror", None) or "refused")
    raise unreachable(f"cannot reach {where} at {host}:{port} ({reason})")


def options_of(value: Any, what: str) -> dict[str, Any]:
    """``value`` as plain options (strings, booleans, numbers, nested objects of those), or ConfigurationError."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{what} must be an object of options")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise ConfigurationError(f"{what}: option names are strings")
        if isinstance(item, Mapping):
            out[key] = options_of(item, f"{what}.{key}")
        elif item is None or isinstance(item, (str, bool, int, float)):
            out[key] = item
        else:
            # Options travel in tokens and pickles: objects (credentials) are registered in code.
            raise ConfigurationError(
                f"{what}.{key} must be a string, number or boolean; pass credential objects to the provider in code"
            )
    return out
