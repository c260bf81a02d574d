"""Rendered report images: charts of refreshed data, drawn with matplotlib and returned as PNG bytes.

A report service renders on worker threads, so this never touches pyplot's global figure registry: each chart
is its own :class:`matplotlib.figure.Figure` on the Agg canvas, which needs no display and shares no state.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["bar_chart", "line_chart", "PNG_SIGNATURE"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SIZE = (6.4, 3.6)  # inches; at 100 dpi a 640 x 360 image, the size of a report tile
_DPI = 100
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    out = io.BytesIO()
    # Fixed metadata: the same data gives the same bytes (no software version or date in the file).
    figure.savefig(out, format="png", dpi=_DPI, metadata={"Software": None})
    return out.getvalue()


def bar_chart(values: Mapping[str, float], *, title: str, ylabel: str) -> bytes:
    """One bar per key, labelled with its value."""
    figure = Figure(figsize=_SIZE, layout="constrained")
    axes = figure.add_subplot()
    names = list(values)
    bars = axes.bar(names, [values[n] for n in names], color=_COLOURS[: len(names)] or None)
    axes.bar_label(bars, labels=[f"{values[n]:,.0f}" for n in names], padding=2, fontsize=8)
    axes.set_title(title)
    axes.set_ylabel(ylabel)
    axes.spines[["top", "right"]].set_visible(False)
    return _png(figure)


def line_chart(x: Sequence[Any], series: Mapping[str, Sequence[float]], *, title: str, ylabel: str) -> bytes:
    """One line per series over a shared x axis (e.g. months)."""
    figure = Figure(figsize=_SIZE, layout="constrained")
    axes = figure.add_subplot()
    for colour, (name, ys) in zip(_COLOURS * (len(series) // len(_COLOURS) + 1), series.items(), strict=False):
        axes.plot(list(x), list(ys), label=name, color=colour, linewidth=1.5)
    axes.set_title(title)
    axes.set_ylabel(ylabel)
    axes.legend(fontsize=8, frameon=False)
    axes.spines[["top", "right"]].set_visible(False)
    figure.autofmt_xdate()
    return _png(figure)
