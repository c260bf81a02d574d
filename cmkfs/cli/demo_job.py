"""The workload behind ``cmkfs demo``: the refresh of two capacities of an analytics service whose customer
holds the keys, on local disk with the embedded vault — in a scratch directory of its own.

The demo never touches the user's keys or policy: it makes ``DIR/home`` (a vault with a tenant key and an
``hr`` key, and a policy with two capacities) and ``DIR/store`` (the ciphertext), and while it runs
``$CMKFS_HOME`` names that home.  The steps are numbered in :func:`run_demo`; it reports through ``say``
what it did to files and keys, never key material.  It needs no click (the demo command is its caller).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds

from ..config import ENV_AUDIT, ENV_HOME, ENV_KEY, environment
from ..errors import ConfigurationError, KeyRevokedError
from ..format import MAGIC, ContentClass

__all__ = ["run_demo", "DemoResult", "MARKER", "REVOCATION_TTL"]

MARKER = ".cmkfs-demo"  # marks a directory the demo made, so a re-run may empty it and nothing else
TENANT_KEY = "tenant"  # CMK: the one tenant key, for every capacity without a key of its own
HR_KEY = "hr"  # BYOK: the hr capacity's own key
AUDIT_LOG = "audit.log"  # in the demo's home: every key operation of the demo, one JSON line each
REVOCATION_TTL = 3.0  # seconds: the report reader's key cache, short so revocation shows in real time
# Byte strings that would betray plaintext on disk: file-format signatures and words of the data.
PLAINTEXT_MARKERS = (b"PAR1", b"\x89PNG", b"ARROW1", b"road bike", b"engineering", b"Amsterdam", b"order_date")


@dataclass
class CapacityResult:
    name: str
    root: str
    key_uri: str
    rows: int = 0
    dataset_files: int = 0
    model_files: int = 0
    images: list[str] = field(default_factory=list)
    model_reads_back_equal: bool = False
    refresh_seconds: float = 0.0


@dataclass
class DemoResult:
    directory: str
    home: str
    capacities: dict[str, CapacityResult] = field(default_factory=dict)
    ciphertext_files: int = 0
    ciphertext_bytes: int = 0
    revenue_by_region: dict[str, float] = field(default_factory=dict)
    headcount_by_department: dict[str, int] = field(default_factory=dict)
    ttl: float = REVOCATION_TTL
    hr_served_from_cache_after_disable: bool = False
    new_reader_refused_at_once: bool = False
    hr_refused_after_seconds: float | None = None
    sales_readable_while_hr_revoked: bool = False
    hr_restored_after_enable: bool = False
    seconds: float = 0.0

    @property
    def revocation_held(self) -> bool:
        refused = self.hr_refused_after_seconds
        return (
            refused is not None
            and refused <= self.ttl + 1.0
            and self.new_reader_refused_at_once
            and self.sales_readable_while_hr_revoked
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "revocation_held": self.revocation_held}


# -- the scratch directory ------------------------------------------------------------------------------------------


def prepare_directory(directory: Path) -> None:
    """Make ``directory`` the demo's, emptied of a previous run; refuse a directory the demo did not make.

    Only ``home/`` and ``store/`` are removed, and only as real directories: a symbolic link there
    could point at someone's real vault, which the demo must never write to or delete.
    """
    marker = directory / MARKER
    if directory.exists() and any(directory.iterdir()) and (marker.is_symlink() or not marker.is_file()):
        raise ConfigurationError(
            f"{directory} is not empty and was not made by cmkfs demo: pass --dir a new or empty directory"
        )
    for child in (directory / "home", directory / "store"):
        if child.is_symlink() or (child.exists() and not child.is_dir()):
            raise ConfigurationError(f"{child} is not a directory the demo made: remove it or pass another --dir")
    for child in (directory / "home", directory / "store"):
        if child.exists():
            shutil.rmtree(child)  # errors raise: a half-emptied home must not be reused
    directory.mkdir(parents=True, exist_ok=True)
    marker.write_text("made by `cmkfs demo`; a re-run empties home/ and store/\n", encoding="utf-8")
    (directory / "home").mkdir(mode=0o700)
    (directory / "store").mkdir()


@contextmanager
def demo_environment(home: Path) -> Iterator[None]:
    """``$CMKFS_HOME`` names the demo's home, its audit log is ``home/audit.log``, and no ambient key applies."""
    with environment(**{ENV_HOME: str(home), ENV_AUDIT: str(home / AUDIT_LOG), ENV_KEY: None}):
        yield


def set_up_keys_and_capacities(home: Path, store: Path) -> dict[str, str]:
    """A tenant key (default, for every capacity: CMK) and an ``hr`` key (that capacity's own: BYOK)."""
    from ..policy import edit_policy
    from ..providers.local import LocalVaultProvider

    vault = LocalVaultProvider(home=home)
    # No passphrase: scratch keys of a demo; a real tenant key would be protected (docs/KEYS.md).
    tenant = vault.create(TENANT_KEY, protect=False).key_uri
    hr = vault.create(HR_KEY, protect=False).key_uri
    with edit_policy(home) as policy:
        policy.default_key = tenant
        policy.mode = "byok"
        policy.add("sales", str(store / "sales"))
        policy.add("hr", str(store / "hr"), hr)
    return {"sales": tenant, "hr": hr}


# -- the refresh ----------------------------------------------------------------------------------------------------


def _refresh(fs: Any, result: CapacityResult, table: pa.Table, partition: str) -> None:
    from ..workloads.vertipaq import read_model, write_model

    t0 = time.perf_counter()
    ds.write_dataset(
        table,
        f"{result.root}/dataset",
        filesystem=fs,
        format="parquet",
        partitioning=[partition],
        partitioning_flavor="hive",
        existing_data_behavior="delete_matching",
    )
    model = write_model(fs, f"{result.root}/model", table, open_kwargs={"content_class": ContentClass.VERTIPAQ})
    result.rows = table.num_rows
    result.dataset_files = len(fs.find(f"{result.root}/dataset"))
    result.model_files = len(model.files)
    result.model_reads_back_equal = read_model(fs, f"{result.root}/model").equals(table)
    result.refresh_seconds = round(time.perf_counter() - t0, 2)


def _read_sales_report(fs: Any, root: str) -> tuple[dict[str, float], dict[str, bytes]]:
    """What a report reads: a column or two and the partition key, aggregated; and the charts it renders."""
    from ..workloads.reports import bar_chart, line_chart

    dataset = ds.dataset(f"{root}/dataset", filesystem=fs, format="parquet", partitioning="hive")
    frame = dataset.to_table(columns=["region", "order_date", "channel", "revenue"]).to_pandas()
    by_region = frame.groupby("region")["revenue"].sum().round(2).sort_index()
    frame["month"] = frame["order_date"].astype("datetime64[s]").dt.to_period("M").dt.to_timestamp()
    monthly = frame.pivot_table(index="month", columns="channel", values="revenue", aggfunc="sum").fillna(0.0)
    images = {
        "revenue-by-region.png": bar_chart(by_region.to_dict(), title="Revenue by region", ylabel="revenue"),
        "revenue-by-month.png": line_chart(
            list(monthly.index),
            {str(c): list(monthly[c]) for c in monthly.columns},
            title="Revenue per month and channel",
            ylabel="revenue",
        ),
    }
    return {str(k): float(v) for k, v in by_region.items()}, images


def _read_hr_report(fs: Any, root: str) -> tuple[dict[str, int], dict[str, bytes]]:
    from ..workloads.reports import bar_chart

    dataset = ds.dataset(f"{root}/dataset", filesystem=fs, format="parquet", partitioning="hive")
    frame = dataset.to_table(columns=["department", "termination_date", "salary"]).to_pandas()
    active = frame[frame["termination_date"].isna()]
    headcount = active.groupby("department").size().sort_index()
    salary = active.groupby("department")["salary"].median().sort_index()
    images = {
        "headcount.png": bar_chart(headcount.to_dict(), title="Headcount by department", ylabel="people"),
        "median-salary.png": bar_chart(salary.to_dict(), title="Median salary by department", ylabel="salary"),
    }
    return {str(k): int(v) for k, v in headcount.items()}, images


def _publish_images(fs: Any, result: CapacityResult, images: dict[str, bytes]) -> None:
    fs.makedirs(f"{result.root}/reports", exist_ok=True)
    for name, png in images.items():
        path = f"{result.root}/reports/{name}"
        with fs.open(path, "wb", content_class=ContentClass.IMAGE) as f:
            f.write(png)
        result.images.append(path)


def _check_ciphertext(store: Path, result: DemoResult) -> None:
    """Every stored byte is ciphertext: each file starts with the cmkfs magic and holds no plaintext marker."""
    for path in sorted(store.rglob("*")):
        if not path.is_file():
            continue
        raw = path.read_bytes()
        if not raw.startswith(MAGIC) or any(m in raw for m in PLAINTEXT_MARKERS):
            raise ConfigurationError(f"{path} is not cmkfs ciphertext")
        result.ciphertext_files += 1
        result.ciphertext_bytes += len(raw)


# -- revocation -----------------------------------------------------------------------------------------------------


def _revoke_hr(home: Path, result: DemoResult, say: Callable[[str], None]) -> None:
    """Disable the hr key under a running report reader and time how long its cached keys still serve."""
    from ..providers.local import LocalVaultProvider

    reader = fsspec.filesystem("cmk", target_protocol="file", cache_ttl=result.ttl, skip_instance_cache=True)
    hr_image = result.capacities["hr"].images[0]
    sales_image = result.capacities["sales"].images[0]
    reader.cat_file(hr_image)  # the reader now holds hr's data key, for at most the TTL
    reader.cat_file(sales_image)
    vault = LocalVaultProvider(home=home)
    vault.disable(HR_KEY)
    disabled_at = time.monotonic()
    try:
        say(
            f"a report reader (the process that renders dashboards; its key cache TTL is {result.ttl:g} s) has just "
            "read both capacities"
        )
        say(f"the customer disables {result.capacities['hr'].key_uri} in the vault: the key the hr capacity brought")
        # A reader that starts now has nothing cached: the vault refuses it at once.
        newcomer = fsspec.filesystem("cmk", target_protocol="file", cache_ttl=result.ttl, skip_instance_cache=True)
        try:
            newcomer.cat_file(hr_image)
        except KeyRevokedError:
            result.new_reader_refused_at_once = True
            say("  a reader that starts now is refused at once: there is no key left to unwrap its data keys")
        try:
            reader.cat_file(hr_image)
            result.hr_served_from_cache_after_disable = True
            say(f"  the reader may still serve hr from its key cache, for at most the {result.ttl:g} s TTL")
        except KeyRevokedError:
            pass
        while time.monotonic() - disabled_at < result.ttl + 2.0:
            try:
                reader.cat_file(hr_image)
            except KeyRevokedError:
                result.hr_refused_after_seconds = round(time.monotonic() - disabled_at, 2)
                break
            time.sleep(0.1)
        if result.hr_refused_after_seconds is None:
            say(f"  hr was still readable {result.ttl + 2.0:g} s after the key was disabled: the promise did NOT hold")
            return
        say(f"  {result.hr_refused_after_seconds:.1f} s later the running reader is refused too (KeyRevokedError)")
        result.sales_readable_while_hr_revoked = reader.cat_file(sales_image).startswith(b"\x89PNG")
        say("  sales, under the tenant key, is still readable" if result.sales_readable_while_hr_revoked else "")
    finally:
        vault.enable(HR_KEY)
    result.hr_restored_after_enable = reader.cat_file(hr_image).startswith(b"\x89PNG")
    say("enabled the hr key again: hr is readable again" if result.hr_restored_after_enable else "hr NOT restored")


# -- the whole demo -------------------------------------------------------------------------------------------------


def run_demo(
    directory: str | os.PathLike[str],
    *,
    rows: int = 300_000,
    say: Callable[[str], None] = print,
    show_status: Callable[[Path], None] | None = None,
) -> DemoResult:
    """Set up, refresh both capacities, read the reports, prove ciphertext and revocation, in ``directory``."""
    from ..workloads.datasets import hr_table, sales_table

    started = time.perf_counter()
    root = Path(directory).expanduser().resolve()
    prepare_directory(root)
    home, store = root / "home", root / "store"
    result = DemoResult(directory=str(root), home=str(home))
    with demo_environment(home):
        # 1. Keys and capacities, in the demo's own home.
        keys = set_up_keys_and_capacities(home, store)
        say(f"scratch home {home}: an embedded vault with two keys, and a policy with two capacities")
        say(f"  sales -> {store / 'sales'}  under {keys['sales']} (the tenant key: CMK)")
        say(f"  hr    -> {store / 'hr'}  under {keys['hr']} (its own key: BYOK)")
        for name in ("sales", "hr"):
            result.capacities[name] = CapacityResult(name, str(store / name), keys[name])

        # 2. The refresh: a partitioned Parquet dataset and a VertiPaq-style model per capacity, through cmk:: only.
        fs = fsspec.filesystem("cmk", target_protocol="file", skip_instance_cache=True)
        tables = {"sales": (sales_table(rows), "region"), "hr": (hr_table(max(rows // 15, 1)), "department")}
        for name, (table, partition) in tables.items():
            capacity = result.capacities[name]
            _refresh(fs, capacity, table, partition)
            say(
                f"refreshed {name}: {capacity.rows:,} rows -> {capacity.dataset_files} Parquet files and a "
                f"model of {capacity.model_files} files (dictionaries and bit-packed RLE segments), "
                f"read back {'equal' if capacity.model_reads_back_equal else 'NOT EQUAL'}, "
                f"{capacity.refresh_seconds:.1f} s"
            )

        # 3. The reports: read one column or two, aggregate, render charts with matplotlib, store them encrypted.
        result.revenue_by_region, sales_images = _read_sales_report(fs, result.capacities["sales"].root)
        result.headcount_by_department, hr_images = _read_hr_report(fs, result.capacities["hr"].root)
        _publish_images(fs, result.capacities["sales"], sales_images)
        _publish_images(fs, result.capacities["hr"], hr_images)
        say("report: revenue by region " + ", ".join(f"{k} {v:,.0f}" for k, v in result.revenue_by_region.items()))
        say(f"rendered {len(sales_images) + len(hr_images)} report images (PNG, matplotlib) into reports/")

        # 4. What an administrator sees, and what is really on disk.
        if show_status is not None:
            show_status(home)
        _check_ciphertext(store, result)
        say(
            f"on disk: {result.ciphertext_files} files, {result.ciphertext_bytes:,} bytes, every one cmkfs "
            "ciphertext (no Parquet, Arrow or PNG signature, no word of the data)"
        )

        # 5. The customer revokes the hr key.
        _revoke_hr(home, result, say)
    result.seconds = round(time.perf_counter() - started, 1)
    return result
