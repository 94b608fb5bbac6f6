"""`airgap audit`: the bundle's SBOM against an offline OSV advisory snapshot."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import EXIT_DATABASE, EXIT_FINDINGS, EXIT_OK
from ._common import cli, emit_json, funnel, json_option, trust_options

if TYPE_CHECKING:
    from ..audit.report import AuditReport

# `airgap audit`'s default; the report module (and the SBOM library it loads) is imported
# only when the command runs, so every other command starts without it.
DEFAULT_MAX_AGE = "30d"


def _safe(text: str) -> str:
    """Advisory data is attacker-chosen: no control characters reach the terminal."""
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in text)


def _days(delta: dt.timedelta) -> float:
    return round(delta.total_seconds() / 86400, 1)


def _exit_code(report: AuditReport, fail_stale: bool) -> int:
    if fail_stale and report.stale:
        return EXIT_DATABASE
    return EXIT_FINDINGS if report.findings else EXIT_OK


def _as_json(report: AuditReport, code: int) -> dict[str, Any]:
    src = report.source
    return {
        "ok": code == EXIT_OK,
        "exit_code": code,
        "subject": str(report.subject),
        "kind": src.kind,
        "verified": src.verified,
        "name": src.manifest.name,
        "version": src.manifest.version,
        "packages": len(report.packages),
        "database": {
            "path": str(report.database),
            "snapshot": report.snapshot.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "records": report.records,
            "withdrawn": report.withdrawn,
            "age_days": _days(report.age),
            "max_age_days": _days(report.max_age),
            "stale": report.stale,
        },
        "findings": [
            {
                "package": f.package.name,
                "version": f.package.version,
                "location": f.package.location,
                "id": f.id,
                "aliases": list(f.aliases),
                "fixed": list(f.fixed),
                "summary": f.summary,
            }
            for f in report.findings
        ],
    }


def _print_table(report: AuditReport, max_age: str) -> None:
    src = report.source
    how = "verified" if src.verified else "NOT verified: pass --trust KEY"
    click.echo(
        f"{_safe(src.manifest.name)} {_safe(src.manifest.version)} ({src.kind}, {how}): "
        f"{len(report.packages)} packages in its SBOM"
    )
    snap = report.snapshot.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    click.echo(
        f"advisories: {report.database.name}, {report.records} records "
        f"({report.withdrawn} withdrawn), snapshot {snap} ({_days(report.age)} days old)"
    )
    if report.stale:
        click.echo(
            f"warning: the advisory snapshot is {_days(report.age)} days old, older than "
            f"--max-age {max_age}; bring a fresh OSV PyPI all.zip across",
            err=True,
        )
    if not report.findings:
        click.echo("no known advisories match")
        return
    rows = [("PACKAGE", "VERSION", "LOCATION", "ADVISORY", "ALIASES", "FIXED IN")]
    for f in report.findings:
        rows.append(
            (
                _safe(f.package.name),
                _safe(f.package.version),
                _safe(f.package.location),
                _safe(f.id),
                _safe(", ".join(f.aliases)) or "-",
                _safe(", ".join(f.fixed)) or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[5])
    affected = len({(f.package.location, f.package.name) for f in report.findings})
    click.echo(f"{len(report.findings)} advisories affect {affected} packages")


@cli.command("audit")
@click.argument("subject", type=click.Path(path_type=Path, exists=True))
@click.option(
    "--db",
    "database",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="OSV's advisory snapshot for PyPI: the all.zip of <ID>.json records.",
)
@trust_options(
    "Verify a BUNDLE with this trusted key first (file or folder, repeatable); for a "
    "DEST, re-check its stored manifest with it (default: the key recorded at unpack)."
)
@click.option(
    "--max-age",
    default=DEFAULT_MAX_AGE,
    show_default=True,
    help="Warn when the snapshot's newest record is older than this (e.g. 12h, 30d, 2w).",
)
@click.option(
    "--fail-stale", is_flag=True, help="Exit 6 (not just warn) when the snapshot is too old."
)
@json_option
@funnel
def audit_cmd(
    subject: Path,
    database: Path,
    trust: tuple[Path, ...],
    max_age: str,
    fail_stale: bool,
    as_json: bool,
) -> None:
    """Match a bundle's SBOM against known vulnerabilities, offline.

    SUBJECT is a BUNDLE or an unpacked DEST. The advisories come from a zip you carry
    across, OSV's per-ecosystem export for PyPI; versions are compared as PEP 440.

    \b
    Example:
      airgap audit iris.airgap --db OSV-PyPI.zip --trust keys/airgap.pub
      airgap audit /srv/iris --db OSV-PyPI.zip --json --fail-stale
    Exit codes: 0 no advisory matches, 5 findings, 6 the database is invalid (or, with
    --fail-stale, older than --max-age), 3 the bundle is rejected, 1 other errors.
    """
    from ..audit.report import audit, parse_age

    report = audit(subject, database, trust=trust, max_age=parse_age(max_age))
    code = _exit_code(report, fail_stale)
    if as_json:
        emit_json(_as_json(report, code))
    else:
        _print_table(report, max_age)
        if code == EXIT_DATABASE:
            click.echo(
                f"advisory database: {report.database} is older than --max-age {max_age} "
                "(--fail-stale); bring a fresh snapshot across",
                err=True,
            )
    if code != EXIT_OK:
        sys.exit(code)
