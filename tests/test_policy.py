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


# -- the filesystem follows the policy --------------------------------------------------


def _two_capacities(home, root, mode="byok"):
    from cmkfs.providers.local import LocalVaultProvider

    vault = LocalVaultProvider()
    for name in ("tenant", "sales", "hr"):
        vault.create(name)
    for folder in ("sales/ws1", "hr/ws", "elsewhere"):
        (root / folder).mkdir(parents=True)
    write(
        home,
        {
            "default_key": "local://tenant",
            "mode": mode,
            "cache_ttl": 60,
            "capacities": {
                "sales": {"url": str(root / "sales"), "key": "local://sales"},
                "hr": {"url": str(root / "hr"), "key": "local://hr"},
            },
        },
    )
    return vault


def _key_of(path):
    from cmkfs.stream import BytesSource, read_header

    with open(path, "rb") as f:
        return read_header(BytesSource(f.read())).key_block.key_uri


def test_byok_writes_each_capacity_under_its_key(isolated_cmkfs_home, tmp_path):
    from cmkfs.filesystem import CMKFileSystem

    _two_capacities(isolated_cmkfs_home, tmp_path)
    fs = CMKFileSystem(target_protocol="file", skip_instance_cache=True)
    assert fs.cache_ttl == 60  # from the policy
    for where in ("sales/ws1/a.parquet", "hr/ws/b.csv", "elsewhere/c.bin"):
        fs.pipe_file(str(tmp_path / where), b"x")
    assert _key_of(tmp_path / "sales/ws1/a.parquet") == "local://sales"
    assert _key_of(tmp_path / "hr/ws/b.csv") == "local://hr"
    assert _key_of(tmp_path / "elsewhere/c.bin") == "local://tenant"


def test_cmk_mode_writes_every_capacity_under_the_tenant_key(isolated_cmkfs_home, tmp_path):
    from cmkfs.filesystem import CMKFileSystem

    _two_capacities(isolated_cmkfs_home, tmp_path, mode="cmk")
    fs = CMKFileSystem(target_protocol="file", skip_instance_cache=True)
    fs.pipe_file(str(tmp_path / "sales/a"), b"x")
    assert _key_of(tmp_path / "sales/a") == "local://tenant"


def test_revoking_one_capacitys_key_leaves_the_other_readable(isolated_cmkfs_home, tmp_path):
    from cmkfs.errors import KeyRevokedError
    from cmkfs.filesystem import CMKFileSystem

    vault = _two_capacities(isolated_cmkfs_home, tmp_path)
    fs = CMKFileSystem(target_protocol="file", skip_instance_cache=True)
    fs.pipe_file(str(tmp_path / "sales/a"), b"sales data")
    fs.pipe_file(str(tmp_path / "hr/b"), b"hr data")
    vault.disable("hr")
    fresh = CMKFileSystem(target_protocol="file", skip_instance_cache=True)  # nothing cached yet
    assert fresh.cat_file(str(tmp_path / "sales/a")) == b"sales data"
    with pytest.raises(KeyRevokedError):
        fresh.cat_file(str(tmp_path / "hr/b"))


def test_an_explicit_key_that_contradicts_the_policy_is_refused(isolated_cmkfs_home, tmp_path):
    from cmkfs.filesystem import CMKFileSystem

    _two_capacities(isolated_cmkfs_home, tmp_path)
    fs = CMKFileSystem(target_protocol="file", key="local://tenant", skip_instance_cache=True)
    with pytest.raises(ConfigurationError, match="capacity sales"):
        fs.pipe_file(str(tmp_path / "sales/a"), b"x")
    fs.pipe_file(str(tmp_path / "outside"), b"x")  # no capacity there: the given key
    forced = CMKFileSystem(target_protocol="file", key="local://tenant", override_policy=True, skip_instance_cache=True)
    forced.pipe_file(str(tmp_path / "sales/a"), b"x")
    assert _key_of(tmp_path / "sales/a") == "local://tenant"


def test_the_policy_travels_with_a_pickled_filesystem(isolated_cmkfs_home, tmp_path, monkeypatch):
    """A Dask worker with no configuration of its own writes under the same keys."""
    import pickle

    from cmkfs.filesystem import CMKFileSystem

    _two_capacities(isolated_cmkfs_home, tmp_path)
    blob = pickle.dumps(CMKFileSystem(target_protocol="file", skip_instance_cache=True))
    empty = tmp_path / "worker-home"
    empty.mkdir()
    (empty / "vault").symlink_to(isolated_cmkfs_home / "vault")  # same vault, no config.json
    monkeypatch.setenv("CMKFS_HOME", str(empty))
    CMKFileSystem.clear_instance_cache()
    worker = pickle.loads(blob)
    worker.pipe_file(str(tmp_path / "sales/w"), b"from a worker")
    assert _key_of(tmp_path / "sales/w") == "local://sales"


# -- found in review: other spellings of a path, explicit keys in cmk mode ---------------


def test_a_capacity_reached_through_a_symlink_or_dotdot_keeps_its_key(isolated_cmkfs_home, tmp_path):
    from cmkfs.filesystem import CMKFileSystem

    _two_capacities(isolated_cmkfs_home, tmp_path)
    (tmp_path / "alias").symlink_to(tmp_path / "sales")
    fs = CMKFileSystem(target_protocol="file", skip_instance_cache=True)
    fs.pipe_file(str(tmp_path / "alias" / "ws1" / "a"), b"x")
    fs.pipe_file(f"{tmp_path}/elsewhere/../sales/ws1/b", b"x")
    assert _key_of(tmp_path / "sales/ws1/a") == "local://sales"
    assert _key_of(tmp_path / "sales/ws1/b") == "local://sales"


def test_an_explicit_key_is_checked_in_cmk_mode_too(isolated_cmkfs_home, tmp_path):
    from cmkfs.filesystem import CMKFileSystem

    _two_capacities(isolated_cmkfs_home, tmp_path, mode="cmk")
    rogue = CMKFileSystem(target_protocol="file", key="local://sales", skip_instance_cache=True)
    with pytest.raises(ConfigurationError, match="capacity sales"):
        rogue.pipe_file(str(tmp_path / "sales/ws1/a"), b"x")
    same = CMKFileSystem(target_protocol="file", key="local://tenant", skip_instance_cache=True)
    same.pipe_file(str(tmp_path / "sales/ws1/a"), b"x")  # the key the policy gives: fine


def test_remote_urls_with_dot_segments_are_refused(isolated_cmkfs_home):
    with pytest.raises(ConfigurationError, match="not allowed"):
        normalize_url("abfs://container/other/../sales")
    write(isolated_cmkfs_home, {"capacities": {"x": {"url": "abfs://c/zz/../c1"}}})
    with pytest.raises(ConfigurationError):
        load_policy()


def test_local_capacity_urls_are_canonical(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert normalize_url(f"{tmp_path}/link/") == normalize_url(f"file://{tmp_path}/x/../real")
