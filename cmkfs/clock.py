"""The clock that key deadlines are measured on.

A cached data key is usable for at most the cache TTL from the moment the
vault last confirmed it.  That promise is about elapsed *real* time, so the
clock must never go back (changing the wall clock must not extend a key) and
must keep counting while the host is suspended: ``time.monotonic()`` does not
on Linux or macOS, so a laptop or VM suspended for two hours would wake up
with keys it still counted as fresh.

* Linux: ``CLOCK_BOOTTIME`` (``CLOCK_MONOTONIC`` plus time spent suspended).
* macOS: ``clock_gettime(CLOCK_MONOTONIC)``, which Apple documents as counting
  while the system is asleep (``time.monotonic()`` there is
  ``mach_absolute_time()``, which stops).
* Elsewhere (Windows, the BSDs): ``time.monotonic()``, which may or may not
  count suspended time; :data:`COUNTS_SUSPEND` is then ``False``.

Deadlines are values of this clock; it is system-wide, so they keep their
meaning in a forked child.
"""

from __future__ import annotations

import sys
import time

__all__ = ["key_clock", "KEY_CLOCK_NAME", "COUNTS_SUSPEND"]


def _choose() -> tuple[str, int | None]:
    if sys.platform.startswith("linux"):
        name = "CLOCK_BOOTTIME"
    elif sys.platform == "darwin":
        name = "CLOCK_MONOTONIC"
    else:
        return "time.monotonic", None
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

    def key_clock() -> float:
        """Seconds on the key-deadline clock: never goes back, counts suspended time."""
        return time.clock_gettime(_CLOCK_ID)
