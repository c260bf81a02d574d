"""The generated tables and rendered charts the demo refreshes and the benchmarks reuse."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image

from cmkfs.workloads.datasets import DEPARTMENTS, REGIONS, hr_table, sales_table
from cmkfs.workloads.reports import PNG_SIGNATURE, bar_chart, line_chart


def test_sales_table_is_deterministic_and_shaped_like_order_lines():
    table = sales_table(5_000)
    assert table.equals(sales_table(5_000))
    assert not table.equals(sales_table(5_000, seed=12))
    assert table.num_rows == 5_000
    assert table.schema.field("order_date").type == pa.date32()
    assert set(pc.unique(table.column("region")).to_pylist()) == set(REGIONS)
    assert pc.min(table.column("quantity")).as_py() >= 1
    # revenue = quantity x unit price x (1 - discount), to the cent
    expected = pc.round(
        pc.multiply(
            pc.multiply(pc.cast(table.column("quantity"), pa.float64()), table.column("unit_price")),
            pc.subtract(1.0, pc.cast(table.column("discount"), pa.float64())),
        ),
        2,
    )
    assert pc.max(pc.abs(pc.subtract(expected, table.column("revenue")))).as_py() < 0.011
    # anonymous buyers have no customer id, as real order data does
    assert 0 < table.column("customer_id").null_count < 5_000 * 0.1


def test_hr_table_has_leavers_after_their_hire_date():
    table = hr_table(2_000)
    assert set(pc.unique(table.column("department")).to_pylist()) <= set(DEPARTMENTS)
    left = table.filter(pc.is_valid(table.column("termination_date")))
    assert 0 < left.num_rows < table.num_rows
    assert pc.all(pc.greater_equal(left.column("termination_date"), left.column("hire_date"))).as_py()


@pytest.mark.parametrize("rows", [0, 1])
def test_tiny_tables(rows):
    assert sales_table(rows).num_rows == rows
    assert hr_table(rows).num_rows == rows


def test_charts_are_real_pngs_of_report_tile_size_and_reproducible():
    bar = bar_chart({"north": 10.0, "south": 7.5}, title="Revenue", ylabel="revenue")
    line = line_chart([1, 2, 3], {"store": [1.0, 2.0, 1.5], "online": [0.5, 1.0, 3.0]}, title="t", ylabel="y")
    for png in (bar, line):
        assert png.startswith(PNG_SIGNATURE)
        with Image.open(io.BytesIO(png)) as image:
            assert image.size == (640, 360)
            # a chart, not a blank tile: several colours are drawn
            assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or ()) > 10
    assert bar_chart({"north": 10.0, "south": 7.5}, title="Revenue", ylabel="revenue") == bar
