"""Which fsspec methods the ``cmk`` filesystem inherits, and the refusal of the rest.

An encrypting layer must not let a method it never reviewed reach the
target: that method would write or read plaintext as it is.  So every
public method of the base classes is either written out in
:class:`~cmkfs.filesystem.CMKFileSystem`, inherited from fsspec where its
generic body reaches content only through methods written out there
(:data:`ROUTED_METHODS`, with the method each relies on), harmless metadata
(:data:`META_METHODS`), or refused by :func:`fail_closed`.  A method added by
a later fsspec release is refused until someone reviews it.
"""

from __future__ import annotations

from typing import Any, NoReturn

from .errors import UnsupportedOperationError

__all__ = ["ROUTED_METHODS", "META_METHODS", "REFUSED_METHODS", "DUCK_TYPED_HOOKS", "fail_closed"]

ROUTED_METHODS: dict[str, str] = {
    "cat": "cat_file",
    "cat_ranges": "cat_file",
    "read_block": "open",
    "head": "open",
    "tail": "open",
    "read_bytes": "cat_file",
    "read_text": "open",
    "write_bytes": "pipe_file",
    "write_text": "open",
    "pipe": "pipe_file",
    "get": "get_file",
    "download": "get -> get_file",
    "put": "put_file",
    "upload": "put -> put_file",
    "copy": "cp_file",
    "cp": "copy -> cp_file",
    "move": "mv",
    "rename": "mv",
    "delete": "rm",
    "walk": "ls",
    "glob": "find",
    "expand_path": "find/glob/isdir",
    "tree": "ls",
    "size": "info",
    "sizes": "info",
    "stat": "info",
    "listdir": "ls",
    "disk_usage": "du -> find",
    "lexists": "exists",
    "makedir": "mkdir",
    "mkdirs": "makedirs",
    "get_mapper": "cat/pipe/rm/find",
}
# No file content involved: construction, serialisation, names.
META_METHODS = frozenset(
    {
        "clear_instance_cache",
        "current",
        "from_dict",
        "from_json",
        "to_dict",
        "to_json",
        "unstrip_protocol",
        "mirror_sync_methods",
    }
)
# Refused outright, with the reason the caller sees.
REFUSED_METHODS: dict[str, str] = {
    "sign": "a signed URL would hand out ciphertext that only cmkfs can read; read through cmk:// instead",
}
# Attributes fsspec (core.OpenFiles, open_local, utils.can_be_local, fuse)
# looks up on a filesystem by name with hasattr/getattr, outside the
# AbstractFileSystem API.  Each must be written out in CMKFileSystem or be
# absent from every base class; otherwise fail_closed refuses it.
DUCK_TYPED_HOOKS = frozenset({"open_many", "commit_many", "local_file", "chmod"})

UNREVIEWED = "not reviewed for encrypted content in this cmkfs release"


def _refuser(name: str, reason: str) -> Any:
    def refused(self: object, *args: object, **kwargs: object) -> NoReturn:
        raise UnsupportedOperationError(f"{name}: {reason}")

    refused.__name__ = name
    refused.__doc__ = f"Refused over encrypted files: {reason}."
    return refused


def _refused_hook(name: str, reason: str) -> property:
    def refused(self: object) -> NoReturn:
        raise UnsupportedOperationError(f"{name}: {reason}")

    return property(refused, doc=f"Refused over encrypted files: {reason}.")


def fail_closed(cls: type) -> None:
    """Refuse on ``cls`` every public method of its base classes, and every
    duck-typed hook they define, that it neither writes out nor lists here."""
    for name, reason in REFUSED_METHODS.items():
        setattr(cls, name, _refuser(name, reason))
    bases = cls.__mro__[1:]
    public = {name for base in bases for name in dir(base) if not name.startswith("_")}
    for name in sorted(public):
        if name in cls.__dict__ or name in ROUTED_METHODS or name in META_METHODS:
            continue
        attr = getattr(cls, name)  # the base's, through the MRO
        if callable(attr) and not isinstance(attr, type):
            setattr(cls, name, _refuser(name, UNREVIEWED))
    for name in sorted(DUCK_TYPED_HOOKS):
        # fsspec tests these with hasattr/getattr: inherited from any base
        # (methods or plain values alike), they would act unreviewed.
        if name in cls.__dict__ or not any(name in vars(base) for base in bases):
            continue
        inherited = getattr(cls, name)
        if callable(inherited) and not isinstance(inherited, type):
            setattr(cls, name, _refuser(name, UNREVIEWED))
        else:
            setattr(cls, name, _refused_hook(name, UNREVIEWED))
