"""``cmkfs init`` and ``cmkfs capacity``: the key policy, as Power BI's encryption cmdlets set it.

Data goes to stdout (``--json`` for scripts); confirmations go to stderr.
"""

from __future__ import annotations

from typing import Any

import click

from ..errors import ConfigurationError
from ..policy import MODES, Capacity, Policy, edit_policy, load_policy
from .options import key_uri_option
from .output import emit_json, printable
from .state import CliState, pass_state

__all__ = ["capacity", "init"]

TENANT_KEY = "tenant"


def _describe(policy: Policy, capacity: Capacity) -> dict[str, Any]:
    return {
        "name": capacity.name,
        "url": capacity.url,
        "key": policy.key_for(capacity),
        "own_key": capacity.key,
        "mode": policy.mode,
    }


def _note(message: str) -> None:
    click.echo(printable(message), err=True)


@click.command("init")
@click.option("--mode", type=click.Choice(MODES), default=None, help="cmk: one tenant key; byok: a key per capacity.")
@click.option("--key", "key", default=None, metavar="URI|NAME", help=f"The tenant key (default: local://{TENANT_KEY}).")
@click.option("--json", "as_json", is_flag=True, help="Print the resulting policy as JSON.")
@pass_state
def init(state: CliState, mode: str | None, key: str | None, as_json: bool) -> None:
    """Set up cmkfs here: the embedded vault, a tenant key and the key policy."""
    done: list[str] = []
    with edit_policy(state.home) as policy:
        tenant = key_uri_option(key) or policy.default_key or f"local://{TENANT_KEY}"
        if tenant.startswith("local://"):
            vault = state.vault()
            name = tenant[len("local://") :]
            if name not in vault.list_keys():
                vault.create(name)
                done.append(f"created key {tenant} in the embedded vault {vault.root}")
        if policy.default_key != tenant:
            policy.default_key = tenant
            done.append(f"tenant key: {tenant}")
        if mode is not None and policy.mode != mode:
            policy.mode = mode
            done.append(f"mode: {mode}")
    path = policy.home / "config.json"
    if as_json:
        emit_json({"policy": str(path), **policy.to_json()})
        return
    for line in done or ["already set up: nothing to change"]:
        _note(line)
    _note(f"policy: {path}")
    _note("")
    _note("Use it from Python (writes are encrypted under the policy's key, reads decrypt):")
    _note('  df.to_parquet("cmk::file:///data/sales/q1.parquet")')
    _note('  pd.read_parquet("cmk::file:///data/sales/q1.parquet", columns=["revenue"])')
    _note("Next: cmkfs capacity add NAME URL [--key URI]   (a storage root and, in byok mode, its key)")


@click.group("capacity")
def capacity() -> None:
    """Capacities: named storage roots and the key that protects each."""


@capacity.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--key", default=None, metavar="URI|NAME", help="The capacity's own key (used in byok mode).")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def add(state: CliState, name: str, url: str, key: str | None, as_json: bool) -> None:
    """Add capacity NAME for the storage root URL."""
    with edit_policy(state.home) as policy:
        added = policy.add(name, url, key_uri_option(key))
    if as_json:
        emit_json(_describe(policy, added))
    else:
        _note(f"capacity {added.name}: {added.url}, new files under {policy.key_for(added) or 'no key yet'}")
        if added.key and policy.mode == "cmk":
            _note("the policy is in cmk mode: every capacity uses the tenant key (cmkfs init --mode byok to change)")


@capacity.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def list_capacities(state: CliState, as_json: bool) -> None:
    """List the capacities and their keys."""
    policy = load_policy(state.home)
    rows = [_describe(policy, c) for c in sorted(policy.capacities.values(), key=lambda c: c.name)]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        _note("no capacities yet: cmkfs capacity add NAME URL")
    for row in rows:
        click.echo("\t".join(printable(str(v)) for v in (row["name"], row["url"], row["key"] or "-")))


@capacity.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def show(state: CliState, name: str, as_json: bool) -> None:
    """Show capacity NAME."""
    policy = load_policy(state.home)
    row = _describe(policy, policy.get(name))
    if as_json:
        emit_json(row)
        return
    for field in ("name", "url", "key", "own_key", "mode"):
        click.echo(printable(f"{field}: {row[field] if row[field] is not None else '-'}"))


@capacity.command("assign")
@click.argument("name")
@click.argument("key")
@pass_state
def assign(state: CliState, name: str, key: str) -> None:
    """Give capacity NAME its own KEY for new writes (existing files move with rewrap)."""
    uri = key_uri_option(key)
    if uri is None:
        raise ConfigurationError("name a key")
    with edit_policy(state.home) as policy:
        assigned = policy.assign(name, uri)
    _note(f"capacity {assigned.name}: new files under {policy.key_for(assigned)}")
    if policy.mode == "cmk":
        _note("the policy is in cmk mode: the tenant key still applies (cmkfs init --mode byok to change)")
    _note(f"existing files keep their key until: cmkfs rewrap {assigned.url} -r --key {uri}")


@capacity.command("remove")
@click.argument("name")
@pass_state
def remove(state: CliState, name: str) -> None:
    """Forget capacity NAME (its files stay as they are)."""
    with edit_policy(state.home) as policy:
        removed = policy.remove(name)
    _note(f"removed capacity {removed.name} ({removed.url}); its files are untouched")
