"""Hypothesis strategies for the streaming engine.

Plaintexts are drawn as ``(size, seed)`` and expanded deterministically,
so large files cost no shrinking effort; sizes cluster around segment
boundaries, where the engine's edge cases live.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests._helpers_core import pattern

# 4096 is the minimum; 5000 is not a power of two, so no accidental alignment.
SEGMENT_SIZES = (4096, 5000, 8192)

# The conftest's autouse fixture only sets environment variables; sharing it
# across examples is harmless.
PROPERTY_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


segment_sizes = st.sampled_from(SEGMENT_SIZES)


@st.composite
def sizes_near_boundaries(draw, segment_size: int, max_segments: int = 5) -> int:
    """A plaintext size, often exactly on or one off a segment boundary."""
    k = draw(st.integers(0, max_segments))
    delta = draw(st.sampled_from([-1, 0, 1, None]))
    if delta is None:
        return draw(st.integers(0, max_segments * segment_size + 1000))
    return max(0, k * segment_size + delta)


@st.composite
def plaintexts(draw, segment_size: int, max_segments: int = 5) -> bytes:
    size = draw(sizes_near_boundaries(segment_size, max_segments))
    seed = draw(st.integers(0, 2**16))
    return pattern(size, salt=seed)


def write_steps(segment_size: int):
    """How a producer splits its output: lists of write sizes (cycled)."""
    step = st.one_of(
        st.integers(1, 16),
        st.sampled_from([segment_size - 1, segment_size, segment_size + 1, 2 * segment_size + 3]),
        st.integers(1, 3 * segment_size),
    )
    return st.lists(step, min_size=1, max_size=6)


@st.composite
def read_ranges(draw, size: int) -> tuple[int, int]:
    """``(offset, length)``; length -1 means "to the end"."""
    offset = draw(st.integers(0, size + 10))
    length = draw(st.one_of(st.just(-1), st.integers(0, size + 10)))
    return offset, length
