"""A minimal, deterministic wheel installer (PEP 427) that builds a site-packages tree."""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import io
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final, NamedTuple

from packaging.utils import (
    InvalidWheelFilename,
    NormalizedName,
    canonicalize_name,
    parse_wheel_filename,
)

from .errors import SiteTreeError

if TYPE_CHECKING:
    from packaging.tags import Tag

    from .target import Target

INSTALLER: Final = "airgap-bundler"
ZIP_EPOCH: Final = 315_532_800  # 1980-01-01T00:00:00Z, the default mtime of every path
_CHUNK: Final = 1 << 20  # bytes per read while copying
_DIR_MODE: Final = 0o755
# Schemes of `<name>-<version>.data/<scheme>/...` that belong in site-packages. The others
# (scripts, headers, data) target bin/, include/ and the prefix, which a tree that is only
# put on sys.path does not have: they are left out, and so are console-script wrappers.
_TREE_SCHEMES: Final = frozenset({"purelib", "platlib"})
_KNOWN_SCHEMES: Final = _TREE_SCHEMES | {"scripts", "headers", "data"}
# Files of the wheel's own .dist-info that an installer replaces or must not copy: RECORD is
# regenerated, its signatures would no longer match, INSTALLER/REQUESTED/direct_url.json
# describe an installation, not the wheel.
_REPLACED: Final = frozenset(
    {"RECORD", "RECORD.jws", "RECORD.p7s", "INSTALLER", "REQUESTED", "direct_url.json"}
)
_WEAK_HASHES: Final = frozenset({"md5", "sha1", "sha224"})


class Installed(NamedTuple):
    """One distribution in the tree: canonical name and version (sorts by name)."""

    name: str
    version: str


@dataclass(frozen=True)
class _Wheel:
    path: Path
    name: NormalizedName
    version: str
    tags: frozenset[Tag]


@dataclass
class _Tree:
    """What has been written so far, to catch clashes between wheels."""

    root: Path
    owners: dict[str, tuple[str, str]] = field(default_factory=dict)  # path -> (dist, sha256)
    folded: dict[str, str] = field(default_factory=dict)  # casefolded path -> path


def build_site_tree(
    wheels: Sequence[Path], target: Target, dest: Path, *, mtime: int = ZIP_EPOCH
) -> list[Installed]:
    """Install ``wheels`` into ``dest`` as a site-packages tree for ``target``.

    The tree is identical for identical wheels, whatever their order, the umask or the
    clock: wheels are installed sorted by name, every file gets mode 0o644 (0o755 when
    executable in the wheel), every folder 0o755, every path the time ``mtime``. Nothing is
    compiled: the tree holds no ``__pycache__`` (bytecode caches in a wheel are left out).
    Each ``.dist-info`` gets ``INSTALLER`` = ``airgap-bundler`` and a regenerated
    ``RECORD``. Every member is checked against the wheel's RECORD before it is used.
    ``dest`` must be absent or empty; it is removed again if the build fails and it was
    created here.

    Returns:
        The installed distributions, sorted by name.

    Raises:
        SiteTreeError: a wheel is malformed, does not fit ``target``, has an unsafe or
            unrecorded member or a hash mismatch, or two wheels clash.
    """
    infos = sorted((_inspect(w, target) for w in wheels), key=lambda w: (w.name, w.path.name))
    names = [w.name for w in infos]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SiteTreeError(
            f"more than one wheel for {', '.join(twice)}",
            remedy="pass one wheel per distribution (the lock pins one version of each)",
        )
    created = not dest.exists()
    if not created and (not dest.is_dir() or any(dest.iterdir())):
        raise SiteTreeError(
            f"{dest} exists and is not an empty folder", remedy="remove it or pick another"
        )
    try:
        dest.mkdir(parents=True, exist_ok=True)
        dest.chmod(_DIR_MODE)
        tree = _Tree(dest)
        installed = [_install(w, tree) for w in infos]
        _set_times(dest, mtime)
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    return installed


def _inspect(path: Path, target: Target) -> _Wheel:
    try:
        name, version, _, tags = parse_wheel_filename(path.name)
    except InvalidWheelFilename as e:
        raise SiteTreeError(
            f"{path.name} is not a wheel file name: {e}", remedy="pass .whl files only"
        ) from e
    if not target.accepts(tags):
        raise SiteTreeError(
            f"wheel {path.name} does not fit target {target.describe()}",
            remedy="download wheels for this target (airgap pack does), or change the target",
        )
    return _Wheel(path, name, str(version), tags)


def _install(wheel: _Wheel, tree: _Tree) -> Installed:
    try:
        with zipfile.ZipFile(wheel.path) as zf:
            return _install_zip(wheel, zf, tree)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise SiteTreeError(
            f"{wheel.path.name} is not a readable zip archive: {e}",
            remedy="delete it from the wheel cache and pack again",
        ) from e


def _install_zip(wheel: _Wheel, zf: zipfile.ZipFile, tree: _Tree) -> Installed:
    fname = wheel.path.name
    members = [i for i in zf.infolist() if not i.filename.endswith("/")]
    seen: set[str] = set()
    for info in members:
        _check_member(fname, info)
        if info.filename in seen:
            raise SiteTreeError(
                f"{fname}: member {info.filename} appears twice", remedy=_BROKEN_WHEEL
            )
        seen.add(info.filename)

    dist_info = _dist_info_dir(wheel, {i.filename.split("/", 1)[0] for i in members})
    data_dir = dist_info[: -len(".dist-info")] + ".data"
    _check_wheel_file(fname, zf, dist_info)
    record = _read_record(fname, zf, dist_info)

    rows: dict[str, tuple[str, int]] = {}  # installed path -> (sha256, size)
    for info in sorted(members, key=lambda i: i.filename):
        rel = _destination(fname, info.filename, dist_info, data_dir)
        if rel is None:
            continue
        expected = record.get(info.filename)
        if expected is None:
            raise SiteTreeError(
                f"{fname}: member {info.filename} is not listed in its RECORD",
                remedy=_BROKEN_WHEEL,
            )
        if rel in rows:
            raise SiteTreeError(f"{fname}: two members install to {rel}", remedy=_BROKEN_WHEEL)
        digest, size = _write_member(fname, zf, info, expected, tree, rel)
        rows[rel] = (digest, size)
        _claim(tree, rel, wheel.name, digest)

    installer_rel = f"{dist_info}/INSTALLER"
    data = f"{INSTALLER}\n".encode()
    rows[installer_rel] = (_write_bytes(tree, installer_rel, data), len(data))
    _claim(tree, installer_rel, wheel.name, rows[installer_rel][0])
    record_rel = f"{dist_info}/RECORD"
    _write_bytes(tree, record_rel, _render_record(rows, record_rel))
    _claim(tree, record_rel, wheel.name, "")
    return Installed(wheel.name, wheel.version)


_BROKEN_WHEEL: Final = "the wheel is malformed or was tampered with; report it to its publisher"


def _check_member(fname: str, info: zipfile.ZipInfo) -> None:
    """Refuse member names that could escape the tree, and anything but regular files."""
    name = info.filename
    parts = name.split("/")
    unsafe = (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or (len(parts[0]) >= 2 and parts[0][1] == ":")  # a Windows drive, e.g. C:
        or any(p in ("", ".", "..") for p in parts)
    )
    if unsafe:
        raise SiteTreeError(f"{fname}: member {name!r} has an unsafe path", remedy=_BROKEN_WHEEL)
    kind = stat.S_IFMT(info.external_attr >> 16)
    if info.create_system == 3 and kind not in (0, stat.S_IFREG):
        raise SiteTreeError(
            f"{fname}: member {name} is not a regular file (mode {kind:o})",
            remedy=_BROKEN_WHEEL,
        )


def _dist_info_dir(wheel: _Wheel, top_level: set[str]) -> str:
    candidates = sorted(d for d in top_level if d.endswith(".dist-info"))
    if len(candidates) != 1:
        raise SiteTreeError(
            f"{wheel.path.name}: expected one .dist-info folder, found {len(candidates)}",
            remedy=_BROKEN_WHEEL,
        )
    stem = candidates[0][: -len(".dist-info")]
    name, _, _version = stem.rpartition("-")
    if canonicalize_name(name) != wheel.name:
        raise SiteTreeError(
            f"{wheel.path.name}: its {candidates[0]} names another distribution",
            remedy=_BROKEN_WHEEL,
        )
    return candidates[0]


def _check_wheel_file(fname: str, zf: zipfile.ZipFile, dist_info: str) -> None:
    try:
        text = zf.read(f"{dist_info}/WHEEL").decode("utf-8")
    except KeyError as e:
        raise SiteTreeError(f"{fname}: {dist_info}/WHEEL is missing", remedy=_BROKEN_WHEEL) from e
    version = HeaderParser().parsestr(text).get("Wheel-Version", "")
    # PEP 427: refuse a major version we do not know; a newer minor version is fine.
    if version.split(".")[0].strip() != "1":
        raise SiteTreeError(
            f"{fname}: Wheel-Version {version or '(none)'} is not supported (need 1.x)",
            remedy="use a wheel built by a current packaging tool",
        )


def _read_record(fname: str, zf: zipfile.ZipFile, dist_info: str) -> dict[str, tuple[str, int]]:
    """RECORD as ``path -> ("algo=b64digest" or "", size or -1)``."""
    try:
        text = zf.read(f"{dist_info}/RECORD").decode("utf-8")
    except KeyError as e:
        raise SiteTreeError(f"{fname}: {dist_info}/RECORD is missing", remedy=_BROKEN_WHEEL) from e
    entries: dict[str, tuple[str, int]] = {}
    for row in csv.reader(io.StringIO(text)):
        if not row:
            continue
        if len(row) != 3:
            raise SiteTreeError(
                f"{fname}: RECORD row {row!r} does not have 3 fields", remedy=_BROKEN_WHEEL
            )
        path, hash_, size = row
        entries[path] = (hash_, int(size) if size.isdigit() else -1)
    return entries


def _destination(fname: str, member: str, dist_info: str, data_dir: str) -> str | None:
    """Where a member goes, relative to the tree root, or None when it is left out."""
    parts = member.split("/")
    if parts[0] == dist_info and len(parts) == 2 and parts[1] in _REPLACED:
        return None
    if parts[0] == data_dir:
        if len(parts) < 3 or parts[1] not in _KNOWN_SCHEMES:
            raise SiteTreeError(
                f"{fname}: member {member} is in an unknown .data scheme", remedy=_BROKEN_WHEEL
            )
        if parts[1] not in _TREE_SCHEMES:
            return None
        parts = parts[2:]
    if "__pycache__" in parts[:-1] and parts[-1].endswith(".pyc"):
        return None  # interpreter-specific and timestamp-based: never part of a tree
    return "/".join(parts)


def _write_member(
    fname: str,
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    expected: tuple[str, int],
    tree: _Tree,
    rel: str,
) -> tuple[str, int]:
    """Copy one member, checking it against its RECORD entry; returns (sha256, size)."""
    recorded_hash, recorded_size = expected
    sha = hashlib.sha256()
    checker = None
    want = ""
    if recorded_hash:
        algo, _, want = recorded_hash.partition("=")
        if algo in _WEAK_HASHES or algo not in hashlib.algorithms_guaranteed:
            raise SiteTreeError(
                f"{fname}: RECORD uses hash {algo!r} for {info.filename}; need sha256 or better",
                remedy=_BROKEN_WHEEL,
            )
        # RECORDs nearly always use sha256: then one hash serves both the check and our RECORD.
        checker = sha if algo == "sha256" else hashlib.new(algo)
    elif not info.filename.endswith(".pyc"):  # PEP 376 lets only RECORD and .pyc go unhashed
        raise SiteTreeError(
            f"{fname}: RECORD has no hash for {info.filename}", remedy=_BROKEN_WHEEL
        )
    mode = 0o755 if (info.external_attr >> 16) & 0o111 else 0o644
    size = 0
    target_path = _prepare(tree, rel)
    with zf.open(info) as src, _create(target_path, mode, rel) as out:
        while chunk := src.read(_CHUNK):
            sha.update(chunk)
            if checker is not None and checker is not sha:
                checker.update(chunk)
            out.write(chunk)
            size += len(chunk)
    if checker is not None and _b64(checker.digest()) != want:
        raise SiteTreeError(
            f"{fname}: {info.filename} does not match the hash in its RECORD",
            remedy=_BROKEN_WHEEL,
        )
    if recorded_size >= 0 and recorded_size != size:
        raise SiteTreeError(
            f"{fname}: {info.filename} is {size} bytes, its RECORD says {recorded_size}",
            remedy=_BROKEN_WHEEL,
        )
    return sha.hexdigest(), size


def _write_bytes(tree: _Tree, rel: str, data: bytes) -> str:
    with _create(_prepare(tree, rel), 0o644, rel) as out:
        out.write(data)
    return hashlib.sha256(data).hexdigest()


def _prepare(tree: _Tree, rel: str) -> Path:
    """The absolute path for ``rel``, with its parent folders made (mode 0o755)."""
    path = tree.root.joinpath(*rel.split("/"))
    parent = path.parent
    missing: list[Path] = []
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except OSError as e:
            raise SiteTreeError(
                f"cannot create folder {folder.relative_to(tree.root).as_posix()}: {e.strerror}",
                remedy="two wheels disagree on whether this is a file or a folder",
            ) from e
        folder.chmod(_DIR_MODE)  # explicit, so the umask cannot change the tree
    return path


@contextlib.contextmanager
def _create(path: Path, mode: int, rel: str) -> Iterator[BinaryIO]:
    """A file opened for writing with an exact mode, whatever the umask."""
    try:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            # Only reachable for a path a previous wheel wrote; _claim then checks the bytes.
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    except OSError as e:
        raise SiteTreeError(
            f"cannot create {rel}: {e.strerror}",
            remedy="two wheels disagree on whether this is a file or a folder",
        ) from e
    os.fchmod(fd, mode)
    with os.fdopen(fd, "wb") as out:
        yield out


def _claim(tree: _Tree, rel: str, dist: str, digest: str) -> None:
    """Record who wrote ``rel``; refuse a second wheel with different bytes there, and two
    paths that differ only in case (the bundle format refuses those too)."""
    folded = rel.casefold()
    other = tree.folded.get(folded)
    if other is not None and other != rel:
        raise SiteTreeError(
            f"{other} and {rel} differ only in letter case",
            remedy="a tree must be usable on case-insensitive file systems; drop one package",
        )
    tree.folded[folded] = rel
    previous = tree.owners.get(rel)
    if previous is not None and previous[1] != digest:
        raise SiteTreeError(
            f"{previous[0]} and {dist} both install {rel} with different contents",
            remedy="remove one of the two packages from the lock",
        )
    tree.owners[rel] = (dist, digest)


def _render_record(rows: dict[str, tuple[str, int]], record_rel: str) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for rel in sorted(rows):
        digest, size = rows[rel]
        writer.writerow([rel, f"sha256={_b64(bytes.fromhex(digest))}", size])
    writer.writerow([record_rel, "", ""])
    return out.getvalue().encode("utf-8")


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _set_times(root: Path, mtime: int) -> None:
    """Every file and folder gets the same time; folders last, as writing changes them."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(Path(dirpath, name), (mtime, mtime), follow_symlinks=False)
    os.utime(root, (mtime, mtime))


def compile_bytecode(tree: Path, target: Target) -> bool:
    """Add PEP 552 hash-based ``.pyc`` files to ``tree`` when this Python is the target's.

    Without them every start of a read-only mounted tree recompiles every module (seconds
    for scikit-learn). ``checked-hash`` pycs are validated against the source's hash, not
    its mtime, so they survive the normalised times of a bundle and never go stale. They
    are compiled in a child process with PYTHONHASHSEED=0, since set and frozenset
    constants are marshalled in hash order; with that, the same source gives the same bytes.
    A cross-target tree gets no bytecode (another Python's pycs would be ignored anyway).

    Returns:
        True when bytecode was written.

    Raises:
        SiteTreeError: the compiler could not run at all.
    """
    if (target.implementation, target.python_version) != ("cp", sys.version_info[:2]):
        return False
    # -s: record paths relative to the tree, not the temporary folder it was built in
    # (the import system points co_filename at the real source when it loads a pyc).
    cmd = [
        sys.executable,
        "-m",
        "compileall",
        "-q",
        "-j",
        "0",
        "--invalidation-mode",
        "checked-hash",
        "-s",
        str(tree),
        str(tree),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    # Exit 1 means some file did not compile (packages ship templates and py2-only test
    # files named .py); those stay source-only, as they would with pip. Anything else is
    # compileall itself failing.
    if proc.returncode not in (0, 1):
        raise SiteTreeError(
            f"compiling bytecode in {tree} failed: {(proc.stdout + proc.stderr).strip()[-500:]}",
            remedy="check that the locked packages support the target Python",
        )
    for dirpath, _dirnames, filenames in os.walk(tree):
        for name in filenames:
            if name.endswith(".pyc"):
                os.chmod(os.path.join(dirpath, name), 0o644)
    return True
