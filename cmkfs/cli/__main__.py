"""``python -m cmkfs.cli``: the same as the ``cmkfs`` command."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
