"""The tables a refresh loads: a sales fact table and an HR headcount table, generated.

Deterministic for a seed, realistic in shape (dates, categories with skew, money as decimals rounded to cents,
identifiers, nulls where real data has them) and fast enough for a few hundred thousand rows in well under a
second: every column is drawn with numpy in one vectorised call.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

__all__ = ["REGIONS", "DEPARTMENTS", "sales_table", "hr_table"]

REGIONS = ("north", "south", "east", "west")
CHANNELS = ("store", "online", "partner")
CATEGORIES = {
    "bikes": ("road bike", "mountain bike", "city bike", "e-bike"),
    "parts": ("chain", "brake set", "tyre", "saddle", "pedals", "wheel"),
    "clothing": ("jersey", "gloves", "helmet", "jacket"),
    "service": ("tune-up", "repair", "fitting"),
}
DEPARTMENTS = ("engineering", "finance", "operations", "sales", "support", "people")
LEVELS = ("L1", "L2", "L3", "L4", "L5", "L6")
LOCATIONS = ("Amsterdam", "Dublin", "Lisbon", "Seattle", "Singapore", "Toronto")
# Epoch of the generated calendar: two years of orders ending here.
LAST_DAY = dt.date(2026, 11, 30)


def _choice(
    rng: np.random.Generator, values: tuple[str, ...], rows: int, weights: list[float] | None = None
) -> pa.Array:
    p = None if weights is None else np.asarray(weights) / sum(weights)
    ids = rng.choice(len(values), size=rows, p=p)
    # A dictionary array decoded to plain strings: Parquet dictionary-encodes them again on write.
    return pa.DictionaryArray.from_arrays(pa.array(ids, pa.int32()), pa.array(values)).cast(pa.string())


def sales_table(rows: int, *, seed: int = 11) -> pa.Table:
    """Orders of a bicycle retailer: one row per order line."""
    rng = np.random.default_rng(seed)
    products = [(category, product) for category, names in CATEGORIES.items() for product in names]
    product_ids = rng.zipf(1.6, size=rows) % len(products)  # a few products sell most
    base_price = np.array([{"bikes": 900.0, "parts": 45.0, "clothing": 60.0, "service": 80.0}[c] for c, _ in products])
    quantity = rng.integers(1, 6, size=rows).astype(np.int16)
    unit_price = np.round(base_price[product_ids] * rng.uniform(0.8, 1.6, size=rows), 2)
    discount = rng.choice([0.0, 0.05, 0.1, 0.2], size=rows, p=[0.7, 0.15, 0.1, 0.05])
    revenue = np.round(quantity * unit_price * (1 - discount), 2)
    days = rng.integers(0, 730, size=rows)
    order_date = np.datetime64(LAST_DAY, "D") - days.astype("timedelta64[D]")
    # One customer in twenty buys anonymously (no customer id).
    customer = rng.integers(10_000, 60_000, size=rows)
    anonymous = rng.random(rows) < 0.05
    return pa.table(
        {
            "order_id": pa.array(np.arange(1, rows + 1, dtype=np.int64)),
            "order_date": pa.array(order_date, pa.date32()),
            "region": _choice(rng, REGIONS, rows, [0.35, 0.2, 0.3, 0.15]),
            "channel": _choice(rng, CHANNELS, rows, [0.5, 0.4, 0.1]),
            "category": pa.array([products[i][0] for i in range(len(products))]).take(pa.array(product_ids)),
            "product": pa.array([products[i][1] for i in range(len(products))]).take(pa.array(product_ids)),
            "customer_id": pa.array(customer.astype(np.int32), mask=anonymous),
            "quantity": pa.array(quantity),
            "unit_price": pa.array(unit_price),
            "discount": pa.array(discount.astype(np.float32)),
            "revenue": pa.array(revenue),
        }
    )


def hr_table(rows: int, *, seed: int = 23) -> pa.Table:
    """Employees of the same company: the data a separate capacity with its own key would hold."""
    rng = np.random.default_rng(seed)
    level_ids = rng.choice(len(LEVELS), size=rows, p=[0.2, 0.3, 0.25, 0.15, 0.07, 0.03])
    salary = np.round(38_000 * 1.28**level_ids * rng.uniform(0.9, 1.15, size=rows), -2)
    bonus_pct = rng.choice([0.0, 0.05, 0.1, 0.15], size=rows, p=[0.3, 0.4, 0.2, 0.1])
    hire_days = rng.integers(0, 365 * 15, size=rows)
    hire_date = np.datetime64(LAST_DAY, "D") - hire_days.astype("timedelta64[D]")
    # Some people have left: a termination date after their hire date, else null.
    left = rng.random(rows) < 0.12
    tenure = (rng.random(rows) * hire_days).astype("timedelta64[D]")
    termination = hire_date + tenure
    return pa.table(
        {
            "employee_id": pa.array(np.arange(100_001, 100_001 + rows, dtype=np.int32)),
            "department": _choice(rng, DEPARTMENTS, rows, [0.35, 0.08, 0.2, 0.2, 0.12, 0.05]),
            "location": _choice(rng, LOCATIONS, rows),
            "level": pa.array(LEVELS).take(pa.array(level_ids)),
            "hire_date": pa.array(hire_date, pa.date32()),
            "termination_date": pa.array(termination, pa.date32(), mask=~left),
            "salary": pa.array(salary),
            "bonus": pa.array(np.round(salary * bonus_pct, 2)),
        }
    )
