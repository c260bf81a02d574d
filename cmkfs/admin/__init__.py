"""Operating a store: ``status`` (which files are under which key), ``verify`` (authenticate every
byte) and ``clean`` (remove temp files of killed writers), over a capacity or a URL.  The user's
view: docs/KEYS.md ("Status, verify, clean")."""

from .clean import DEFAULT_GRACE, CleanResult, clean_partials
from .keystate import KeyState, key_state
from .status import IN_SYNC, NOT_IN_SYNC, STATES, FileStatus, StoreStatus, store_status
from .verify import OUTCOMES, VerifyResult, reading_filesystem, verify_file, verify_tree
from .walk import DEFAULT_WORKERS, FileEntry, list_files, run_bounded, stderr_progress

__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_WORKERS",
    "IN_SYNC",
    "NOT_IN_SYNC",
    "OUTCOMES",
    "STATES",
    "CleanResult",
    "FileEntry",
    "FileStatus",
    "KeyState",
    "StoreStatus",
    "VerifyResult",
    "clean_partials",
    "key_state",
    "reading_filesystem",
    "list_files",
    "run_bounded",
    "stderr_progress",
    "store_status",
    "verify_file",
    "verify_tree",
]
