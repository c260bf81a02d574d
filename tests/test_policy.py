"""The key policy in $CMKFS_HOME/config.json: capacities, modes, validation."""

from __future__ import annotations

import json

import pytest

from cmkfs.errors import ConfigurationError
from cmkfs.policy import Capacity, load_policy, normalize_url


def write(home, data):
    (home / "config.json").write_text(json.dumps(data))


def test_empty_home_is_an_empty_cmk_policy(isolated_cmkfs_home):
    policy = load_policy()
    assert policy.mode == "cmk" and policy.capacities == {} and policy.default_key is None


def test_cmk_mode_uses_the_tenant_key_everywhere(isolated_cmkfs_home, tmp_path):
    write(
        isolated_cmkfs_home,
        {
            "default_key": "local://tenant",
            "mode": "cmk",
            "capacities": {"sales": {"url": str(tmp_path / "sales"), "key": "local://own"}},
        },
    )
    policy = load_policy()
    assert policy.key_for_url(str(tmp_path / "sales" / "ws" / "f.parquet")) == "local://tenant"
    assert policy.key_for_url(str(tmp_path / "elsewhere")) == "local://tenant"


def test_byok_mode_uses_each_capacitys_key(isolated_cmkfs_home, tmp_path):
    write(
        isolated_cmkfs_home,
        {
            "default_key": "local://tenant",
            "mode": "byok",
            "capacities": {
                "sales": {"url": f"file://{tmp_path}/sales", "key": "local://sales"},
                "hr": {"url": str(tmp_path / "hr")},
            },
        },
    )
    policy = load_policy()
    assert policy.key_for_url(f"{tmp_path}/sales/a/b") == "local://sales"
    assert policy.key_for_url(f"{tmp_path}/hr/x") == "local://tenant"  # no own key: the tenant's
    assert policy.capacity_for(f"file://{tmp_path}/salesforce/x") is None  # a root is a path, not a prefix
    url, capacity = policy.resolve("sales")
    assert capacity is not None and capacity.name == "sales" and url == f"file://{tmp_path}/sales"


def test_changes_round_trip_and_keep_unknown_settings(isolated_cmkfs_home, tmp_path):
    write(isolated_cmkfs_home, {"default_key": "local://t", "some_future_setting": {"a": 1}})
    policy = load_policy()
    policy.add("sales", str(tmp_path / "sales"), "local://sales")
    policy.mode = "byok"
    policy.save()
    again = load_policy()
    assert again.capacities["sales"] == Capacity("sales", normalize_url(str(tmp_path / "sales")), "local://sales")
    assert again.extra == {"some_future_setting": {"a": 1}} and again.mode == "byok"
    with pytest.raises(ConfigurationError, match="overlaps"):
        again.add("inner", str(tmp_path / "sales" / "ws"))
    with pytest.raises(ConfigurationError, match="already exists"):
        again.add("sales", str(tmp_path / "other"))


@pytest.mark.parametrize(
    "bad",
    [
        {"mode": "both"},
        {"cache_ttl": 7200},
        {"trusted_vaults": "v.vault.azure.net"},
        {"capacities": {"bad name!": {"url": "file:///x"}}},
        {"capacities": {"sales": {"key": "local://k"}}},
        {"azure": ["not", "an", "object"]},
    ],
)
def test_bad_policy_is_a_configuration_error_naming_the_file(isolated_cmkfs_home, bad):
    write(isolated_cmkfs_home, bad)
    with pytest.raises(ConfigurationError, match="config.json|capacity name|cache_ttl"):
        load_policy()


def test_normalize_url():
    assert normalize_url("cmk::file:///data/sales/") == "file:///data/sales"
    assert normalize_url("ABFS://container/x") == "abfs://container/x"
