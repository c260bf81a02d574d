"""What the root options decided, handed to every command."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from ..providers.local import LocalVaultProvider

__all__ = ["CliState", "pass_state"]


@dataclass
class CliState:
    home: Path | None = None

    def vault(self, passphrase: str | None = None) -> LocalVaultProvider:
        from ..providers.local import LocalVaultProvider

        return LocalVaultProvider(self.home, passphrase=passphrase)


pass_state = click.make_pass_decorator(CliState, ensure=True)
