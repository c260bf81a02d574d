"""Markers shared by several test files."""

from __future__ import annotations

import pytest


def _pandas_parses_chained_urls() -> bool:
    try:
        import pandas
    except ImportError:
        return False
    return int(pandas.__version__.split(".")[0]) >= 3


# pandas 2.x (the last series for Python 3.10) hands only single-protocol URLs
# to fsspec: "cmk::file://..." is refused before cmkfs is reached.
# docs/FILESYSTEM.md says what to use there instead.
needs_pandas_chained_urls = pytest.mark.skipif(
    not _pandas_parses_chained_urls(), reason="pandas < 3 does not pass chained URLs (cmk::file://) to fsspec"
)
