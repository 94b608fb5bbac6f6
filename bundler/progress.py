"""Progress reporting as a small interface, so library code never prints."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Receives progress of one long step at a time (download, tree build, compression)."""

    def start(self, label: str, total: int | None = None, unit: str = "B") -> None:
        """A step begins; ``total`` is counted in ``unit`` ("B" for bytes, or e.g. "wheels")."""

    def advance(self, amount: int = 1) -> None:
        """``amount`` more units are done."""

    def finish(self) -> None:
        """The current step is done."""


class NullProgress:
    """Reports nothing: the default for library callers and non-terminal output."""

    def start(self, label: str, total: int | None = None, unit: str = "B") -> None:
        pass

    def advance(self, amount: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass
