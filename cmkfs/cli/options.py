"""Options several commands share."""

from __future__ import annotations

import json
from typing import Any

import click

__all__ = ["StorageOptions", "key_uri_option", "parse_storage_options"]

# fsspec options keyed by protocol, as in chained URLs: {"abfs": {...}, "cmk": {...}}.
StorageOptions = dict[str, dict[str, Any]]


def parse_storage_options(text: str | None) -> StorageOptions:
    """``--storage-options``: a JSON object of fsspec options keyed by protocol."""
    if text is None:
        return {}
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


def key_uri_option(value: str | None) -> str | None:
    """A ``--key`` (or key argument): a key URI, or a bare NAME meaning the
    embedded vault's ``local://NAME``, as everywhere in ``cmkfs keys``."""
    if value is None or ":" in value:
        return value  # a key URI (local://, https://, pkcs11:): its provider checks it
    from ..providers.local import PREFIX, check_name

    return PREFIX + check_name(value)
