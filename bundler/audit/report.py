"""`airgap audit`: read the SBOM from a bundle or an unpacked DEST, match it against an OSV
snapshot, and judge the snapshot's age (the I/O around the pure matching in ``osv``)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from packageurl import PackageURL

from ..errors import AdvisoryDatabaseError, BundleError, SbomError, TreeModifiedError, UsageError
from ..formats.limits import DEFAULT_LIMITS
from ..formats.manifest import Manifest
from ..layout import SBOM_DIR, SBOM_FILE
from ..verify.tree import check_unpacked, open_regular
from ..verify.unpack import read_member
from .osv import DEFAULT_DB_LIMITS, Database, DatabaseLimits, Finding, Package, load_database, match

MAX_SBOM_BYTES: Final = DEFAULT_LIMITS.max_sbom_bytes
DEFAULT_MAX_AGE: Final = "30d"  # also in bundler/cli/audit.py (kept equal by a test)
_AGE: Final = re.compile(r"^(\d{1,6})([hdw])$")
_UNITS: Final = {"h": dt.timedelta(hours=1), "d": dt.timedelta(days=1), "w": dt.timedelta(weeks=1)}


def parse_age(text: str) -> dt.timedelta:
    """``30d``, ``12h``, ``2w`` as a duration.

    Raises:
        UsageError: anything else.
    """
    m = _AGE.match(text.strip())
    if m is None:
        raise UsageError(f"--max-age {text!r} is not a duration", remedy="give e.g. 30d, 12h or 2w")
    return int(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class SbomSource:
    """The SBOM's bytes, checked against the manifest of the bundle or DEST it came from."""

    data: bytes
    manifest: Manifest
    kind: Literal["bundle", "dest"]
    verified: bool  # the manifest's signature verified (always, for a DEST)


def read_sbom(subject: Path, trust: Sequence[Path] = ()) -> SbomSource:
    """``sbom/bom.cdx.json`` of a BUNDLE (streamed from the payload; verified first with
    ``trust``) or of an unpacked DEST (its stored manifest verified with ``trust`` or the
    key recorded at unpack, then the file re-hashed against it).

    Raises:
        BundleError: no SBOM (a bundle packed before format revision 1.3), or unreadable;
        BundleRejected subclasses: a check failed (exit 3).
    """
    if not subject.is_dir():
        member = read_member(subject, SBOM_FILE, trust, max_bytes=MAX_SBOM_BYTES)
        return SbomSource(member.data, member.manifest, "bundle", member.verified)
    # Checks the stored manifest's signature and that sbom/ holds exactly its files.
    manifest = check_unpacked(subject, trust=list(trust) or None, roots={SBOM_DIR})
    entry = manifest.file_map().get(SBOM_FILE)
    if entry is None:
        raise BundleError(
            f"{subject} holds a bundle with no {SBOM_FILE} (packed before format revision 1.3)",
            remedy="pack it again with this version of airgap and unpack that",
        )
    if entry.size > MAX_SBOM_BYTES:
        raise TreeModifiedError(f"{entry.size} bytes, over the SBOM limit", member=SBOM_FILE)
    # Read once and hash what was read: the file cannot change between check and use.
    with open_regular(subject / SBOM_FILE, SBOM_FILE) as f:
        data = f.read(MAX_SBOM_BYTES + 1)
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise TreeModifiedError(
            "file changed since unpack", member=SBOM_FILE, remedy="unpack the bundle again"
        )
    return SbomSource(data, manifest, "dest", True)


def sbom_packages(data: bytes) -> tuple[Package, ...]:
    """Every ``pkg:pypi`` component of a CycloneDX JSON document (nested ones too).

    Raises:
        SbomError: not a CycloneDX JSON document, or a PyPI component without a version.
    """
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise SbomError(f"not valid JSON ({str(e)[:100]})", member=SBOM_FILE) from None
    if not isinstance(doc, dict) or doc.get("bomFormat") != "CycloneDX":
        raise SbomError("not a CycloneDX document", member=SBOM_FILE)
    found: list[Package] = []
    stack: list[Any] = list(_components(doc))
    while stack:
        comp = stack.pop()
        stack.extend(_components(comp))
        purl = comp.get("purl")
        if not isinstance(purl, str) or not purl.startswith("pkg:pypi/"):
            continue
        try:
            parsed = PackageURL.from_string(purl)
        except ValueError:
            raise SbomError(f"bad package URL {purl[:100]!r}", member=SBOM_FILE) from None
        if not parsed.version:
            raise SbomError(f"{parsed.name} has no version", member=SBOM_FILE)
        location = "site-packages"
        for prop in comp.get("properties") or []:
            if isinstance(prop, dict) and prop.get("name") == "airgap:location":
                location = str(prop.get("value"))
        found.append(Package(parsed.name, parsed.version, location))
    return tuple(sorted(set(found), key=lambda p: (p.location, p.name, p.version)))


def _components(obj: Any) -> list[Any]:
    comps = obj.get("components") if isinstance(obj, dict) else None
    if comps is None:
        return []
    if not isinstance(comps, list) or not all(isinstance(c, dict) for c in comps):
        raise SbomError("components is not a list of objects", member=SBOM_FILE)
    return comps


@dataclass(frozen=True)
class AuditReport:
    """What `airgap audit` prints, as values."""

    subject: Path
    source: SbomSource
    packages: tuple[Package, ...]
    findings: tuple[Finding, ...]
    database: Path
    snapshot: dt.datetime
    records: int
    withdrawn: int
    age: dt.timedelta
    max_age: dt.timedelta

    @property
    def stale(self) -> bool:
        return self.age > self.max_age


def open_database(path: Path, limits: DatabaseLimits = DEFAULT_DB_LIMITS) -> Database:
    """The OSV zip at ``path``.

    Raises:
        AdvisoryDatabaseError: unreadable, not a regular file, or invalid (exit 6).
    """
    if path.exists() and not path.is_file():
        # Checked before opening: a FIFO would block the open.
        raise AdvisoryDatabaseError(f"{path} is not a regular file")
    try:
        with path.open("rb") as f:
            return load_database(f, limits)
    except OSError as e:
        raise AdvisoryDatabaseError(
            f"cannot read {path}: {e.strerror}", remedy="pass the OSV PyPI zip with --db"
        ) from e


def audit(
    subject: Path,
    database: Path,
    *,
    trust: Sequence[Path] = (),
    max_age: dt.timedelta = dt.timedelta(days=30),
    now: dt.datetime | None = None,
    limits: DatabaseLimits = DEFAULT_DB_LIMITS,
) -> AuditReport:
    """Match the SBOM of ``subject`` (BUNDLE or DEST) against the OSV zip ``database``.

    The bundle is read first (a rejected bundle is reported before a bad database), then
    the database. The snapshot's date is its newest ``modified`` record (see ``osv``).

    Raises:
        BundleRejected subclasses (exit 3), BundleError (exit 1), AdvisoryDatabaseError (6).
    """
    source = read_sbom(subject, trust)
    packages = sbom_packages(source.data)
    db = open_database(database, limits)
    now = now or dt.datetime.now(dt.UTC)
    return AuditReport(
        subject=subject,
        source=source,
        packages=packages,
        findings=tuple(match(packages, db)),
        database=database,
        snapshot=db.snapshot,
        records=db.records,
        withdrawn=db.withdrawn,
        age=max(now - db.snapshot, dt.timedelta(0)),
        max_age=max_age,
    )
