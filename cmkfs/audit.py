"""Opt-in audit trail of key operations, as JSON lines (docs/KEYS.md, "Audit log").

Callers pass names, versions and outcomes only: key material is never passed
in, so it cannot be written out.  ``$CMKFS_AUDIT_LOG`` sets the process default
(:func:`audit_log`); ``KeyCache(audit=AuditLog(path))`` gives a cache its own.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os

from .config import ENV_AUDIT

__all__ = ["AuditLog", "audit_log"]

logger = logging.getLogger("cmkfs.audit")


class AuditLog:
    """Appends JSON-line records to ``path`` (if given) and logs them."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = os.fspath(path) if path is not None else None

    def __repr__(self) -> str:
        return f"AuditLog(path={self.path!r})"

    def record(self, operation: str, key_uri: str, version: str | None, outcome: str, **extra: object) -> None:
        """Write one record; ``extra`` values that are not JSON scalars are left out."""
        entry: dict[str, object] = {
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
            "op": operation,
            "key_uri": key_uri,
            "version": version,
            "outcome": outcome,
            "pid": os.getpid(),
        }
        entry.update({k: v for k, v in extra.items() if isinstance(v, (str, int, float, bool, type(None)))})
        line = json.dumps(entry, sort_keys=True)
        logger.info(line)
        if self.path is None:
            return
        # One write(2) of a whole line on an O_APPEND descriptor: threads and
        # processes interleave whole lines, never bytes.  No lock, so none for
        # a forked child to inherit held.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode("utf-8"))
        finally:
            os.close(fd)


_default: AuditLog | None = None
_default_path: str | None = None


def audit_log() -> AuditLog:
    """The process default: writes to ``$CMKFS_AUDIT_LOG`` if set, else only logs."""
    global _default, _default_path
    path = os.environ.get(ENV_AUDIT) or None
    if _default is None or path != _default_path:
        _default, _default_path = AuditLog(path), path
    return _default
