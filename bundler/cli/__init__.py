"""The `airgap` command: parse options, call one library function, print; one error funnel.

Each command group lives in its own module and registers on the one click group; ``main``
runs it and returns the exit code (for tests).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import EXIT_ERROR
from . import (  # noqa: F401 - importing them registers the commands
    audit,
    cache,
    delta,
    docker,
    fleet,
    isolated,
    kit,
    online,
    ops,
    parts,
    trust,
)
from ._common import cli

__all__ = ["cli", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv``; return the exit code instead of exiting (for tests)."""
    try:
        cli.main(
            args=list(argv) if argv is not None else None, prog_name="airgap", standalone_mode=True
        )
    except SystemExit as e:
        code = e.code
        if code is None:
            return 0
        return code if isinstance(code, int) else EXIT_ERROR
    return 0
