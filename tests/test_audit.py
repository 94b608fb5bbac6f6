"""`airgap audit`: the packed iris example's SBOM against small OSV advisory zips built here in
OSV's format, through the real CLI and with no network (`unshare -n`); hostile zips too."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from conftest import require_netns
from packaging.version import Version

from bundler.audit.osv import DatabaseLimits, Event, in_range, load_database
from bundler.errors import AdvisoryDatabaseError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "iris-sklearn"
AIRGAP = [sys.executable, "-m", "bundler"]


def airgap(
    *args: str | Path,
    cwd: Path,
    netns: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    cmd = [*AIRGAP, *map(str, args)]
    if netns:
        # No network at all: a fresh namespace whose only interface is loopback.
        cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]
    return subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=900
    )


def ok(proc: subprocess.CompletedProcess[str], code: int = 0) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == code, f"exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


# ---- OSV records, in the schema OSV publishes ---------------------------------------------


def record(ident: str, modified: str, *affected: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"schema_version": "1.6.0", "id": ident, "modified": modified, **fields,
            "affected": list(affected)}  # fmt: skip


def pypi(name: str, *ranges: list[dict[str, str]], versions: Iterable[str] = ()) -> dict[str, Any]:
    entry: dict[str, Any] = {"package": {"ecosystem": "PyPI", "name": name}}
    if ranges:
        entry["ranges"] = [{"type": "ECOSYSTEM", "events": events} for events in ranges]
    if versions:
        entry["versions"] = list(versions)
    return entry


RECORDS = [
    # introduced/fixed: numpy 2.4.6 is affected, 2.4.7 fixes it.
    record(
        "PYSEC-2026-101",
        "2026-10-01T00:00:00Z",
        pypi("numpy", [{"introduced": "0"}, {"fixed": "2.4.7"}]),
        aliases=["CVE-2026-1001"],
        summary="numpy overflow",
    ),
    # last_affected is inclusive: joblib 1.6.0 is affected, no fix is known.
    record(
        "GHSA-jjjj-1111-aaaa",
        "2026-10-02T00:00:00Z",
        pypi("joblib", [{"introduced": "1.0"}, {"last_affected": "1.6.0"}]),
        aliases=["CVE-2026-1002", "PYSEC-2026-102"],
    ),
    # An explicit versions list and no ranges.
    record("PYSEC-2026-103", "2026-10-03T00:00:00Z", pypi("scipy", versions=["1.17.0", "1.17.1"])),
    # Withdrawn: never reported, though its range holds scikit-learn 1.9.1. Its `modified`
    # is the newest, so it is what dates the snapshot.
    record(
        "GHSA-wwww-2222-bbbb",
        "2026-11-20T12:00:00Z",
        pypi("scikit-learn", [{"introduced": "0"}, {"fixed": "99"}]),
        withdrawn="2026-11-20T12:00:00Z",
    ),
    # Exactly at the fixed boundary: threadpoolctl 3.8.0 is the fix, so not affected.
    record(
        "PYSEC-2026-105",
        "2026-10-05T00:00:00Z",
        pypi("threadpoolctl", [{"introduced": "0"}, {"fixed": "3.8.0"}]),
    ),
    # A package the bundle does not carry.
    record("PYSEC-2026-106", "2026-10-06T00:00:00Z", pypi("django", [{"introduced": "0"}])),
    # Two intervals in one range, for a runtime/lib package written with another spelling;
    # gunicorn 23.0.0 is in the second; only the fix above it is reported.
    record(
        "GHSA-gggg-3333-cccc",
        "2026-10-07T00:00:00Z",
        pypi(
            "Gunicorn",
            [
                {"introduced": "0"},
                {"fixed": "22.0.0"},
                {"introduced": "23.0.0"},
                {"fixed": "23.0.1"},
            ],
        ),
        aliases=["CVE-2026-1007"],
    ),
    # Another ecosystem's package of the same name is not ours.
    record(
        "GHSA-nnnn-4444-dddd",
        "2026-10-08T00:00:00Z",
        {"package": {"ecosystem": "npm", "name": "numpy"}, "versions": ["2.4.6"]},
    ),
    # A versions list without the bundle's version.
    record(
        "PYSEC-2026-109",
        "2026-10-09T00:00:00Z",
        pypi("cloudpickle", versions=["3.1.1"]),
    ),
]
EXPECTED = {
    ("numpy", "2.4.6", "site-packages", "PYSEC-2026-101", ("CVE-2026-1001",), ("2.4.7",)),
    (
        "joblib",
        "1.6.0",
        "site-packages",
        "GHSA-jjjj-1111-aaaa",
        ("CVE-2026-1002", "PYSEC-2026-102"),
        (),
    ),
    ("scipy", "1.17.1", "site-packages", "PYSEC-2026-103", (), ()),
    ("gunicorn", "23.0.0", "runtime/lib", "GHSA-gggg-3333-cccc", ("CVE-2026-1007",), ("23.0.1",)),
}


def osv_zip(path: Path, records: Iterable[dict[str, Any]], **extra: bytes) -> Path:
    """An advisory zip as OSV publishes it: one ``<ID>.json`` per record, deflated."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for r in records:
            z.writestr(f"{r['id']}.json", json.dumps(r, indent=2))
        for name, data in extra.items():
            z.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The iris example packed through the real CLI (real wheels from PyPI), and unpacked."""
    work = tmp_path_factory.mktemp("audit")
    ok(airgap("keygen", "--out", "keys", "--no-passphrase", cwd=work))
    ok(
        airgap(
            *("pack", EXAMPLE, "-o", "iris.airgap", "--key", "keys/airgap.key", "-q"),
            *("--bytecode", "none"),
            cwd=work,
            env={"SOURCE_DATE_EPOCH": "1700000000"},
        )
    )
    ok(airgap("unpack", "iris.airgap", "dest", "--trust", "keys/airgap.pub", "-q", cwd=work))
    osv_zip(work / "osv.zip", RECORDS)
    return work


def _findings(doc: dict[str, Any]) -> set[tuple[Any, ...]]:
    return {
        (f["package"].lower(), f["version"], f["location"], f["id"], tuple(f["aliases"]),
         tuple(f["fixed"]))
        for f in doc["findings"]
    }  # fmt: skip


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.netns
def test_audit_of_a_verified_bundle_offline(iris: Path) -> None:
    require_netns()
    proc = ok(
        airgap(
            *("audit", "iris.airgap", "--db", "osv.zip", "--trust", "keys/airgap.pub", "--json"),
            *("--max-age", "100000w"),
            cwd=iris,
            netns=True,
        ),
        5,
    )
    doc = json.loads(proc.stdout)
    assert _findings(doc) == EXPECTED
    assert doc["ok"] is False and doc["exit_code"] == 5
    assert (doc["kind"], doc["verified"], doc["name"]) == ("bundle", True, "iris-sklearn")
    assert doc["packages"] >= 12  # site-packages and runtime/lib
    db = doc["database"]
    assert db["snapshot"] == "2026-11-20T12:00:00Z"  # the newest `modified`, withdrawn too
    assert (db["records"], db["withdrawn"], db["stale"]) == (len(RECORDS), 1, False)


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.netns
def test_audit_of_an_unpacked_dest_offline(iris: Path) -> None:
    require_netns()
    proc = ok(airgap("audit", "dest", "--db", "osv.zip", "--json", cwd=iris, netns=True), 5)
    doc = json.loads(proc.stdout)
    assert _findings(doc) == EXPECTED
    assert (doc["kind"], doc["verified"]) == ("dest", True)


@pytest.mark.network
@pytest.mark.slow
def test_the_table_names_package_advisory_aliases_and_fix(iris: Path) -> None:
    proc = ok(
        airgap("audit", "iris.airgap", "--db", "osv.zip", "--max-age", "100000w", cwd=iris), 5
    )
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("iris-sklearn 1.0.0 (bundle, NOT verified: pass --trust KEY)")
    assert "snapshot 2026-11-20T12:00:00Z" in lines[1]
    numpy = next(line for line in lines if line.startswith("numpy "))
    assert numpy.split() == ["numpy", "2.4.6", "site-packages", "PYSEC-2026-101",
                             "CVE-2026-1001", "2.4.7"]  # fmt: skip
    assert lines[-1] == "4 advisories affect 4 packages"
    assert not any(w in proc.stdout for w in ("scikit-learn", "threadpoolctl", "django"))


@pytest.mark.network
@pytest.mark.slow
def test_a_clean_database_exits_0_and_a_stale_one_warns_or_fails(iris: Path) -> None:
    clean = osv_zip(iris / "clean.zip", RECORDS[3:6])  # withdrawn, boundary, not carried
    proc = ok(airgap("audit", "dest", "--db", clean, "--max-age", "100000w", cwd=iris))
    assert proc.stdout.splitlines()[-1] == "no known advisories match"
    assert proc.stderr == ""
    # The snapshot (2026-11-20) is older than a day: a warning, still exit 0 ...
    proc = ok(airgap("audit", "dest", "--db", clean, "--max-age", "1d", cwd=iris))
    assert "warning: the advisory snapshot is" in proc.stderr
    assert "older than --max-age 1d" in proc.stderr
    # ... and exit 6 with --fail-stale, in JSON too.
    proc = ok(
        airgap("audit", "dest", "--db", clean, "--max-age", "1d", "--fail-stale", cwd=iris), 6
    )
    assert "(--fail-stale)" in proc.stderr
    proc = airgap(
        *("audit", "dest", "--db", clean, "--max-age", "1d", "--fail-stale", "--json"), cwd=iris
    )
    doc = ok(proc, 6).stdout
    assert json.loads(doc)["database"]["stale"] is True
    proc = ok(airgap("audit", "dest", "--db", clean, "--max-age", "soon", cwd=iris), 2)
    assert "not a duration" in proc.stderr


def _bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("BOMB-1.json", b" " * (5 << 20))  # 5 MiB of spaces: ~5 KiB compressed
    return buf.getvalue()


def _eocd_entries(data: bytes, entries: int) -> bytes:
    """The zip with its end record claiming ``entries`` members."""
    at = data.rfind(b"PK\x05\x06")
    return data[: at + 8] + struct.pack("<HH", entries, entries) + data[at + 12 :]


def _zip64_entries(data: bytes, entries: int) -> bytes:
    """The zip with zip64 end records (as large zips have) claiming ``entries`` members."""
    at = data.rfind(b"PK\x05\x06")
    cd_size, cd_offset = struct.unpack_from("<LL", data, at + 12)
    zip64 = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries,
                        cd_size, cd_offset)  # fmt: skip
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, at, 1)
    end = data[at : at + 8] + struct.pack("<HH", 0xFFFF, 0xFFFF) + data[at + 12 :]
    return data[:at] + zip64 + locator + end


def _small_zip(**members: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


GOOD = json.dumps(RECORDS[0]).encode()
HOSTILE = {
    "not-a-zip": (b"this is not a zip file\n" * 10, "not a zip file"),
    "malformed-json": (
        _small_zip(**{"X-1.json": b'{"id": "X-1", '}),
        "X-1.json: is not valid JSON",
    ),
    "nan": (
        _small_zip(**{"X-2.json": b'{"id": "X-2", "modified": NaN}'}),
        "X-2.json: is not valid JSON",
    ),
    "no-id": (_small_zip(**{"X-3.json": b'{"modified": "2026-01-01T00:00:00Z"}'}), "has no id"),
    "bad-type": (
        _small_zip(
            **{
                "X-4.json": b'{"id": "X-4", "modified": "2026-01-01T00:00:00Z", '
                b'"affected": {"a": 1}}'
            }
        ),
        "X-4.json: affected is not a list",
    ),
    "bad-time": (
        _small_zip(**{"X-5.json": b'{"id": "X-5", "modified": "yesterday"}'}),
        "modified yesterday is not an RFC 3339 time",
    ),
    "zip-bomb": (_bomb(), "BOMB-1.json: declares 5242880 bytes, over the member limit"),
    "huge-member-count": (
        _zip64_entries(_small_zip(**{"A.json": GOOD}), 300_000),
        "zip: declares 300000 members, over the limit of 200000",
    ),
    "broken-zip64": (
        _eocd_entries(_small_zip(**{"A.json": GOOD}), 0xFFFF),
        "zip64 end record is missing",
    ),
    "empty": (_small_zip(**{"README": b"no advisories here"}), "holds no advisory"),
    "escaped-name": (
        _small_zip(**{"\x1b[31mred.json": b"[]"}),
        "\\u001b[31mred.json: the record is not an object",
    ),
}


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_database_is_one_clear_line_and_exit_6(iris: Path, case: str) -> None:
    data, message = HOSTILE[case]
    db = iris / f"hostile-{case}.zip"
    db.write_bytes(data)
    proc = ok(airgap("audit", "dest", "--db", db, cwd=iris), 6)
    assert proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith("advisory database: ")
    assert message in line
    assert "\x1b" not in line


@pytest.mark.network
@pytest.mark.slow
def test_a_missing_database_is_exit_6(iris: Path) -> None:
    proc = ok(airgap("audit", "dest", "--db", "nowhere.zip", cwd=iris), 6)
    assert proc.stderr.startswith("advisory database: cannot read nowhere.zip")


@pytest.mark.network
@pytest.mark.slow
def test_a_bundle_is_rejected_with_the_wrong_key_before_the_database_is_read(
    iris: Path,
) -> None:
    ok(airgap("keygen", "--out", "other", "--no-passphrase", cwd=iris))
    proc = airgap("audit", "iris.airgap", "--db", "no-such.zip", "--trust", "other/airgap.pub",
                  cwd=iris)  # fmt: skip
    ok(proc, 3)
    assert proc.stderr.startswith("bundle rejected: signature: manifest.json.sig: signed by key")


def test_a_bundle_without_an_sbom_is_an_error_not_a_clean_report(
    make_bundle: Any, tmp_path: Path
) -> None:
    bundle = make_bundle("old.airgap")  # as written before format revision 1.3
    osv_zip(tmp_path / "osv.zip", RECORDS)
    proc = ok(airgap("audit", bundle, "--db", "osv.zip", cwd=tmp_path), 1)
    assert "has no sbom/bom.cdx.json" in proc.stderr
    assert proc.stdout == ""


@pytest.mark.network
@pytest.mark.slow
def test_a_tampered_sbom_in_dest_is_rejected(iris: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    shutil.copytree(iris / "dest", dest, symlinks=True)
    bom = dest / "sbom" / "bom.cdx.json"
    bom.write_bytes(bom.read_bytes().replace(b'"numpy"', b'"nump0"'))
    proc = ok(airgap("audit", dest, "--db", iris / "osv.zip", cwd=iris), 3)
    assert proc.stderr.startswith(
        "bundle rejected: tree: sbom/bom.cdx.json: file changed since unpack"
    )
    assert proc.stdout == ""


# ---- the pure parts: range evaluation and the zip's limits ------------------------------


def _events(*pairs: tuple[str, str]) -> list[Event]:
    return [Event(kind, version) for kind, version in pairs]


@pytest.mark.parametrize(
    ("version", "events", "affected"),
    [
        ("1.0", [("introduced", "0")], True),
        ("1.0", [("introduced", "1.0"), ("fixed", "1.0")], False),
        ("1.0.0", [("introduced", "1.0"), ("fixed", "1.1")], True),  # 1.0.0 == 1.0
        ("1.1rc1", [("introduced", "0"), ("fixed", "1.1")], True),  # pre-releases sort below
        ("1.1.post1", [("introduced", "0"), ("fixed", "1.1")], False),
        ("2.0", [("introduced", "0"), ("last_affected", "2.0")], True),
        ("2.0.1", [("introduced", "0"), ("last_affected", "2.0")], False),
        (
            "1.5",
            [("fixed", "1.2"), ("introduced", "1.4"), ("introduced", "0"), ("fixed", "1.6")],
            True,
        ),
        (
            "1.3",
            [("fixed", "1.2"), ("introduced", "1.4"), ("introduced", "0"), ("fixed", "1.6")],
            False,
        ),
        ("3.0", [("introduced", "0"), ("limit", "2.0")], False),
        ("1.0", [("introduced", "not a version")], True),  # bad data errs towards a finding
        ("1.0", [("introduced", "0"), ("fixed", "not a version")], True),
    ],
)
def test_osv_range_evaluation(version: str, events: list[tuple[str, str]], affected: bool) -> None:
    assert in_range(Version(version), _events(*events)) is affected


def test_member_count_and_lying_sizes_are_bounded() -> None:
    many = _small_zip(**{f"A-{i}.json": GOOD.replace(b"PYSEC-2026-101", b"A") for i in range(11)})
    with pytest.raises(AdvisoryDatabaseError, match="declares 11 members, over the limit of 10"):
        load_database(io.BytesIO(many), DatabaseLimits(max_members=10))
    with pytest.raises(AdvisoryDatabaseError, match="decompresses beyond the total limit"):
        load_database(io.BytesIO(many), DatabaseLimits(max_total_bytes=len(GOOD) * 5))
    # A central directory that understates a member's size: decompression stops at the
    # declared size, and the CRC check then refuses the member.
    bomb = bytearray(_bomb())
    cd = bomb.rfind(b"PK\x01\x02")
    bomb[cd + 24 : cd + 28] = struct.pack("<L", 100)
    with pytest.raises(AdvisoryDatabaseError, match=r"BOMB-1\.json: cannot be decompressed"):
        load_database(io.BytesIO(bytes(bomb)))
    db = load_database(io.BytesIO(_small_zip(**{"A.json": GOOD})))
    assert (db.records, sorted(db.by_name)) == (1, ["numpy"])
    # The same zip behind zip64 end records, as a large export has, reads the same.
    db = load_database(io.BytesIO(_zip64_entries(_small_zip(**{"A.json": GOOD}), 1)))
    assert (db.records, sorted(db.by_name)) == (1, ["numpy"])


def test_rfc3339_times_with_any_precision_date_the_snapshot() -> None:
    recs = [
        dict(RECORDS[0], id="A", modified="2026-11-20T12:00:00.123456789Z"),
        dict(RECORDS[0], id="B", modified="2026-11-20T13:00:00+01:00"),  # 12:00Z, earlier
        dict(RECORDS[0], id="C", modified="2026-11-19T23:59:59Z"),
    ]
    data = _small_zip(**{f"{r['id']}.json": json.dumps(r).encode() for r in recs})
    db = load_database(io.BytesIO(data))
    assert db.snapshot.isoformat() == "2026-11-20T12:00:00.123456+00:00"


def test_the_clis_default_max_age_is_the_reports() -> None:
    # The CLI names the default without importing the report module (start-up time).
    from bundler.audit import report
    from bundler.cli import audit as cli_audit

    assert cli_audit.DEFAULT_MAX_AGE == report.DEFAULT_MAX_AGE
    assert report.parse_age(cli_audit.DEFAULT_MAX_AGE).days == 30
