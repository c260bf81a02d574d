"""``python -m cmkfs``: the same as the ``cmkfs`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
