"""Options several commands share."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

__all__ = ["StorageOptions", "key_uri_option", "parse_storage_options", "secret_option_names"]

# fsspec options keyed by protocol, as in chained URLs: {"abfs": {...}, "cmk": {...}}.
StorageOptions = dict[str, dict[str, Any]]

# Option names that look like credentials (a case-insensitive part of the name).
SECRET_WORDS = ("key", "secret", "sas_token", "connection_string", "password", "token", "credential")
# Bound on a --storage-options file or stdin: options, not data.
MAX_OPTIONS_BYTES = 1 << 20


def parse_storage_options(text: str | None) -> StorageOptions:
    """``--storage-options``: a JSON object of fsspec options keyed by protocol.

    ``@FILE`` reads the JSON from FILE and ``-`` from stdin: credentials given so stay out of the
    command line, which other users can read (``/proc/PID/cmdline``, ``ps``) for as long as the
    command runs.  Anything else is the JSON itself."""
    if text is None:
        return {}
    if text == "-" or text.startswith("@"):
        text = _read_options(text)
    try:
        options = json.loads(text)
    except ValueError as exc:  # also an integer too long to parse: a usage error, not a traceback
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise click.BadParameter(f"not valid JSON ({reason})", param_hint="--storage-options") from None
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise click.BadParameter(
            'a JSON object keyed by protocol, e.g. {"cmk": {"cache_ttl": 60}, "abfs": {"account_name": "..."}}',
            param_hint="--storage-options",
        )
    return options


def _read_options(source: str) -> str:
    try:
        if source == "-":
            data = sys.stdin.read(MAX_OPTIONS_BYTES + 1)
        else:
            with open(source[1:], encoding="utf-8") as options_file:
                data = options_file.read(MAX_OPTIONS_BYTES + 1)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise click.BadParameter(f"{source}: {reason}", param_hint="--storage-options") from None
    if len(data) > MAX_OPTIONS_BYTES:
        raise click.BadParameter(f"{source}: more than {MAX_OPTIONS_BYTES} bytes", param_hint="--storage-options")
    return data


def secret_option_names(options: StorageOptions) -> list[str]:
    """``PROTOCOL.NAME`` of each option whose name looks like a credential (:data:`SECRET_WORDS`).

    The ``cmk`` protocol's ``key`` is a key URI, not a secret."""
    found: list[str] = []

    def walk(prefix: str, values: dict[str, Any]) -> None:
        for name, value in values.items():
            if prefix == "cmk" and name == "key":
                continue
            if any(word in str(name).lower() for word in SECRET_WORDS):
                found.append(f"{prefix}.{name}")
            elif isinstance(value, dict):
                walk(f"{prefix}.{name}", value)  # client_kwargs and the like

    for protocol, values in options.items():
        walk(protocol, values)
    return found


def key_uri_option(value: str | None) -> str | None:
    """A ``--key`` (or key argument): a key URI, or a bare NAME meaning the
    embedded vault's ``local://NAME``, as everywhere in ``cmkfs keys``."""
    if value is None or ":" in value:
        return value  # a key URI (local://, https://, pkcs11:): its provider checks it
    from ..providers.local import PREFIX, check_name

    return PREFIX + check_name(value)
