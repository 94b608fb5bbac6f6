"""The operator's checks: `airgap doctor` (before) and `airgap smoke` (after start)."""

from __future__ import annotations

import ssl
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import ParamSpec, TypeVar

import click

from ..deploy.smoke import SmokeResult
from ..errors import EXIT_ERROR, EXIT_SMOKE, UsageError, escape
from ..formats.manifest import Manifest
from ..formats.smoke import SmokeSpec
from ..formats.source import read_regular
from ._common import cli, emit_json, funnel, json_option, trust_options

P = ParamSpec("P")
R = TypeVar("R")

_MARK = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}


@cli.command("doctor")
@click.argument("target", type=click.Path(path_type=Path, exists=True))
@trust_options("Verify the bundle (or DEST's stored manifest) with this key (repeatable).")
@click.option(
    "-p",
    "--port",
    default=5001,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="Port the server will listen on.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address it will listen on.")
@click.option(
    "--dest",
    type=click.Path(path_type=Path),
    help="For a BUNDLE: where it will be unpacked (default: a new folder here).",
)
@json_option
@funnel
def doctor_cmd(
    target: Path,
    trust: tuple[Path, ...],
    port: int,
    host: str,
    dest: Path | None,
    as_json: bool,
) -> None:
    """Check this host for an unpacked DEST or a BUNDLE file (isolated side).

    \b
    Example:
      airgap doctor iris.airgap --trust keys/airgap.pub --dest /srv/iris
      airgap doctor /srv/iris --port 5001 --json
    Reports free space (against what unpack needs), a noexec mount, the bundle's
    manifest (verified with --trust, else read unverified), the host's fit with the
    target, the Python the local runner would use, the Docker engine and its data
    root, and whether the port is free. Each check is ok, warn or FAIL; exit 0 when
    none fails, 1 otherwise. Writes nothing. For a delta (`airgap delta`) a `base`
    line names the base it needs (name, version, manifest sha256) and whether --dest
    holds it, and the space check counts what applying it writes.
    """
    from ..deploy.doctor import diagnose

    report = diagnose(target, trust=trust, port=port, host=host, dest=dest)
    if as_json:
        emit_json(report.to_json_dict())
    else:
        m = report.manifest
        # Names, versions and details quote the bundle and DEST: escaped, one line each.
        what = f"{escape(m.name)} {escape(m.version)}" if m else "unreadable"
        if m and report.delta is not None:
            what = f"{escape(m.name)} {escape(report.delta.base.version)} -> {escape(m.version)}"
        click.echo(f"{report.kind} {escape(str(report.subject))} ({what})")
        for c in report.checks:
            click.echo(f"  {_MARK[c.status]}  {c.name:<9} {escape(c.detail)}")
        fails = sum(c.status == "fail" for c in report.checks)
        click.echo("no problems found" if report.ok else f"{fails} check(s) failed")
    if not report.ok:
        sys.exit(EXIT_ERROR)


def smoke_options(fn: Callable[P, R]) -> Callable[P, R]:
    """--auth-key-file and --cacert of `smoke`."""
    fn = click.option(
        "--cacert",
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        help="CA certificate (PEM) to check an https:// server with.",
    )(fn)
    return click.option(
        "--auth-key-file",
        "smoke_key_file",
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        help="Send its first line as `Authorization: Bearer KEY` (never stored in the bundle).",
    )(fn)


def smoke_extras(
    key_file: Path | None, cacert: Path | None
) -> tuple[dict[str, str], ssl.SSLContext | None]:
    """The request headers and TLS context the CLI adds to the bundle's smoke request."""
    headers: dict[str, str] = {}
    if key_file is not None:
        shown = escape(str(key_file))
        try:
            # A FIFO or device as the key file is refused at once, never read (it would hang).
            data = read_regular(
                key_file, lambda reason: UsageError(f"key file {shown} {reason}"), 64 * 1024
            )
            key = data.decode("utf-8").splitlines()[0].strip()
        except (OSError, UnicodeDecodeError, IndexError) as e:
            raise UsageError(f"cannot read a key from {shown}", remedy="one key per line") from e
        headers["Authorization"] = f"Bearer {key}"
    context = ssl.create_default_context(cafile=str(cacert)) if cacert else None
    return headers, context


def report_smoke(result: SmokeResult, as_json: bool) -> None:
    """Print a SmokeResult: one line (stderr when it failed), or JSON on stdout."""
    if as_json:
        emit_json({"smoke": result.to_json_dict()})
    else:
        click.echo(result.summary(), err=not result.ok)


@cli.command("smoke")
@click.argument("dest", type=click.Path(path_type=Path, exists=True))
@click.option(
    "--url",
    required=True,
    help="The server's base URL, e.g. http://127.0.0.1:5001 (a trailing /score is fine).",
)
@trust_options(
    "Verify the smoke test's manifest with this key (repeatable; default for a DEST: "
    "the key that verified it at unpack; required for a BUNDLE)."
)
@smoke_options
@json_option
@funnel
def smoke_cmd(
    dest: Path,
    url: str,
    trust: tuple[Path, ...],
    smoke_key_file: Path | None,
    cacert: Path | None,
    as_json: bool,
) -> None:
    """Send the bundle's signed smoke test to a running server (isolated side).

    \b
    Example:
      airgap smoke /srv/iris --url http://127.0.0.1:5001
      airgap smoke iris.airgap --trust keys/airgap.pub --url https://scoring.internal
    The request and the expected answer come from bundle.toml's [smoke] table, signed
    in the manifest of DEST (or of a BUNDLE file). Prints pass/fail and the latency.
    Exit 0 when it passes, 4 when the answer is wrong or missing, 1 when the bundle
    carries no smoke test.
    """
    from ..deploy.smoke import run, spec_of

    spec = spec_of(load_manifest(dest, trust))
    headers, context = smoke_extras(smoke_key_file, cacert)
    result = run(spec, url, headers=headers, ssl_context=context)
    report_smoke(result, as_json)
    if not result.ok:
        # The result is printed already; the exit status says the rest (no second JSON).
        sys.exit(EXIT_SMOKE)


def load_manifest(path: Path, trust: tuple[Path, ...], policy: Path | None = None) -> Manifest:
    """The verified manifest of a DEST (stored) or a BUNDLE (needs --trust)."""
    from ..verify.tree import check_unpacked
    from ..verify.unpack import open_verified

    if path.is_dir():
        return check_unpacked(path, trust=list(trust) or None, roots=(), policy=policy)
    if not trust:
        raise UsageError(
            f"{path} is a bundle file: its smoke test is trusted only once verified",
            remedy="pass --trust KEY, or the unpacked DEST",
        )
    return open_verified(path, list(trust)).manifest


# ---- `serve --smoke` and `run --smoke`: one call before start, one once healthy ----------


def own_server_extras(
    key_file: Path | None, *, tls: bool
) -> tuple[dict[str, str], ssl.SSLContext | None]:
    """Headers and TLS context for the smoke request to a server this command just started.

    The certificate is not verified: the server is our own child (or container) on the
    address we gave it, as the health probe before it already found; what is checked is the
    answer. The key is the first line of the file the server itself reads.
    """
    headers, _ = smoke_extras(key_file, None)
    context = None
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return headers, context


smoke_flag = click.option(
    "--smoke",
    is_flag=True,
    help="Once healthy, send the bundle's signed smoke test; stop and exit 4 if it fails.",
)


def smoke_spec_for(dest: Path, trust: tuple[Path, ...], policy: Path | None = None) -> SmokeSpec:
    """The smoke test of DEST's verified manifest, read before the server starts, so a
    bundle without one fails at once (exit 1) rather than after init().

    Raises:
        BundleError: DEST carries no smoke test (or does not verify).
    """
    from ..deploy.smoke import spec_of

    return spec_of(load_manifest(dest, trust, policy))


def smoke_after_start(
    spec: SmokeSpec,
    base_url: str,
    *,
    headers: Mapping[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> SmokeResult:
    """Send the smoke test to a server that just became healthy.

    ``headers``/``ssl_context``: for a server started with key auth or TLS (see
    :func:`smoke_extras`).

    Raises:
        SmokeTestError: the answer is wrong or missing (exit 4); the caller stops the server.
    """
    from ..deploy.smoke import run

    result = run(spec, base_url, headers=headers, ssl_context=ssl_context)
    result.raise_for_failure()
    return result
