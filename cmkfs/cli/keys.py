"""``cmkfs keys``: manage the embedded vault's keys (``local://NAME``).

Data (key URIs, versions, JSON) goes to stdout; confirmations and errors go to stderr.  Key material is never
printed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..config import cmkfs_home, default_key_uri
from ..errors import ConfigurationError
from ..providers.base import KeyProvider, provider_factory, redact_key_uri
from .output import emit_json, fail, printable
from .state import CliState, pass_state

if TYPE_CHECKING:
    from ..providers.local import LocalVaultProvider

__all__ = ["command", "existing_home"]

_PASSPHRASE_HELP = "Read the vault passphrase from this environment variable (default: $CMKFS_PASSPHRASE)."


def passphrase_from_env(var: str | None) -> str | None:
    """The passphrase in environment variable ``var`` (never taken on the command line)."""
    if var is None:
        return None
    value = os.environ.get(var)
    if not value:
        raise ConfigurationError(f"environment variable {var} is not set or empty")
    return value


def _name(value: str) -> str:
    """Accept ``NAME`` or ``local://NAME``."""
    from ..providers.local import PREFIX, parse_local_uri

    if value.startswith(PREFIX):
        name, version = parse_local_uri(value)
        if version is not None:
            raise ConfigurationError("name a key, not a key version")
        return name
    if "://" in value or ":" in value:
        raise ConfigurationError("cmkfs keys manages the embedded vault only: use NAME or local://NAME")
    return value


def existing_home(state: CliState) -> Path:
    """The state directory, which must exist: a mistyped ``--home`` is an error, not an empty vault."""
    home = cmkfs_home(state.home)
    if not home.is_dir():
        raise ConfigurationError(
            f"{home} does not exist (or is not a directory): no cmkfs vault there; check --home and "
            f"$CMKFS_HOME, or create a key with `cmkfs --home {home} keys create NAME --default`"
        )
    return home


def _vault(state: CliState, passphrase: str | None = None) -> LocalVaultProvider:
    """The embedded vault of an existing state directory (every command but ``create`` needs one)."""
    existing_home(state)
    return state.vault(passphrase)


def _version_state(key_state: str, version_state: str) -> str:
    """What a version can do: a disabled or destroyed key disables every version it has."""
    return key_state if version_state == "enabled" and key_state != "enabled" else version_state


def _default_uri(state: CliState) -> str | None:
    try:
        return default_key_uri(state.home)
    except ConfigurationError:
        return None


def _out(line: str) -> None:
    # meta.json is a file anyone with write access to the vault can edit: escape what it says.
    click.echo(printable(line))


def _note(message: str) -> None:
    click.echo(printable(message), err=True)


@click.group("keys")
def command() -> None:
    """Create, rotate, revoke and destroy keys in the embedded vault."""


@command.command("create")
@click.argument("name")
@click.option("--default", "make_default", is_flag=True, help="Also make it the default key (config.json).")
@click.option("--passphrase-env", metavar="VAR", default=None, help=_PASSPHRASE_HELP + " Protects the key material.")
@click.option("--json", "as_json", is_flag=True, help="Print the key's details as JSON.")
@pass_state
def create(state: CliState, name: str, make_default: bool, passphrase_env: str | None, as_json: bool) -> None:
    """Create key NAME and print its URI (local://NAME)."""
    name = _name(name)
    vault = state.vault(passphrase_from_env(passphrase_env))
    info = vault.create(name)
    if make_default:
        vault.set_default(name)
    if as_json:
        details = vault.details(name)
        details["default"] = make_default or _default_uri(state) == info.key_uri
        emit_json(details)
    else:
        _out(info.key_uri)
    if make_default:
        _note(f"{info.key_uri} is now the default key")


@command.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def list_keys(state: CliState, as_json: bool) -> None:
    """List the keys in the vault (destroyed ones included)."""
    vault = _vault(state)
    default = _default_uri(state)
    rows: list[dict[str, Any]] = []
    for name in vault.list_keys():
        details = vault.details(name)
        details["default"] = details["key_uri"] == default
        for v in details["versions"]:
            v["state"] = _version_state(details["state"], v["state"])
        rows.append(details)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        _note(f"no keys in {vault.root}: create one with `cmkfs keys create NAME --default`")
        return
    width = max(len(r["key_uri"]) for r in rows)
    for r in rows:
        live = sum(1 for v in r["versions"] if v["state"] != "destroyed")
        current = r["current_version"] or "-"
        mark = "*" if r["default"] else " "
        _out(
            f"{mark} {r['key_uri']:<{width}}  {r['state']:<9}  version {current:<4}  {live} live version(s)  "
            f"protection: {r['protection']}"
        )


@command.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def show(state: CliState, name: str, as_json: bool) -> None:
    """Show a key's state and versions (never its material)."""
    if _remote(name):
        return _remote_show(state, name, as_json)
    name = _name(name)
    details = _vault(state).details(name)
    details["default"] = details["key_uri"] == _default_uri(state)
    for v in details["versions"]:
        v["state"] = _version_state(details["state"], v["state"])
    if as_json:
        emit_json(details)
        return
    _out(f"key:             {details['key_uri']}{'  (default)' if details['default'] else ''}")
    _out(f"state:           {details['state']}")
    _out(f"current version: {details['current_version'] or '-'}")
    _out(f"protection:      {details['protection']}")
    _out(f"created:         {details['created']}")
    _out(f"updated:         {details['updated']}")
    _out("versions:")
    for v in details["versions"]:
        _out(f"  {v['version']:>4}  {v['state']:<9}  created {v['created']}")


@command.command("rotate")
@click.argument("name")
@click.option("--passphrase-env", metavar="VAR", default=None, help=_PASSPHRASE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def rotate(state: CliState, name: str, passphrase_env: str | None, as_json: bool) -> None:
    """Add a new version of NAME and make it current; print the new version.

    New files use it at once (after each process's cached data key rolls,
    within its cache TTL); older versions keep unwrapping existing files.
    """
    if _remote(name):
        return _remote_rotate(state, name, as_json)
    name = _name(name)
    version = _vault(state, passphrase_from_env(passphrase_env)).rotate(name)
    if as_json:
        emit_json({"key_uri": f"local://{name}", "current_version": version})
    else:
        _out(version)


@command.command("disable")
@click.argument("name")
@pass_state
def disable(state: CliState, name: str) -> None:
    """Revoke NAME: every wrap and unwrap is refused.

    New processes are refused at once; running processes within their key
    cache TTL (15 minutes by default, never more than one hour).
    """
    if _remote(name):
        return _remote_set_enabled(state, name, False)
    name = _name(name)
    _vault(state).disable(name)
    _note(f"local://{name} disabled: running processes stop using it within their cache TTL (at most 1 hour)")


@command.command("enable")
@click.argument("name")
@pass_state
def enable(state: CliState, name: str) -> None:
    """Restore a disabled key."""
    if _remote(name):
        return _remote_set_enabled(state, name, True)
    name = _name(name)
    _vault(state).enable(name)
    _note(f"local://{name} enabled")


@command.command("destroy")
@click.argument("name")
@click.option("--version", "version", metavar="V", default=None, help="Destroy only this (non-current) version.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def destroy(state: CliState, name: str, version: str | None, yes: bool) -> None:
    """Overwrite and remove NAME's key material.  PERMANENT.

    Everything the key (or the version) protects becomes unreadable for good.
    """
    name = _name(name)
    vault = _vault(state)
    vault.details(name)  # fail on a missing key before asking
    what = f"version {version} of local://{name}" if version else f"local://{name}"
    if not yes:
        _note(f"Destroying {what} makes everything it protects permanently unreadable.")
        typed = click.prompt(f"Type the key name ({name}) to confirm", default="", show_default=False, err=True)
        if typed != name:
            fail("not confirmed; nothing was destroyed")
    vault.destroy(name, version)
    _note(f"{what} destroyed")


@command.command("default")
@click.argument("name")
@pass_state
def default(state: CliState, name: str) -> None:
    """Make NAME the default key (written to config.json as "default_key")."""
    name = _name(name)
    _out(_vault(state).set_default(name))


# -- keys in Azure Key Vault and PKCS#11 tokens (https://..., pkcs11:...) ------------------------

_REMOTE_PREFIXES = ("https://", "pkcs11:")


def _remote(value: str) -> bool:
    return value.startswith(_REMOTE_PREFIXES)


def _remote_provider(state: CliState, key_uri: str) -> KeyProvider:
    """The provider of ``key_uri`` with the policy's provider options (config.json "azure")."""
    from ..policy import load_policy

    return provider_factory(policy_azure=load_policy(state.home).azure)(key_uri)


def _remote_show(state: CliState, key_uri: str, as_json: bool) -> None:
    info = _remote_provider(state, key_uri).describe(key_uri)
    details = {
        "key_uri": redact_key_uri(info.key_uri),
        "state": "enabled" if info.enabled else "disabled",
        "current_version": info.current_version,
        "algorithm": info.algorithm,
        "size_bits": info.size_bits,
        "versions": list(info.versions),
        "warnings": list(info.warnings),
        "default": info.key_uri == _default_uri(state),
    }
    if as_json:
        emit_json(details)
        return
    _out(f"key:             {details['key_uri']}{'  (default)' if details['default'] else ''}")
    _out(f"state:           {details['state']}")
    _out(f"current version: {details['current_version'] or '-'}")
    _out(f"algorithm:       {info.algorithm}" + (f" (RSA-{info.size_bits})" if info.size_bits else ""))
    _out("versions:")
    for version in info.versions:
        _out(f"  {version}")
    for warning in info.warnings:
        _note(f"warning: {warning}")


def _remote_rotate(state: CliState, key_uri: str, as_json: bool) -> None:
    provider = _remote_provider(state, key_uri)
    version = provider.rotate(key_uri)
    if as_json:
        emit_json({"key_uri": redact_key_uri(provider.canonical_uri(key_uri)), "current_version": version})
    else:
        _out(version)


def _remote_set_enabled(state: CliState, key_uri: str, enabled: bool) -> None:
    versions = _remote_provider(state, key_uri).set_enabled(key_uri, enabled)
    shown = redact_key_uri(key_uri)
    if enabled:
        _note(f"{shown} enabled ({len(versions)} version(s))")
    else:
        _note(
            f"{shown} disabled ({len(versions)} version(s)): running processes stop using it within their "
            "cache TTL (at most 1 hour)"
        )
