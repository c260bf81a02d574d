"""Opt-in audit trail of key operations, as JSON lines.

Each record has the time (UTC, ISO 8601), the operation (``wrap``,
``unwrap``, ``create``, ``rotate``, ``disable``, ``enable``, ``destroy``,
``purge``), the key URI and version, and the outcome (``ok`` or the error
class name).  Key material is never passed in, so it cannot be written out.

Enable with ``CMKFS_AUDIT_LOG=/path/to/audit.jsonl``, with an explicit
:class:`AuditLog`, or by attaching a handler to the ``cmkfs.audit`` logger
(records are always emitted there at INFO level).
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

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = os.fspath(path) if path is not None else None

    def __repr__(self) -> str:
        return f"AuditLog(path={self.path!r})"

    def record(self, operation: str, key_uri: str, version: str | None, outcome: str, **extra) -> None:
        entry = {
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
