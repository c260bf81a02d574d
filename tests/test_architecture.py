"""The layer rules of docs/ARCHITECTURE.md, checked on the source: a module
imports only from its own layer or the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "cmkfs"

# Top-level module or package name -> layer (docs/ARCHITECTURE.md).
LAYERS = {
    "errors": 0,
    "secret": 0,
    "wipe": 0,
    "clock": 0,
    "config": 0,
    "atomicfile": 0,
    "format": 1,
    "segment": 1,
    "keys": 2,
    "providers": 2,
    "keycache": 2,
    "policy": 2,
    "azure_preflight": 2,
    "audit": 2,
    "stream": 3,
    "targets": 4,
    "targets_azure": 4,  # targets_azure: the deprecated path of targets.azure
    "filesystem": 5,
    "files": 5,
    "transactions": 5,
    "delegation": 5,
    "cache_guard": 5,
    "sizes": 5,
    "rewrap": 5,
    "admin": 5,
    "mount": 5,
    "cli": 6,
    "workloads": 6,  # what the demo refreshes and the benchmarks measure: through any fsspec filesystem
}
# Cross-cutting: the fork hook may be imported by anyone and import anything;
# the package root re-exports; testing ships fake vaults; __main__ starts the CLI.
ANYWHERE = {"forksafe"}
EXEMPT = {"__init__", "__main__", "forksafe", "testing"}


def _top(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _cmkfs_imports(path: Path) -> set[str]:
    """Top-level cmkfs modules that ``path`` imports (anywhere in the file)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package_parts = path.relative_to(PACKAGE).parts[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and node.module.split(".")[0] == "cmkfs":
                    parts = node.module.split(".")[1:]
                    found.add(parts[0] if parts else node.names[0].name)
                continue
            base = list(package_parts[: len(package_parts) - (node.level - 1)])
            parts = base + (node.module.split(".") if node.module else [])
            if parts:
                found.add(parts[0])
            else:  # "from . import x" at the package root
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "cmkfs" and len(parts) > 1:
                    found.add(parts[1])
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if _top(p) not in EXEMPT)


def test_every_module_has_a_layer():
    unknown = {_top(p) for p in MODULES} - set(LAYERS)
    assert not unknown, f"add these to docs/ARCHITECTURE.md and LAYERS: {sorted(unknown)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_the_layers(path):
    own = LAYERS[_top(path)]
    upward = {name for name in _cmkfs_imports(path) - ANYWHERE if name in LAYERS and LAYERS[name] > own}
    assert not upward, f"{path.relative_to(PACKAGE)} (layer {own}) imports {sorted(upward)} from above"


def test_the_checker_sees_imports():
    # A guard against a checker that passes because it finds nothing.
    assert {"stream", "targets", "keycache"} <= _cmkfs_imports(PACKAGE / "filesystem.py")
