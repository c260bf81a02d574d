"""Where cmkfs keeps its embedded state, and which key it uses by default.

``$CMKFS_HOME`` (default ``~/.cmkfs``) holds the embedded key vault and a
small ``config.json``.  The default key URI comes from ``$CMKFS_KEY``, else
from ``config.json``'s ``"default_key"``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: edits are not serialised there
    fcntl = None  # type: ignore[assignment]

from .errors import ConfigurationError

__all__ = [
    "config_lock",
    "cmkfs_home",
    "default_key_uri",
    "environment",
    "load_config",
    "ENV_HOME",
    "ENV_KEY",
    "ENV_AUDIT",
]

ENV_HOME = "CMKFS_HOME"
ENV_KEY = "CMKFS_KEY"
ENV_AUDIT = "CMKFS_AUDIT_LOG"
CONFIG_FILE = "config.json"
MAX_CONFIG_SIZE = 64 * 1024


def cmkfs_home(home: str | os.PathLike[str] | None = None) -> Path:
    """The embedded state directory: ``home``, ``$CMKFS_HOME`` or ``~/.cmkfs``."""
    if home is not None:
        return Path(home).expanduser()
    env = os.environ.get(ENV_HOME)
    return Path(env).expanduser() if env else Path.home() / ".cmkfs"


def load_config(home: str | os.PathLike[str] | None = None) -> dict[str, object]:
    """The JSON object in ``config.json`` (``{}`` if there is none), size-bounded before it is parsed."""
    path = cmkfs_home(home) / CONFIG_FILE
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_SIZE + 1)
    except FileNotFoundError:
        return {}
    if len(raw) > MAX_CONFIG_SIZE:
        raise ConfigurationError(f"{path} is too large to be a cmkfs configuration file")
    try:
        data = json.loads(raw)
    except UnicodeDecodeError as exc:  # a ValueError without .msg: before the JSON case
        raise ConfigurationError(f"{path} is not UTF-8 text (byte {exc.start} is not valid UTF-8)") from None
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except RecursionError:  # the decoder recurses once per nested array or object
        raise ConfigurationError(f"{path} is not a cmkfs configuration file: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path} must hold a JSON object")
    return data


def default_key_uri(home: str | os.PathLike[str] | None = None) -> str:
    """``$CMKFS_KEY``, else the embedded configuration's default key."""
    env = os.environ.get(ENV_KEY)
    if env:
        return env
    uri = load_config(home).get("default_key")
    if not uri:
        raise ConfigurationError(
            "no key configured: pass key='local://NAME' (or an Azure Key Vault / pkcs11 URI), "
            f"set ${ENV_KEY}, or create one with `cmkfs keys create NAME --default`"
        )
    return str(uri)


@contextlib.contextmanager
def config_lock(home: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """Hold ``$CMKFS_HOME/config.lock`` for a read-modify-write of config.json,
    so two commands editing the policy at once cannot lose each other's change."""
    where = cmkfs_home(home)
    where.mkdir(parents=True, exist_ok=True)
    fd = os.open(where / "config.lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield where
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def environment(**changes: str | None) -> Iterator[None]:
    """Set (a string) or remove (``None``) environment variables for the block, and put every one of them
    back as it was afterwards.  Process-wide: the demo, the drill and ``cmkfs.testing`` use it for a
    scratch home or to keep the user's key settings away from the processes they start."""
    saved = {var: os.environ.get(var) for var in changes}
    try:
        for var, value in changes.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
