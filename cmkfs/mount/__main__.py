"""``python -m cmkfs.mount``: the detached mount process that ``cmkfs mount`` starts without
``--foreground``.  It reads its :class:`~cmkfs.mount.runner.MountSpec` as JSON on stdin."""

import sys

from .runner import main_detached

if __name__ == "__main__":
    sys.exit(main_detached())
