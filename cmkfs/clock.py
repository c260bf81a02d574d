"""The clock that key deadlines are measured on (docs/SECURITY.md, "The TTL promise").

A cached data key is usable for at most the cache TTL of elapsed *real* time,
so the clock must never go back (changing the wall clock must not extend a
key) and must keep counting while the host is suspended, which
``time.monotonic()`` does not do on Linux or macOS.  It is system-wide, so
deadlines keep their meaning in a forked child.
"""

from __future__ import annotations

import sys
import time

__all__ = ["key_clock", "KEY_CLOCK_NAME", "COUNTS_SUSPEND"]


def _choose() -> tuple[str, int | None]:
    if sys.platform.startswith("linux"):
        name = "CLOCK_BOOTTIME"  # CLOCK_MONOTONIC plus the time spent suspended
    elif sys.platform == "darwin":
        # Apple documents clock_gettime(CLOCK_MONOTONIC) as counting while asleep;
        # time.monotonic() there is mach_absolute_time(), which stops.
        name = "CLOCK_MONOTONIC"
    else:
        return "time.monotonic", None  # Windows, the BSDs: suspended time not promised
    clock_id = getattr(time, name, None)
    if clock_id is None:
        return "time.monotonic", None
    try:
        time.clock_gettime(clock_id)
    except OSError:  # a kernel too old to know it (Linux < 2.6.39)
        return "time.monotonic", None
    return name, clock_id


KEY_CLOCK_NAME, _CLOCK_ID = _choose()
COUNTS_SUSPEND = _CLOCK_ID is not None

if _CLOCK_ID is None:

    def key_clock() -> float:
        """Seconds on the key-deadline clock (here ``time.monotonic()``)."""
        return time.monotonic()

else:
    _SUSPEND_CLOCK_ID: int = _CLOCK_ID

    def key_clock() -> float:
        """Seconds on the key-deadline clock: never goes back, counts suspended time."""
        return time.clock_gettime(_SUSPEND_CLOCK_ID)
