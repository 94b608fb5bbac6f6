"""OSV advisory snapshots for PyPI: bounded reading of the zip, and PEP 440 matching. No I/O
beyond the stream the caller opened.

The snapshot is OSV's per-ecosystem export (``all.zip`` of ``<ID>.json`` records in the OSV
schema). It crosses the air gap like the bundle and is just as hostile until read: the
zip's own entry count is checked before ``zipfile`` builds its index, every member is read
with a byte cap, and every record is type-checked.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import struct
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, Final

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ..errors import AdvisoryDatabaseError
from ..formats.limits import GiB, MiB

ECOSYSTEM: Final = "PyPI"


@dataclass(frozen=True)
class DatabaseLimits:
    """Bounds on an advisory zip (docs/audit.md); OSV's PyPI export is far below each."""

    # The zip file itself (bytes).
    max_zip_bytes: int = 1 * GiB
    # Entries its central directory may declare (count); checked before zipfile reads it.
    max_members: int = 200_000
    # Its central directory (bytes).
    max_directory_bytes: int = 64 * MiB
    # One advisory, decompressed (bytes): a zip bomb member is stopped at this.
    max_member_bytes: int = 4 * MiB
    # Every member together, decompressed (bytes).
    max_total_bytes: int = 2 * GiB


DEFAULT_DB_LIMITS = DatabaseLimits()


@dataclass(frozen=True)
class Event:
    """One OSV range event: ``introduced``, ``fixed``, ``last_affected`` or ``limit``."""

    kind: str
    version: str


@dataclass(frozen=True)
class Affected:
    """One ``affected[]`` entry for a PyPI package."""

    name: str  # PEP 503-normalised
    ranges: tuple[tuple[Event, ...], ...]  # ECOSYSTEM ranges only
    versions: tuple[str, ...]


@dataclass(frozen=True)
class Advisory:
    id: str
    aliases: tuple[str, ...]
    modified: dt.datetime
    summary: str
    affected: tuple[Affected, ...]


@dataclass(frozen=True)
class Database:
    """The usable advisories of a snapshot, indexed by normalised package name."""

    by_name: Mapping[str, tuple[Advisory, ...]]
    snapshot: dt.datetime  # the newest `modified` of any record, withdrawn ones included
    records: int  # records read
    withdrawn: int  # of which withdrawn (ignored for matching)


@dataclass(frozen=True)
class Package:
    """A distribution the bundle carries, as its SBOM lists it."""

    name: str
    version: str
    location: str  # the payload folder: site-packages or runtime/lib


@dataclass(frozen=True)
class Finding:
    package: Package
    id: str
    aliases: tuple[str, ...]
    fixed: tuple[str, ...]  # the versions that fix it, from the matching ranges
    summary: str


def _shown(text: str) -> str:
    """An attacker-chosen name made safe for one error line: escaped and cut short."""
    return json.dumps(text[:200])[1:-1]


def _bad(member: str, message: str) -> AdvisoryDatabaseError:
    return AdvisoryDatabaseError(
        f"{_shown(member)}: {message}",
        remedy="use the unmodified all.zip of OSV's PyPI export",
    )


# ---- the zip ----------------------------------------------------------------------------

_EOCD: Final = struct.Struct("<4s4H2LH")  # end of central directory record
_ZIP64_LOCATOR: Final = struct.Struct("<4sLQL")
_ZIP64_EOCD: Final = struct.Struct("<4sQ2H2L4Q")


def _directory_size(f: BinaryIO, size: int) -> tuple[int, int]:
    """(entries, central directory bytes) from the end records, read before ``zipfile``
    indexes the directory, so a zip declaring millions of entries costs nothing.

    Raises:
        AdvisoryDatabaseError: no end record (not a zip).
    """
    tail_len = min(size, _EOCD.size + 0xFFFF)  # the record plus the longest comment
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _EOCD.size:
        raise _bad("zip", "not a zip file (no end of central directory record)")
    _sig, _d, _dcd, _n_disk, entries, cd_size, _cd_off, _clen = _EOCD.unpack_from(tail, at)
    if entries == 0xFFFF or cd_size == 0xFFFFFFFF:
        loc_at = size - tail_len + at - _ZIP64_LOCATOR.size
        if loc_at < 0:
            raise _bad("zip", "zip64 end record is missing")
        f.seek(loc_at)
        sig, _disk, offset, _disks = _ZIP64_LOCATOR.unpack(f.read(_ZIP64_LOCATOR.size))
        if sig != b"PK\x06\x07" or offset + _ZIP64_EOCD.size > size:
            raise _bad("zip", "zip64 end record is missing")
        f.seek(offset)
        fields = _ZIP64_EOCD.unpack(f.read(_ZIP64_EOCD.size))
        if fields[0] != b"PK\x06\x06":
            raise _bad("zip", "zip64 end record is malformed")
        entries, cd_size = fields[7], fields[8]
    return entries, cd_size


def load_database(f: BinaryIO, limits: DatabaseLimits = DEFAULT_DB_LIMITS) -> Database:
    """Read every ``*.json`` record of an OSV zip from the seekable stream ``f``.

    Records of other ecosystems' packages are kept out of the index; withdrawn records are
    counted but never matched. The snapshot's date is the newest ``modified`` of any record:
    it says how current the data is, whatever the file's own time after copying.

    Raises:
        AdvisoryDatabaseError: not a zip, over a limit, a member that is not a JSON
            object in the OSV schema, or no record at all.
    """
    f.seek(0, io.SEEK_END)
    size = f.tell()
    if size > limits.max_zip_bytes:
        raise _bad("zip", f"{size} bytes, over the limit of {limits.max_zip_bytes}")
    entries, cd_size = _directory_size(f, size)
    if entries > limits.max_members:
        raise _bad("zip", f"declares {entries} members, over the limit of {limits.max_members}")
    if cd_size > limits.max_directory_bytes:
        raise _bad("zip", f"central directory of {cd_size} bytes is over the limit")
    f.seek(0)
    try:
        zf = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as e:
        raise _bad("zip", f"not a readable zip ({e})") from e
    by_name: dict[str, list[Advisory]] = {}
    newest: dt.datetime | None = None
    total = records = withdrawn = 0
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_members:
            raise _bad("zip", f"{len(infos)} members, over the limit of {limits.max_members}")
        for info in infos:
            if info.is_dir() or not info.filename.endswith(".json"):
                continue
            data = _read_member(zf, info, limits)
            total += len(data)
            if total > limits.max_total_bytes:
                raise _bad(info.filename, "the zip decompresses beyond the total limit")
            record, is_withdrawn = _parse_record(data, info.filename)
            records += 1
            newest = record.modified if newest is None else max(newest, record.modified)
            if is_withdrawn:
                withdrawn += 1
                continue
            for name in sorted({a.name for a in record.affected}):
                by_name.setdefault(name, []).append(record)
    if newest is None:
        raise _bad("zip", "holds no advisory (*.json) at all")
    return Database(
        by_name={k: tuple(sorted(v, key=lambda a: a.id)) for k, v in by_name.items()},
        snapshot=newest,
        records=records,
        withdrawn=withdrawn,
    )


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limits: DatabaseLimits) -> bytes:
    if info.flag_bits & 0x1:
        raise _bad(info.filename, "is encrypted")
    if info.file_size > limits.max_member_bytes:
        raise _bad(info.filename, f"declares {info.file_size} bytes, over the member limit")
    try:
        with zf.open(info) as member:
            # The declared size may lie: read at most one byte past the cap.
            data = member.read(limits.max_member_bytes + 1)
    except (zipfile.BadZipFile, NotImplementedError, ValueError, EOFError, OSError) as e:
        raise _bad(info.filename, f"cannot be decompressed ({e})") from e
    except RuntimeError as e:  # zipfile's error for an encrypted member
        raise _bad(info.filename, f"cannot be read ({e})") from e
    if len(data) > limits.max_member_bytes:
        raise _bad(info.filename, "decompresses beyond the member limit (a zip bomb?)")
    return data


# ---- one record -------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_FRACTION: Final = re.compile(r"(\.\d{6})\d+")


def _timestamp(value: Any, where: str, member: str) -> dt.datetime:
    if not isinstance(value, str):
        raise _bad(member, f"{where} is not an RFC 3339 string")
    # RFC 3339 allows any number of fractional digits; Python 3.11 reads at most six.
    text = _FRACTION.sub(r"\1", value.replace("Z", "+00:00").replace("z", "+00:00"))
    try:
        stamp = dt.datetime.fromisoformat(text)
    except ValueError:
        raise _bad(member, f"{where} {_shown(value)!s} is not an RFC 3339 time") from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)


def _strings(value: Any, where: str, member: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(member, f"{where} is not a list of strings")
    return tuple(value)


def _object(value: Any, where: str, member: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(member, f"{where} is not an object")
    return value


def _list(value: Any, where: str, member: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad(member, f"{where} is not a list")
    return value


def _parse_record(data: bytes, member: str) -> tuple[Advisory, bool]:
    """One OSV record; (advisory, withdrawn). Only PyPI ``affected`` entries are kept."""
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _bad(member, f"is not valid JSON ({str(e)[:100]})") from None
    doc = _object(doc, "the record", member)
    ident = doc.get("id")
    if not isinstance(ident, str) or not ident:
        raise _bad(member, "has no id")
    modified = _timestamp(doc.get("modified"), "modified", member)
    withdrawn = doc.get("withdrawn") is not None
    if withdrawn:
        _timestamp(doc["withdrawn"], "withdrawn", member)
    summary = doc.get("summary", "")
    if not isinstance(summary, str):
        raise _bad(member, "summary is not a string")
    affected: list[Affected] = []
    for i, raw in enumerate(_list(doc.get("affected"), "affected", member)):
        where = f"affected[{i}]"
        entry = _object(raw, where, member)
        package = _object(entry.get("package", {}), f"{where}.package", member)
        ecosystem, name = package.get("ecosystem"), package.get("name")
        if ecosystem != ECOSYSTEM or not isinstance(name, str):
            continue  # another ecosystem (or a GIT-only entry): not ours to match
        ranges: list[tuple[Event, ...]] = []
        for j, rng in enumerate(_list(entry.get("ranges"), f"{where}.ranges", member)):
            rng = _object(rng, f"{where}.ranges[{j}]", member)
            if rng.get("type") != "ECOSYSTEM":
                continue  # GIT ranges name commits, not releases
            events = []
            for k, ev in enumerate(_list(rng.get("events"), f"{where}.ranges[{j}].events", member)):
                ev = _object(ev, f"{where}.ranges[{j}].events[{k}]", member)
                for kind in ("introduced", "fixed", "last_affected", "limit"):
                    if kind in ev:
                        if not isinstance(ev[kind], str):
                            raise _bad(member, f"{where}: event {kind} is not a string")
                        events.append(Event(kind, ev[kind]))
            ranges.append(tuple(events))
        versions = _strings(entry.get("versions"), f"{where}.versions", member)
        affected.append(Affected(str(canonicalize_name(name)), tuple(ranges), versions))
    aliases = _strings(doc.get("aliases"), "aliases", member)
    return Advisory(ident, aliases, modified, summary, tuple(affected)), withdrawn


# ---- matching ---------------------------------------------------------------------------


def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


_ZERO: Final = Version("0")


def in_range(version: Version, events: Iterable[Event]) -> bool:
    """The OSV schema's evaluation of one ECOSYSTEM range, with PEP 440 ordering.

    Events are walked in version order (``introduced: "0"`` first): at or after an
    ``introduced`` the version is affected, at or after a ``fixed`` (or after a
    ``last_affected``) it is not; ``limit`` events cap the range. An ``introduced`` that is
    not a PEP 440 version counts as "0" and an unreadable upper bound is skipped, so bad
    data errs towards a finding, never towards a false "clean".
    """
    order = {"introduced": 0, "fixed": 1, "last_affected": 2}
    walk: list[tuple[Version, int, str]] = []
    limits: list[Version] = []
    for ev in events:
        parsed = _version(ev.version)
        if ev.kind == "limit":
            if parsed is not None:
                limits.append(parsed)
            continue
        if parsed is None:
            if ev.kind != "introduced":
                continue
            parsed = _ZERO
        walk.append((parsed, order[ev.kind], ev.kind))
    if limits and not any(version < lim for lim in limits):
        return False
    affected = False
    for bound, _rank, kind in sorted(walk):
        if kind == "introduced" and version >= bound:
            affected = True
        elif (kind == "fixed" and version >= bound) or (
            kind == "last_affected" and version > bound
        ):
            affected = False
    return affected


def _listed(version: Version | None, raw: str, listed: Iterable[str]) -> bool:
    """``raw`` is in an explicit versions list (PEP 440 equality: 1.0 == 1.0.0)."""
    for item in listed:
        if item == raw:
            return True
        parsed = _version(item)
        if version is not None and parsed is not None and parsed == version:
            return True
    return False


def match(packages: Iterable[Package], db: Database) -> list[Finding]:
    """Every (package, advisory) pair where the package's version is affected.

    Raises nothing: a package whose version is not PEP 440 is matched by the advisories'
    explicit ``versions`` lists only (string equality).
    """
    findings: list[Finding] = []
    for pkg in packages:
        name = canonicalize_name(pkg.name)
        parsed = _version(pkg.version)
        for adv in db.by_name.get(name, ()):
            hit = False
            fixed: set[str] = set()
            for aff in adv.affected:
                if aff.name != name:
                    continue
                ranges = [r for r in aff.ranges if parsed is not None and in_range(parsed, r)]
                if not ranges and not _listed(parsed, pkg.version, aff.versions):
                    continue
                hit = True
                # The fixes of the ranges that hold this version (of every range when only
                # the versions list named it), above this version.
                for events in ranges or aff.ranges:
                    fixed.update(e.version for e in events if e.kind == "fixed")
            if parsed is not None:
                fixed = {v for v in fixed if (fv := _version(v)) is None or fv > parsed}
            if hit:
                findings.append(
                    Finding(
                        pkg, adv.id, adv.aliases, tuple(sorted(fixed, key=_sort_key)), adv.summary
                    )
                )
    return sorted(findings, key=lambda f: (f.package.location, f.package.name, f.id))


def _sort_key(text: str) -> tuple[int, Version | str]:
    parsed = _version(text)
    return (0, parsed) if parsed is not None else (1, text)
