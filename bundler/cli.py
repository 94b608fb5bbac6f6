"""The `airgap` command: parse options, call one library function, print; one error funnel."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

import click

from .errors import EXIT_ERROR, BundleError

P = ParamSpec("P")
R = TypeVar("R")


def _funnel(fn: Callable[P, R]) -> Callable[P, R]:
    """The one place an expected failure becomes a message and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except BundleError as e:
            ctx = click.get_current_context(silent=True)
            as_json = bool(ctx and ctx.params.get("as_json"))
            if as_json:
                click.echo(json.dumps({"ok": False, "error": e.diagnostics(),
                                       "exit_code": e.exit_code}))
            click.echo(e.diagnostics(), err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def emit_json(data: Any) -> None:
    """Print one JSON document for automation (`--json`)."""
    click.echo(json.dumps(data, indent=2, sort_keys=True))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="airgap-bundler", prog_name="airgap")
def cli() -> None:
    """Carry a model, its Python packages and its server into a network with no internet.

    \b
    Online side:    keygen, lock, pack, inspect
    Isolated side:  verify, unpack, serve (local), build / run / stop (Docker)

    \b
    Exit codes: 0 ok, 1 error, 2 usage, 3 bundle rejected.
    """


# ---- commands are registered below; each body is one library call wrapped in _funnel ----


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv``; return the exit code instead of exiting (for tests)."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="airgap",
                 standalone_mode=True)
    except SystemExit as e:
        code = e.code
        if code is None:
            return 0
        return code if isinstance(code, int) else EXIT_ERROR
    return 0
