"""A minimal, deterministic wheel installer (PEP 427) that builds a site-packages tree."""

from __future__ import annotations

import base64
import concurrent.futures
import configparser
import contextlib
import csv
import hashlib
import io
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final, Literal, NamedTuple

from packaging.utils import (
    InvalidWheelFilename,
    NormalizedName,
    canonicalize_name,
    parse_wheel_filename,
)

from ..errors import LocalRunnerError, SiteTreeError
from ..formats.manifest import fold_name
from ..interpreters import find_python
from ..layout import PREFIX_DIR

if TYPE_CHECKING:
    from packaging.tags import Tag

    from ..target import Target

INSTALLER: Final = "airgap-bundler"
ZIP_EPOCH: Final = 315_532_800  # 1980-01-01T00:00:00Z, the default mtime of every path
_CHUNK: Final = 1 << 20  # bytes per read while copying
_DIR_MODE: Final = 0o755
# Schemes of `<name>-<version>.data/<scheme>/...` that belong in site-packages. The others
# go to the install prefix beside the tree, as in a virtualenv: scripts to bin/, headers to
# include/site/pythonX.Y/<dist>/, data to the prefix itself (except lib/pythonX.Y/site-packages,
# which is purelib in a venv and so goes into the tree).
_TREE_SCHEMES: Final = frozenset({"purelib", "platlib"})
_KNOWN_SCHEMES: Final = _TREE_SCHEMES | {"scripts", "headers", "data"}
# Files of the wheel's own .dist-info that an installer replaces or must not copy: RECORD is
# regenerated, its signatures would no longer match, INSTALLER/REQUESTED/direct_url.json
# describe an installation, not the wheel.
_REPLACED: Final = frozenset(
    {"RECORD", "RECORD.jws", "RECORD.p7s", "INSTALLER", "REQUESTED", "direct_url.json"}
)
_WEAK_HASHES: Final = frozenset({"md5", "sha1", "sha224"})
# RECORD names prefix files relative to the tree: in the payload prefix/ sits beside
# site-packages/, as a venv's RECORD reaches its bin/ with ../../../bin/.
_PREFIX_FROM_TREE: Final = f"../{PREFIX_DIR}/"
_SCRIPT_MODE: Final = 0o755
# A relocatable tree cannot name its interpreter in a shebang, so /bin/sh runs the one the
# runtime exports (AIRGAP_PYTHON), else python3 from PATH; Python then reads these lines as a
# comment and a string. This is pypa/installer's trampoline for unusual interpreter paths.
LAUNCHER_SHEBANG: Final = (
    b"#!/bin/sh\n'''exec' \"${AIRGAP_PYTHON:-python3}\" \"$0\" \"$@\"\n' '''\n"
)
# pypa/installer's wrapper text, so a launcher behaves as the one pip writes.
_LAUNCHER_TEMPLATE: Final = (
    "# -*- coding: utf-8 -*-\n"
    "import re\n"
    "import sys\n"
    "from {module} import {import_name}\n"
    'if __name__ == "__main__":\n'
    '    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])\n'
    "    sys.exit({func_path}())\n"
)
# The entry-point object reference of the packaging spec: module[:attr.attr] [extras].
_ENTRY_POINT_RE: Final = re.compile(
    r"^(?P<module>[\w.]+)\s*(:\s*(?P<attrs>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$"
)
# On POSIX pip writes gui_scripts exactly like console_scripts; so do we.
_SCRIPT_SECTIONS: Final = ("console_scripts", "gui_scripts")

Warn = Callable[[str], None]
Root = Literal["site", "prefix"]


class _Dest(NamedTuple):
    """Where one wheel member goes: which root, the path under it, and whether it is a
    `.data/scripts` file (mode 0755, `#!python` rewritten)."""

    root: Root
    rel: str
    script: bool = False


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
    """What has been written so far under one root, to catch clashes between wheels."""

    root: Path
    owners: dict[str, tuple[str, str]] = field(default_factory=dict)  # path -> (dist, sha256)
    folded: dict[str, str] = field(default_factory=dict)  # fold_name(path) -> path
    # Folders known to exist ("" is the root): one stat per new folder, not one per file.
    folders: set[str] = field(default_factory=lambda: {""})
    files: list[str] = field(default_factory=list)  # every file written, for _set_times


@dataclass(frozen=True)
class _Build:
    """One tree build: the two roots, the target's X.Y and where warnings go."""

    site: _Tree
    prefix: _Tree | None  # None: prefix files are left out
    python: str
    warn: Warn


def build_site_tree(
    wheels: Sequence[Path],
    target: Target,
    dest: Path,
    *,
    mtime: int = ZIP_EPOCH,
    prefix: Path | None = None,
    warn: Warn | None = None,
    owners: dict[str, tuple[str, str]] | None = None,
) -> list[Installed]:
    """Install ``wheels`` into ``dest`` as a site-packages tree for ``target``.

    The tree is identical for identical wheels, whatever their order, the umask or the
    clock: wheels are installed sorted by name, every file gets mode 0o644 (0o755 when
    executable in the wheel), every folder 0o755, every path the time ``mtime``. Nothing is
    compiled: the tree holds no ``__pycache__`` (bytecode caches in a wheel are left out).
    Each ``.dist-info`` gets ``INSTALLER`` = ``airgap-bundler`` and a regenerated
    ``RECORD``. Every member is checked against the wheel's RECORD before it is used.

    ``prefix`` is the install prefix beside the tree (the payload's ``prefix/``), filled as
    a virtualenv's would be: ``.data/scripts`` and launchers for ``console_scripts`` and
    ``gui_scripts`` in ``bin/`` (mode 0o755), ``.data/headers`` in
    ``include/site/pythonX.Y/<dist>/``, other ``.data/data`` files at their path; RECORD
    names them ``../prefix/...``. ``.data/data/lib/pythonX.Y/site-packages/`` (X.Y of the
    target) is purelib in a venv, so it goes into the tree. Without ``prefix`` those files
    are left out. The prefix folder is only created when some wheel has such files.

    ``warn`` receives one line per thing that could not be carried as a venv would (it
    names the wheel): a prefix file that another wheel already installed with other bytes
    (the first wheel by name keeps it), an entry point that cannot become a launcher, a
    ``.data/data`` file for another Python's site-packages.

    ``dest`` and ``prefix`` must be absent or empty; what was created here is removed
    again if the build fails. ``owners``, when given, receives every file of ``dest`` as
    ``path -> (distribution, sha256)`` (what :func:`source_groups` needs).

    Returns:
        The installed distributions, sorted by name.

    Raises:
        SiteTreeError: a wheel is malformed, does not fit ``target``, has an unsafe or
            unrecorded member or a hash mismatch, or two wheels clash in the tree.
    """
    infos = sorted((_inspect(w, target) for w in wheels), key=lambda w: (w.name, w.path.name))
    names = [w.name for w in infos]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SiteTreeError(
            f"more than one wheel for {', '.join(twice)}",
            remedy="pass one wheel per distribution (the lock pins one version of each)",
        )
    roots = [dest] if prefix is None else [dest, prefix]
    for root in roots:
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise SiteTreeError(
                f"{root} exists and is not an empty folder", remedy="remove it or pick another"
            )
    created = [r for r in roots if not r.exists()]
    try:
        dest.mkdir(parents=True, exist_ok=True)
        dest.chmod(_DIR_MODE)
        build = _Build(
            site=_Tree(dest),
            prefix=None
            if prefix is None
            else _Tree(prefix, folders={""} if prefix.is_dir() else set()),
            python=target.python,
            warn=warn or (lambda _line: None),
        )
        installed = [_install(w, build) for w in infos]
        for tree in (build.site, build.prefix):
            if tree is not None and tree.root.is_dir():
                _set_times(tree, mtime)
    except BaseException:
        for root in created:
            shutil.rmtree(root, ignore_errors=True)
        raise
    if owners is not None:
        owners.update(build.site.owners)
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


def _install(wheel: _Wheel, build: _Build) -> Installed:
    try:
        with zipfile.ZipFile(wheel.path) as zf:
            return _install_zip(wheel, zf, build)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise SiteTreeError(
            f"{wheel.path.name} is not a readable zip archive: {e}",
            remedy="delete it from the wheel cache and pack again",
        ) from e


def _install_zip(wheel: _Wheel, zf: zipfile.ZipFile, build: _Build) -> Installed:
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
    places = _Places(
        dist_info=dist_info,
        data_dir=data_dir,
        python=build.python,
        headers=f"include/site/python{build.python}/{dist_info.rsplit('-', 2)[0]}",
    )

    rows: dict[str, tuple[str, int]] = {}  # RECORD path (tree-relative) -> (sha256, size)
    for info in sorted(members, key=lambda i: i.filename):
        dest = _destination(fname, info.filename, places)
        if dest is None:
            continue
        expected = record.get(info.filename)
        if expected is None:
            raise SiteTreeError(
                f"{fname}: member {info.filename} is not listed in its RECORD",
                remedy=_BROKEN_WHEEL,
            )
        if dest.root == "prefix":
            if build.prefix is None:
                continue
            key = _PREFIX_FROM_TREE + dest.rel
            if key in rows:
                raise SiteTreeError(
                    f"{fname}: two members install to {PREFIX_DIR}/{dest.rel}",
                    remedy=_BROKEN_WHEEL,
                )
            reader = _MemberReader(fname, zf, info, expected, rewrite_shebang=dest.script)
            mode = _SCRIPT_MODE if dest.script else _member_mode(info)
            written = _put_prefix(build, wheel.name, fname, dest.rel, reader, mode)
            if written is not None:
                rows[key] = written
            continue
        if dest.rel in rows:
            raise SiteTreeError(f"{fname}: two members install to {dest.rel}", remedy=_BROKEN_WHEEL)
        digest, size = _write_member(fname, zf, info, expected, build.site, dest.rel)
        rows[dest.rel] = (digest, size)
        _claim(build.site, dest.rel, wheel.name, digest)
    if places.other_pythons:
        build.warn(
            f"{fname}: its data files under {', '.join(sorted(places.other_pythons))} are for "
            f"another Python than the target's {build.python}; they are carried in "
            f"{PREFIX_DIR}/ but are not importable"
        )
    if build.prefix is not None:
        for name, data in _launchers(fname, zf, dist_info, build.warn):
            rel = f"bin/{name}"
            key = _PREFIX_FROM_TREE + rel
            if key in rows:
                # pip writes .data/scripts first and the launchers over them.
                build.warn(f"{fname}: the entry point {name} replaces its .data/scripts/{name}")
            written = _put_prefix(build, wheel.name, fname, rel, _BytesReader(data), _SCRIPT_MODE)
            if written is not None:
                rows[key] = written

    installer_rel = f"{dist_info}/INSTALLER"
    data = f"{INSTALLER}\n".encode()
    rows[installer_rel] = (_write_bytes(build.site, installer_rel, data), len(data))
    _claim(build.site, installer_rel, wheel.name, rows[installer_rel][0])
    record_rel = f"{dist_info}/RECORD"
    _write_bytes(build.site, record_rel, _render_record(rows, record_rel))
    _claim(build.site, record_rel, wheel.name, "")
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


@dataclass
class _Places:
    """Where one wheel's `.data` schemes go; collects `lib/pythonA.B` folders for other Pythons."""

    dist_info: str
    data_dir: str
    python: str  # the target's "X.Y"
    headers: str  # include/site/pythonX.Y/<dist>
    other_pythons: set[str] = field(default_factory=set)


_SITE_IN_DATA: Final = re.compile(r"^lib(?:64)?/python(\d+\.\d+)/site-packages/(.+)$")


def _destination(fname: str, member: str, places: _Places) -> _Dest | None:
    """Where a member goes, or None when it is left out."""
    parts = member.split("/")
    if parts[0] == places.dist_info and len(parts) == 2 and parts[1] in _REPLACED:
        return None
    if "__pycache__" in parts[:-1] and parts[-1].endswith(".pyc"):
        return None  # interpreter-specific and timestamp-based: never part of a tree
    if parts[0] != places.data_dir:
        return _Dest("site", member)
    if len(parts) < 3 or parts[1] not in _KNOWN_SCHEMES:
        raise SiteTreeError(
            f"{fname}: member {member} is in an unknown .data scheme", remedy=_BROKEN_WHEEL
        )
    scheme, rest = parts[1], "/".join(parts[2:])
    if scheme in _TREE_SCHEMES:
        return _Dest("site", rest)
    if scheme == "scripts":
        return _Dest("prefix", f"bin/{rest}", script=True)
    if scheme == "headers":
        return _Dest("prefix", f"{places.headers}/{rest}")
    # .data/data: the prefix, except the target's site-packages (lib64 is a link to lib in a
    # venv), which is where a venv's purelib is.
    m = _SITE_IN_DATA.match(rest)
    if m and m.group(1) == places.python:
        return _Dest("site", m.group(2))
    if m:
        places.other_pythons.add(rest[: rest.index("/site-packages/") + len("/site-packages")])
    return _Dest("prefix", rest)


def _member_mode(info: zipfile.ZipInfo) -> int:
    return 0o755 if (info.external_attr >> 16) & 0o111 else 0o644


class _MemberReader:
    """A member's bytes as written, checked against its RECORD entry once fully read.

    ``rewrite_shebang``: a first line starting with ``#!python`` is replaced by the
    launcher trampoline, as pip rewrites it to its interpreter (options after ``#!python``
    are dropped, as pip drops them). ``digest``/``size`` describe the bytes written.
    """

    def __init__(
        self,
        fname: str,
        zf: zipfile.ZipFile,
        info: zipfile.ZipInfo,
        expected: tuple[str, int],
        *,
        rewrite_shebang: bool = False,
    ) -> None:
        self.fname, self.zf, self.info = fname, zf, info
        self.expected = expected
        self.rewrite = rewrite_shebang
        self.digest = ""
        self.size = 0

    def chunks(self) -> Iterator[bytes]:
        fname, info = self.fname, self.info
        recorded_hash, recorded_size = self.expected
        checker = None
        want = ""
        if recorded_hash:
            algo, _, want = recorded_hash.partition("=")
            if algo in _WEAK_HASHES or algo not in hashlib.algorithms_guaranteed:
                raise SiteTreeError(
                    f"{fname}: RECORD uses hash {algo!r} for {info.filename}; "
                    "need sha256 or better",
                    remedy=_BROKEN_WHEEL,
                )
            checker = hashlib.new(algo)
        elif not info.filename.endswith(".pyc"):  # PEP 376: only RECORD and .pyc go unhashed
            raise SiteTreeError(
                f"{fname}: RECORD has no hash for {info.filename}", remedy=_BROKEN_WHEEL
            )
        # RECORDs nearly always use sha256: then one hash serves both the check and our
        # RECORD, unless the bytes written differ from the member's.
        out = checker if checker is not None and checker.name == "sha256" else hashlib.sha256()
        size = written = 0
        with self.zf.open(info) as src:
            first = self.rewrite
            while chunk := (src.readline(_CHUNK) if first else src.read(_CHUNK)):
                size += len(chunk)
                if checker is not None:
                    checker.update(chunk)
                piece = chunk
                if first and chunk.startswith(b"#!python"):
                    piece = LAUNCHER_SHEBANG
                    if out is checker:
                        out = hashlib.sha256()
                if out is not checker:
                    out.update(piece)
                written += len(piece)
                first = False
                yield piece
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
        self.digest, self.size = out.hexdigest(), written


class _BytesReader:
    """Generated bytes (a launcher) with the reader interface of :class:`_MemberReader`."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.digest = hashlib.sha256(data).hexdigest()
        self.size = len(data)

    def chunks(self) -> Iterator[bytes]:
        yield self.data


def _write_member(
    fname: str,
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    expected: tuple[str, int],
    tree: _Tree,
    rel: str,
) -> tuple[str, int]:
    """Copy one member, checking it against its RECORD entry; returns (sha256, size)."""
    reader = _MemberReader(fname, zf, info, expected)
    _write_reader(tree, rel, reader, _member_mode(info))
    return reader.digest, reader.size


def _write_reader(tree: _Tree, rel: str, reader: _MemberReader | _BytesReader, mode: int) -> None:
    with _create(_prepare(tree, rel), mode, rel) as out:
        for chunk in reader.chunks():
            out.write(chunk)
    tree.files.append(rel)


def _put_prefix(
    build: _Build,
    dist: str,
    fname: str,
    rel: str,
    reader: _MemberReader | _BytesReader,
    mode: int,
) -> tuple[str, int] | None:
    """Write one prefix file unless another wheel has it with other bytes (then warn).

    Returns its (sha256, size), or None when it was left out. A path already taken is
    hashed first, so the first owner's bytes are never overwritten.
    """
    tree = build.prefix
    assert tree is not None
    folded = tree.folded.get(fold_name(rel))
    previous = tree.owners.get(rel)
    if folded is not None and folded != rel:
        build.warn(
            f"{fname}: {PREFIX_DIR}/{rel} is left out: {PREFIX_DIR}/{folded} of "
            f"{tree.owners[folded][0]} differs only in letter case"
        )
        _drain(reader)
        return None
    if previous is not None and previous[0] != dist:
        _drain(reader)
        if previous[1] != reader.digest:
            build.warn(
                f"{fname}: {PREFIX_DIR}/{rel} is left out: {previous[0]} already installs it "
                "with different contents"
            )
            return None
        return reader.digest, reader.size  # identical bytes: shared, as in site-packages
    _write_reader(tree, rel, reader, mode)
    tree.folded[fold_name(rel)] = rel
    tree.owners[rel] = (dist, reader.digest)
    return reader.digest, reader.size


def _drain(reader: _MemberReader | _BytesReader) -> None:
    """Read (and so check) a member without writing it."""
    for _chunk in reader.chunks():
        pass


_SCRIPT_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*$")


def _launchers(
    fname: str, zf: zipfile.ZipFile, dist_info: str, warn: Warn
) -> list[tuple[str, bytes]]:
    """(name, launcher bytes) for the wheel's console_scripts and gui_scripts, sorted."""
    try:
        text = zf.read(f"{dist_info}/entry_points.txt").decode("utf-8")
    except KeyError:
        return []
    except UnicodeDecodeError:
        warn(f"{fname}: entry_points.txt is not UTF-8; no launchers were written")
        return []
    parser = configparser.ConfigParser(delimiters=("=",), interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # names keep their case
    try:
        parser.read_string(text)
    except configparser.Error as e:
        warn(f"{fname}: entry_points.txt cannot be read ({e}); no launchers were written")
        return []
    found: dict[str, bytes] = {}
    for section in _SCRIPT_SECTIONS:
        if not parser.has_section(section):
            continue
        for name, value in parser.items(section):
            m = _ENTRY_POINT_RE.match(value.strip())
            if not _SCRIPT_NAME_RE.fullmatch(name) or name in found:
                why = "is named twice" if name in found else "is not a safe file name"
                warn(f"{fname}: {section} entry {name!r} {why}; no launcher was written for it")
                continue
            if m is None or not m.group("attrs"):
                warn(
                    f"{fname}: {section} entry {name} = {value!r} is not module:function; "
                    "no launcher was written for it"
                )
                continue
            attrs = m.group("attrs")
            code = _LAUNCHER_TEMPLATE.format(
                module=m.group("module"), import_name=attrs.split(".")[0], func_path=attrs
            )
            found[name] = LAUNCHER_SHEBANG + code.encode("utf-8")
    return sorted(found.items())


def _write_bytes(tree: _Tree, rel: str, data: bytes) -> str:
    with _create(_prepare(tree, rel), 0o644, rel) as out:
        out.write(data)
    tree.files.append(rel)
    return hashlib.sha256(data).hexdigest()


def _prepare(tree: _Tree, rel: str) -> Path:
    """The absolute path for ``rel``, with its parent folders made (mode 0o755)."""
    path = tree.root.joinpath(*rel.split("/"))
    parent_rel = rel.rpartition("/")[0]
    if parent_rel in tree.folders:
        return path
    missing: list[str] = []
    while parent_rel not in tree.folders:
        missing.append(parent_rel)
        if not parent_rel:
            break  # the root itself (a prefix is made on its first file)
        parent_rel = parent_rel.rpartition("/")[0]
    for folder_rel in reversed(missing):
        folder = tree.root.joinpath(*folder_rel.split("/")) if folder_rel else tree.root
        try:
            if folder_rel:
                folder.mkdir()
            else:
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SiteTreeError(
                f"cannot create {rel}: its folder {folder_rel or '.'}: {e.strerror}",
                remedy="two wheels disagree on whether this is a file or a folder",
            ) from e
        folder.chmod(_DIR_MODE)  # explicit, so the umask cannot change the tree
        tree.folders.add(folder_rel)
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
    paths that differ only in case or Unicode normalisation (the bundle format refuses those
    too, with the same folding)."""
    folded = fold_name(rel)
    other = tree.folded.get(folded)
    if other is not None and other != rel:
        raise SiteTreeError(
            f"{other} and {rel} differ only in letter case or Unicode normalisation",
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


def _set_times(tree: _Tree, mtime: int) -> None:
    """Every file and folder gets the same time; folders last, deepest first, as writing
    changes them. The paths are the ones written, so no walk of the tree is needed."""
    root = tree.root
    for rel in tree.files:
        os.utime(root.joinpath(*rel.split("/")), (mtime, mtime), follow_symlinks=False)
    for rel in sorted(tree.folders - {""}, key=lambda r: (-r.count("/"), r)):
        os.utime(root.joinpath(*rel.split("/")), (mtime, mtime), follow_symlinks=False)
    os.utime(root, (mtime, mtime))


# Run by the target's interpreter (3.7 and later): compile the tree-relative paths read
# from stdin, in that order, into PEP 552 checked-hash pycs whose recorded file name is the
# tree-relative path. A file that does not compile is skipped (exit 1 at the end).
_COMPILE_DRIVER: Final = """\
import os, py_compile, sys
root, failed = sys.argv[1], 0
for name in sys.stdin.buffer.read().split(b"\\0"):
    rel = os.fsdecode(name)
    if rel:
        try:
            py_compile.compile(
                root + "/" + rel, dfile=rel, doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
            )
        except Exception:
            failed = 1
sys.exit(failed)
"""
# Sources are dealt round-robin into this many batches, each compiled by one process, up to
# one process per core at a time. The number is fixed, not the core count, because a pyc
# can depend on what its process compiled before: marshal sets FLAG_REF from reference
# counts, and those of shared constants (e.g. one-character strings) vary with earlier work
# before 3.12. compileall's worker pool hands files out in whatever order workers free up,
# which made 3 of pip's 491 pycs differ between two runs on 3.8; fixed batches compiled in
# sorted order do not.
COMPILE_BATCHES: Final = 16
# With groups (one per distribution, see source_groups), each group is split into batches of
# about this many sources on its own, so a distribution's pycs depend only on its own files
# and the interpreter: the tree cache can then reuse them in a tree with other neighbours.
GROUP_BATCH: Final = 256


def source_groups(owners: dict[str, tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """The tree's ``.py`` files by owning distribution: ``dist -> [(path, sha256)]``,
    sorted (``owners`` as :func:`build_site_tree` fills it)."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for rel, (dist, digest) in sorted(owners.items()):
        if rel.endswith(".py"):
            groups.setdefault(dist, []).append((rel, digest))
    return dict(sorted(groups.items()))


def _group_batches(groups: Sequence[Sequence[str]]) -> list[list[str]]:
    batches: list[list[str]] = []
    for group in groups:
        ordered = sorted(group)
        count = max(1, -(-len(ordered) // GROUP_BATCH))
        batches.extend(ordered[i::count] for i in range(count))
    return batches


def bytecode_interpreter(target: Target) -> Path | None:
    """The host interpreter that can write ``target``'s bytecode, or None.

    This Python when it is the target's (CPython, same major.minor), else a CPython of that
    version found on the host (PATH, pyenv, /usr/bin: :func:`interpreters.find_python`).
    The pyc format (magic number) is fixed per minor version, so any patch release will do.
    None for other implementations and for targets before 3.7 (no hash-based pycs).
    """
    if target.implementation != "cp" or target.python_version < (3, 7):
        return None
    if target.python_version == sys.version_info[:2]:
        return Path(sys.executable)
    try:
        return find_python(target.python).path
    except LocalRunnerError:
        return None


def compile_bytecode(
    tree: Path,
    target: Target,
    python: Path | None = None,
    *,
    groups: Sequence[Sequence[str]] | None = None,
) -> bool:
    """Add PEP 552 hash-based ``.pyc`` files for ``target`` to ``tree``.

    Without them every start of a read-only mounted tree recompiles every module (seconds
    for scikit-learn). ``checked-hash`` pycs are validated against the source's hash, not
    its mtime, so they survive the normalised times of a bundle and never go stale. They
    are compiled by an interpreter of the target's version (``python``, else
    :func:`bytecode_interpreter`) in a child process with PYTHONHASHSEED=0, since set and
    frozenset constants are marshalled in hash order; with that, the same source gives the
    same bytes, and paths in them are relative to the tree.

    ``groups``: compile only these tree-relative sources, each group in batches of its own
    (:data:`GROUP_BATCH`), so a group's pycs are the same whatever else the tree holds; the
    processes run on every core, and the output is the same for any core count.

    Returns:
        True when bytecode was written; False when no interpreter of the target's version
        was found (the tree then ships source only, and Python compiles in memory).

    Raises:
        SiteTreeError: the compiler could not run at all.
    """
    python = python or bytecode_interpreter(target)
    if python is None:
        return False
    if groups is None:
        sources = _python_sources(tree)
        batches = [sources[i::COMPILE_BATCHES] for i in range(COMPILE_BATCHES)]
    else:
        batches = _group_batches(groups)
    workers = max(1, min(os.cpu_count() or 1, len(batches)))
    # Largest batches first, so no core idles at the end behind one big batch; each batch
    # is its own process, so the order they run in cannot change their pycs.
    batches.sort(key=len, reverse=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda b: _compile_batch(python, tree, b), batches))
    # Exit 1 means some file did not compile (packages ship templates and py2-only test
    # files named .py); those stay source-only, as they would with pip. Anything else is
    # the compiler itself failing.
    failures = [out for code, out in results if code not in (0, 1)]
    if failures:
        raise SiteTreeError(
            f"compiling bytecode in {tree} with {python} failed: {failures[0].strip()[-500:]}",
            remedy="check that the locked packages support the target Python",
        )
    for dirpath, _dirnames, filenames in os.walk(tree):
        for name in filenames:
            if name.endswith(".pyc"):
                os.chmod(os.path.join(dirpath, name), 0o644)
    return True


def _python_sources(tree: Path) -> list[str]:
    """Tree-relative paths of every ``.py`` file, sorted (``__pycache__`` left out)."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        rel_dir = Path(dirpath).relative_to(tree).as_posix()
        for name in filenames:
            if name.endswith(".py"):
                found.append(name if rel_dir == "." else f"{rel_dir}/{name}")
    return sorted(found)


def _compile_batch(python: Path, tree: Path, batch: list[str]) -> tuple[int, str]:
    if not batch:
        return 0, ""
    # A clean environment: no PYTHONPATH/PYTHONHOME of the packing process may change what
    # the target's interpreter imports, and -s keeps its user site-packages out.
    env = {"PYTHONHASHSEED": "0", "PATH": os.environ.get("PATH", os.defpath)}
    try:
        proc = subprocess.run(
            [str(python), "-s", "-c", _COMPILE_DRIVER, str(tree)],
            input=b"\0".join(os.fsencode(rel) for rel in batch),
            capture_output=True,
            env=env,
            check=False,
        )
    except OSError as e:
        return -1, f"cannot run {python}: {e}"
    return proc.returncode, (proc.stdout + proc.stderr).decode("utf-8", "replace")
