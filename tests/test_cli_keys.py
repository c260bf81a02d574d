"""``cmkfs keys``: output, exit codes, no tracebacks, never any key material."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cmkfs import __version__
from cmkfs.cli import cli
from cmkfs.cli.output import EXIT_CODES, exit_code_for
from cmkfs.config import default_key_uri
from cmkfs.errors import (
    CMKError,
    ConfigurationError,
    FormatError,
    IntegrityError,
    KeyNotFoundError,
    KeyRevokedError,
    UnsupportedOperationError,
    VaultUnavailableError,
)
from cmkfs.providers.local import LocalVaultProvider


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args, input=None, env=None):
        result = runner.invoke(cli, list(args), input=input, env=env, catch_exceptions=False)
        assert "Traceback" not in result.output
        return result

    return invoke


def all_material(home) -> list[str]:
    found = []
    for root, _, files in os.walk(home / "vault"):
        found += [Path(root, f).read_bytes().hex() for f in files if f.endswith(".key")]
    return found


def test_version(run):
    result = run("--version")
    assert result.exit_code == 0 and __version__ in result.stdout


def test_create_prints_the_uri_and_can_set_the_default(run, isolated_cmkfs_home):
    result = run("keys", "create", "sales")
    assert result.exit_code == 0
    assert result.stdout == "local://sales\n"
    with pytest.raises(ConfigurationError):
        default_key_uri()
    result = run("keys", "create", "finance", "--default")
    assert result.stdout == "local://finance\n" and "default" in result.stderr
    assert default_key_uri() == "local://finance"
    result = run("keys", "default", "local://sales")
    assert result.exit_code == 0 and default_key_uri() == "local://sales"
    details = json.loads(run("keys", "create", "hr", "--json").stdout)
    assert details["key_uri"] == "local://hr" and details["current_version"] == "1" and details["default"] is False


def test_list_show_rotate(run, isolated_cmkfs_home):
    result = run("keys", "list")
    assert result.exit_code == 0 and result.stdout == "" and "no keys" in result.stderr
    run("keys", "create", "a", "--default")
    run("keys", "create", "b")
    result = run("keys", "rotate", "a")
    assert result.exit_code == 0 and result.stdout == "2\n"
    assert json.loads(run("keys", "rotate", "a", "--json").stdout) == {"key_uri": "local://a", "current_version": "3"}
    listing = run("keys", "list").stdout.splitlines()
    assert len(listing) == 2
    assert listing[0].startswith("* local://a") and "version 3" in listing[0]
    assert listing[1].startswith("  local://b") and "enabled" in listing[1]
    rows = json.loads(run("keys", "list", "--json").stdout)
    assert [(r["key_uri"], r["state"], r["current_version"], r["default"]) for r in rows] == [
        ("local://a", "enabled", "3", True),
        ("local://b", "enabled", "1", False),
    ]
    show = run("keys", "show", "a")
    assert "state:           enabled" in show.stdout and "current version: 3" in show.stdout
    assert show.stdout.count("created") == 4  # the key and its three versions
    details = json.loads(run("keys", "show", "local://a", "--json").stdout)
    assert [v["version"] for v in details["versions"]] == ["1", "2", "3"]
    everything = run("keys", "list", "--json").output + show.output + json.dumps(details)
    for kek in all_material(isolated_cmkfs_home):
        assert kek not in everything.lower()


def test_disable_enable(run, isolated_cmkfs_home):
    run("keys", "create", "k")
    block = LocalVaultProvider().wrap("local://k", os.urandom(32))
    result = run("keys", "disable", "k")
    assert result.exit_code == 0 and result.stdout == "" and "disabled" in result.stderr
    assert json.loads(run("keys", "show", "k", "--json").stdout)["state"] == "disabled"
    with pytest.raises(KeyRevokedError):
        LocalVaultProvider().unwrap(block)
    assert run("keys", "enable", "k").exit_code == 0
    LocalVaultProvider().unwrap(block)


def test_destroy_asks_first(run, isolated_cmkfs_home):
    run("keys", "create", "k")
    result = run("keys", "destroy", "k", input="nope\n")
    assert result.exit_code == 1 and "nothing was destroyed" in result.stderr
    assert json.loads(run("keys", "show", "k", "--json").stdout)["state"] == "enabled"
    result = run("keys", "destroy", "k", input="")  # no answer: no destroy
    assert result.exit_code == 1
    result = run("keys", "destroy", "k", input="k\n")
    assert result.exit_code == 0 and "destroyed" in result.stderr
    assert json.loads(run("keys", "show", "k", "--json").stdout)["state"] == "destroyed"
    assert all_material(isolated_cmkfs_home) == []


def test_destroy_yes_and_one_version(run, isolated_cmkfs_home):
    run("keys", "create", "k")
    run("keys", "rotate", "k")
    assert run("keys", "destroy", "k", "--version", "2", "--yes").exit_code == 7  # the current one
    assert run("keys", "destroy", "k", "--version", "1", "--yes").exit_code == 0
    versions = json.loads(run("keys", "show", "k", "--json").stdout)["versions"]
    assert [(v["version"], v["state"]) for v in versions] == [("1", "destroyed"), ("2", "enabled")]
    assert run("keys", "destroy", "k", "--yes").exit_code == 0


def test_exit_codes_and_messages(run, isolated_cmkfs_home):
    result = run("keys", "show", "missing")
    assert result.exit_code == 3
    assert result.stderr.startswith("cmkfs: error: ") and "local://missing" in result.stderr
    assert result.stdout == ""
    run("keys", "create", "k")
    assert run("keys", "create", "k").exit_code == 7  # exists
    assert run("keys", "create", "../evil").exit_code == 7  # bad name
    assert run("keys", "create", "https://v.vault.azure.net/keys/x").exit_code == 7
    assert run("keys", "show", "local://k?version=1").exit_code == 7
    run("keys", "destroy", "k", "--yes")
    result = run("keys", "enable", "k")
    assert result.exit_code == 4 and "destroyed" in result.stderr
    assert run("keys", "rotate", "k").exit_code == 4
    (isolated_cmkfs_home / "vault" / "k" / "meta.json").write_text("{damaged")
    result = run("keys", "show", "k")
    assert result.exit_code == 5 and "damaged" in result.stderr
    # usage errors
    assert run("keys").exit_code in (0, 2)  # a bare group prints its help
    assert run("keys", "create").exit_code == 2
    assert run("keys", "frobnicate").exit_code == 2
    assert run("keys", "list", "--no-such-option").exit_code == 2


def test_every_error_class_has_its_code():
    codes = {
        KeyNotFoundError: 3,
        KeyRevokedError: 4,
        VaultUnavailableError: 5,
        IntegrityError: 6,
        ConfigurationError: 7,
        FormatError: 8,
        UnsupportedOperationError: 1,
        CMKError: 1,
    }
    for cls, code in codes.items():
        assert exit_code_for(cls("x") if cls is not IntegrityError else cls()) == code
    assert len({code for _, code in EXIT_CODES}) == len(EXIT_CODES)


def test_the_exit_code_table_matches_the_documented_one():
    text = (Path(__file__).parents[1] / "docs" / "KEYS.md").read_text(encoding="utf-8")
    section = text.split("### Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].isdigit() and cells[2].startswith("`") and "," not in cells[2]:
            documented[cells[2].strip("`")] = int(cells[0])
    assert documented == {cls.__name__: code for cls, code in EXIT_CODES}


def test_home_option_overrides_the_environment(run, isolated_cmkfs_home, tmp_path):
    other = tmp_path / "other-home"
    assert run("--home", str(other), "keys", "create", "x", "--default").exit_code == 0
    assert (other / "vault" / "x" / "meta.json").is_file()
    assert not (isolated_cmkfs_home / "vault").exists()
    assert run("keys", "show", "x").exit_code == 3
    assert run("--home", str(other), "keys", "show", "x").exit_code == 0
    assert default_key_uri(other) == "local://x"


def test_passphrase_from_a_named_variable(run, isolated_cmkfs_home):
    env = {"MY_VAULT_PW": "s3cret words"}
    result = run("keys", "create", "k", "--passphrase-env", "MY_VAULT_PW", "--json", env=env)
    assert json.loads(result.stdout)["protection"] == "passphrase"
    assert "s3cret" not in result.output
    assert run("keys", "rotate", "k").exit_code == 7  # no passphrase
    result = run("keys", "rotate", "k", env={"CMKFS_PASSPHRASE": "wrong"})
    assert result.exit_code == 7 and "wrong passphrase" in result.stderr
    assert run("keys", "rotate", "k", "--passphrase-env", "MY_VAULT_PW", env=env).stdout == "2\n"
    assert run("keys", "rotate", "k", env={"CMKFS_PASSPHRASE": "s3cret words"}).stdout == "3\n"
    result = run("keys", "create", "j", "--passphrase-env", "UNSET_VARIABLE_X")
    assert result.exit_code == 7 and "UNSET_VARIABLE_X" in result.stderr
    assert run("keys", "disable", "k").exit_code == 0  # state changes need no passphrase


def test_python_dash_m_in_a_real_process(isolated_cmkfs_home):
    def cmkfs(*args):
        return subprocess.run([sys.executable, "-m", "cmkfs", *args], capture_output=True, text=True, timeout=60)

    created = cmkfs("keys", "create", "proc", "--default")
    assert created.returncode == 0 and created.stdout == "local://proc\n"
    shown = cmkfs("keys", "show", "proc", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["state"] == "enabled"
    missing = cmkfs("keys", "disable", "nope")
    assert missing.returncode == 3
    assert missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr
    assert cmkfs("--version").stdout.strip().endswith(__version__)
    as_package = subprocess.run([sys.executable, "-m", "cmkfs.cli", "--version"], capture_output=True, text=True)
    assert as_package.returncode == 0 and as_package.stdout.strip().endswith(__version__)


def test_vault_text_is_escaped_on_the_terminal(run, isolated_cmkfs_home):
    # meta.json is a file on disk: its free-text fields reach the terminal escaped.
    run("keys", "create", "k")
    path = isolated_cmkfs_home / "vault" / "k" / "meta.json"
    meta = json.loads(path.read_text())
    meta["created"] = "2026-01-05\x1b]0;pwned\x07"
    meta["versions"][0]["created"] = "2026\x1b[2J"
    meta["updated"] = "\u202eevil"
    path.write_text(json.dumps(meta))
    for args in (("keys", "show", "k"), ("keys", "list")):
        result = run(*args)
        assert result.exit_code == 0
        assert all(ch.isprintable() or ch == "\n" for ch in result.stdout), repr(result.stdout)
    shown = run("keys", "show", "k").stdout
    assert "2026-01-05\\x1b]0;pwned\\x07" in shown and "2026\\x1b[2J" in shown and "\\u202eevil" in shown
    assert json.loads(run("keys", "show", "k", "--json").stdout)["created"] == meta["created"]  # JSON stays exact


# -- messages users meet ---------------------------------------------------------------


def test_a_missing_home_is_an_error_naming_it(run, isolated_cmkfs_home, tmp_path):
    missing = tmp_path / "nonexistent"
    for args in (("keys", "list"), ("keys", "list", "--json"), ("keys", "show", "k"), ("keys", "rotate", "k")):
        result = run("--home", str(missing), *args)
        assert result.exit_code == 7, (args, result.output)
        assert str(missing) in result.stderr and "does not exist" in result.stderr and result.stdout == ""
        assert result.stderr.count("\n") == 1
    assert not missing.exists()  # looking did not create it
    rewrap = run("--home", str(missing), "rewrap", str(tmp_path), "-r")
    assert rewrap.exit_code == 7 and str(missing) in rewrap.stderr
    assert run("--home", str(missing), "keys", "create", "k").exit_code == 0  # create makes the home
    assert run("--home", str(missing), "keys", "list").exit_code == 0


def test_show_gives_each_versions_state_under_a_disabled_key(run, isolated_cmkfs_home):
    run("keys", "create", "k")
    run("keys", "rotate", "k")
    run("keys", "destroy", "k", "--version", "1", "--yes")
    run("keys", "disable", "k")
    shown = run("keys", "show", "k").stdout
    versions = [line.split() for line in shown.split("versions:\n", 1)[1].splitlines()]
    assert [v[:2] for v in versions] == [["1", "destroyed"], ["2", "disabled"]]
    assert "enabled" not in shown
    details = json.loads(run("keys", "show", "k", "--json").stdout)
    assert [(v["version"], v["state"]) for v in details["versions"]] == [("1", "destroyed"), ("2", "disabled")]
    listed = json.loads(run("keys", "list", "--json").stdout)[0]
    assert [v["state"] for v in listed["versions"]] == ["destroyed", "disabled"]
    run("keys", "enable", "k")
    assert "  2  enabled" in run("keys", "show", "k").stdout


def test_no_key_configured_is_told_in_the_cli_form(isolated_cmkfs_home):
    # The root group's own error mapping, around a command that needs the default key.
    group = type(cli)(name="cmkfs")

    @group.command("needs-key")
    def needs_key() -> None:
        default_key_uri()

    result = CliRunner().invoke(group, ["needs-key"])
    assert result.exit_code == 7
    assert "cmkfs keys create NAME --default" in result.stderr and "--key" in result.stderr
    assert "key='" not in result.stderr and "Traceback" not in result.output


def test_the_core_install_names_the_azure_extra(isolated_cmkfs_home, tmp_path):
    # adlfs made unimportable: what an install without the azure extra sees.
    code = "import sys; sys.modules['adlfs'] = None; from cmkfs.cli import main; sys.exit(main())"
    proc = subprocess.run(
        [sys.executable, "-c", code, "rewrap", "cmk::abfs://container/dir", "-r"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 7, proc.stderr
    assert "pip install 'cmkfs[azure]'" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1
