"""fsspec's transaction, made all-or-nothing for encrypted writes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fsspec.transaction import Transaction

from .errors import CMKError
from .files import WriteState

if TYPE_CHECKING:
    from .files import CMKWriteFile

__all__ = ["CMKTransaction", "TransactionError"]

# How many unready files a TransactionError names.
SHOWN_FILES = 5


class TransactionError(CMKError, RuntimeError):
    """A transaction ended cleanly but one of its files was not ready to
    publish (discarded, failed or still open): nothing was published."""


class CMKTransaction(Transaction):  # type: ignore[misc]  # fsspec is untyped
    """Files written inside ``with fs.transaction:`` are sealed when closed
    and published together when the block ends without an exception.  If the
    block fails, or any of its files was discarded, failed or is still open,
    every file is discarded and the previous versions stay.

    Nested blocks (a helper that opens its own transaction inside the
    caller's) join the outermost one: only its end publishes, and an
    exception leaving any inner block dooms the whole transaction.

    Publishing is one atomic step per file (a rename, a block-list commit),
    taken only after every file is sealed: a storage failure during those
    last steps leaves the files before it published and the rest discarded,
    each of them whole.
    """

    fs: Any  # the filesystem while the transaction runs, None after

    def __init__(self, fs: Any, **kwargs: Any) -> None:
        super().__init__(fs, **kwargs)
        self.depth = 0
        self._doomed: str | None = None

    def start(self) -> None:
        if self.depth == 0:
            self.files.clear()
            self._doomed = None
            self.fs._intrans = True
        self.depth += 1

    def __enter__(self) -> CMKTransaction:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        self.end(failed=exc_type)

    def end(self, failed: type[BaseException] | None = None) -> None:
        """Leave one level; the outermost publishes (or discards)."""
        if failed is not None and self._doomed is None:
            self._doomed = f"a block inside it failed ({failed.__name__})"
        self.depth = max(0, self.depth - 1)
        if self.depth == 0:
            self.complete(commit=failed is None)

    def complete(self, commit: bool = True) -> None:
        files: list[CMKWriteFile] = list(self.files)
        self.files.clear()
        published = 0
        try:
            if commit and self._doomed is not None:
                commit = False
                raise TransactionError(f"transaction not published, no file was written: {self._doomed}")
            if commit:
                unready = [f for f in files if f.state not in (WriteState.SEALED, WriteState.COMMITTED)]
                if unready:
                    commit = False
                    raise TransactionError(f"transaction not published, no file was written: {_describe(unready)}")
                for f in files:
                    f.commit()
                    published += 1
        finally:
            for f in files[published:]:
                try:
                    f.discard()
                except Exception:  # noqa: BLE001 - the first error is the one to report
                    pass
            self.depth = 0
            if self.fs is not None:
                self.fs._intrans = False
                self.fs._transaction = None
                self.fs = None


def _describe(files: list[CMKWriteFile]) -> str:
    return ", ".join(
        f"{f.path} ({'still open' if f.state is WriteState.OPEN else f.state.value})" for f in files[:SHOWN_FILES]
    )
