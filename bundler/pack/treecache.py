"""The cache of built site-packages trees: keyed by all that decides their bytes, checked on use.

A pack builds two trees from wheels (site-packages with its prefix, and the runtime's
runtime/lib), then compiles their bytecode; that is most of a pack's time. An entry keeps one
built tree under a key made of everything that decides its bytes: the wheels' sha256 and file
names, the target, the bytecode interpreter's identity (or none), this installer's code and
the cache format. Nothing in an entry is trusted: the bundle writer hashes every file while it
compresses it anyway, and those hashes are compared with the entry's own record before the
manifest is signed; any difference (a file edited, added, removed, re-moded) rebuilds that
tree from the wheels with a warning. Layout under ``<cache dir>/trees`` (docs/project-file.md):

    <key>/record.json        what the entry holds: every file's path, size, mode, sha256
    <key>/stats.json         hits and last use (for LRU eviction and ``airgap cache info``)
    <key>/site/, <key>/prefix/   the tree itself
    locks/<key>              shared flock while a pack reads the entry; eviction needs it free
    tmp/                     stages being built (renamed into place when complete)
    .lock                    exclusive flock around lookups, inserts and eviction (brief)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final, Literal, NoReturn

from packaging.utils import parse_wheel_filename

from ..errors import (
    CachedTreeMismatch,
    IntegrityError,
    SiteTreeError,
    TreeCacheError,
    UsageError,
)
from ..formats.archive import check_frame_file, frame_plan
from ..formats.manifest import Manifest
from ..progress import Progress
from ..target import Target
from . import sitetree
from .assemble import CachedFrame, SourceFile, normal_mode
from .sitetree import Installed, build_site_tree, compile_bytecode, source_groups
from .wheels import wheel_digest

CACHE_FORMAT: Final = "airgap-tree-cache/1"
MAX_ENV: Final = "AIRGAP_TREE_CACHE_MAX"
DEFAULT_MAX: Final = 4 * 2**30  # bytes; an iris tree pair is ~200 MiB, a torch stack ~2 GiB
_TMP_MAX_AGE: Final = 24 * 3600  # seconds: a stage this old belongs to a killed pack
# The installer decides the tree's bytes, so its source is part of every key: a change to
# sitetree.py (a fix, another compile scheme) can never reuse a tree built by older code.
_INSTALLER_DIGEST: Final = hashlib.sha256(Path(sitetree.__file__).read_bytes()).hexdigest()
_KEY_RE: Final = re.compile(r"^[0-9a-f]{64}$")

CacheUse = Literal["hit", "miss", "rebuilt", "off"]


@dataclass(frozen=True)
class TreeSpec:
    """One tree a pack needs: its label, its wheels, and its roots as (entry folder, payload
    prefix) pairs, e.g. ``(("site", "site-packages"), ("prefix", "prefix"))``; a second root
    is the install prefix beside the tree."""

    label: str
    wheels: tuple[Path, ...]
    roots: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class TreeReport:
    """How one tree was obtained: ``hit`` (from the cache), ``miss`` (built and stored),
    ``rebuilt`` (a cached copy failed its check), ``off`` (no cache)."""

    label: str
    key: str
    cache: CacheUse
    reused_bytecode: int = 0  # distributions whose pycs came from another entry (a miss)
    reused_frames: int = 0  # compressed frames copied from the entry (and checked)


# ---- sizes --------------------------------------------------------------------------------

_UNITS: Final = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_SIZE_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from ``"500M"``, ``"2G"``, ``"1.5GiB"`` or a plain number (powers of 1024).

    Raises:
        UsageError: not a size.
    """
    m = _SIZE_RE.match(text)
    if m is None:
        raise UsageError(
            f"{text!r} is not a size", remedy="write e.g. 500M, 2G or a number of bytes"
        )
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def default_max_size(environ: dict[str, str] | None = None) -> int:
    """``$AIRGAP_TREE_CACHE_MAX`` when set, else 4 GiB.

    Raises:
        UsageError: the variable is not a size.
    """
    env = os.environ if environ is None else environ
    raw = env.get(MAX_ENV)
    return DEFAULT_MAX if not raw else parse_size(raw)


# ---- keys ---------------------------------------------------------------------------------

_ID_PROBE: Final = (
    "import sys, importlib.util; "
    "print(sys.implementation.cache_tag, importlib.util.MAGIC_NUMBER.hex(), sys.version)"
)
_interpreter_ids: dict[Path, str] = {}


def interpreter_id(python: Path) -> str:
    """What identifies a bytecode compiler: cache tag, magic number and full version.

    Raises:
        SiteTreeError: the interpreter does not run.
    """
    if python not in _interpreter_ids:
        if python == Path(sys.executable):
            magic = importlib.util.MAGIC_NUMBER.hex()
            found = f"{sys.implementation.cache_tag} {magic} {sys.version}"
        else:
            proc = subprocess.run(
                [str(python), "-I", "-S", "-c", _ID_PROBE],
                capture_output=True,
                text=True,
                check=False,
                timeout=60,
            )
            if proc.returncode != 0:
                raise SiteTreeError(
                    f"cannot run {python} to compile bytecode: {proc.stderr.strip()[-300:]}",
                    remedy="repair that interpreter or pass --bytecode none",
                )
            found = proc.stdout.strip()
        _interpreter_ids[python] = found
    return _interpreter_ids[python]


def tree_key(spec: TreeSpec, target: Target, python: Path | None) -> str:
    """The entry key: sha256 of the canonical JSON of every input that decides the tree."""
    doc = {
        "format": CACHE_FORMAT,
        "installer": _INSTALLER_DIGEST,
        "mtime": sitetree.ZIP_EPOCH,
        "wheels": sorted([w.name, wheel_digest(w)] for w in spec.wheels),
        "target": [target.python, target.implementation, target.abi, list(target.platforms)],
        "roots": [r for r, _ in spec.roots],
        "bytecode": None if python is None else interpreter_id(python),
    }
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest()


# ---- entries ------------------------------------------------------------------------------

RecordFiles = dict[str, tuple[int, int, str]]  # entry path -> (size, mode, sha256)


@dataclass(frozen=True)
class _Record:
    label: str
    installed: tuple[Installed, ...]
    warnings: tuple[str, ...]
    files: RecordFiles
    size: int
    groups: dict[str, tuple[str, ...]]  # bytecode group digest -> its pyc entry paths


def _parse_record(data: bytes, key: str) -> _Record | None:
    """The entry's record, or None when it is not one we wrote (then the entry is rebuilt)."""
    try:
        doc = json.loads(data)
        if doc["format"] != CACHE_FORMAT or doc["key"] != key:
            return None
        files: RecordFiles = {}
        for path, size, mode, digest in doc["files"]:
            if not (isinstance(path, str) and isinstance(size, int) and isinstance(mode, int)):
                return None
            files[path] = (size, mode, str(digest))
        installed = tuple(Installed(str(n), str(v)) for n, v in doc["installed"])
        warnings = tuple(str(w) for w in doc["warnings"])
        if any(not w.isprintable() for w in warnings):
            return None  # replayed on a terminal: never pass control characters through
        groups = {str(g): tuple(str(p) for p in pycs) for g, pycs in doc["groups"].items()}
        if any(p not in files for pycs in groups.values() for p in pycs):
            return None
        return _Record(str(doc["label"]), installed, warnings, files, int(doc["size"]), groups)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _listing(
    folder: Path, roots: Sequence[tuple[str, str]]
) -> tuple[dict[str, tuple[int, int]], dict[str, str], str | None]:
    """Every file of a tree: ``{entry path: (size, mode)}``, ``{payload path: entry path}``,
    and the first thing that cannot be part of a tree (a link, a device), or None."""
    found: dict[str, tuple[int, int]] = {}
    payload: dict[str, str] = {}
    for name, prefix in roots:
        top = folder / name
        if not top.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            base = Path(dirpath)
            rel_dir = base.relative_to(top).as_posix()
            for d in dirnames:
                if (base / d).is_symlink():
                    return found, payload, f"{name}/{rel_dir}/{d} is a symbolic link"
            for fn in filenames:
                st = (base / fn).lstat()
                rel = fn if rel_dir == "." else f"{rel_dir}/{fn}"
                if not stat.S_ISREG(st.st_mode):
                    return found, payload, f"{name}/{rel} is not a regular file"
                found[f"{name}/{rel}"] = (st.st_size, normal_mode(st.st_mode))
                payload[f"{prefix}/{rel}"] = f"{name}/{rel}"
    return found, payload, None


def _installed(wheels: Sequence[Path]) -> tuple[Installed, ...]:
    """What :func:`build_site_tree` returns for ``wheels``: names and versions, by name."""
    found = []
    for w in wheels:
        name, version, _, _ = parse_wheel_filename(w.name)
        found.append((name, w.name, Installed(name, str(version))))
    return tuple(i for _, _, i in sorted(found))


def _pyc_path(source: str, tag: str) -> str:
    """Where the interpreter with cache tag ``tag`` puts the pyc of ``source``."""
    folder, _, name = source.rpartition("/")
    pyc = f"__pycache__/{name[: -len('.py')]}.{tag}.pyc"
    return f"{folder}/{pyc}" if folder else pyc


def _differences(record: RecordFiles, listing: dict[str, tuple[int, int]]) -> str | None:
    """The first difference between an entry's record and its files, without hashing."""
    for path in sorted(record.keys() - listing.keys()):
        return f"{path} was removed"
    for path in sorted(listing.keys() - record.keys()):
        return f"{path} was added"
    for path in sorted(record):
        size, mode, _ = record[path]
        if listing[path] != (size, mode):
            return f"{path} changed size or mode"
    return None


def _write_json(path: Path, doc: object) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(doc, f, sort_keys=True, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _link_all(src: Path, dest: Path, paths: Sequence[str]) -> bool:
    """Hard-link (or copy) each entry path from ``src`` to ``dest``; all or none."""
    done: list[Path] = []
    try:
        for rel in paths:
            target = dest.joinpath(*rel.split("/"))
            target.parent.mkdir(mode=0o755, exist_ok=True)
            source = src.joinpath(*rel.split("/"))
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
            done.append(target)
    except OSError:
        for target in done:
            with contextlib.suppress(OSError):
                target.unlink()
        return False
    return True


@dataclass(frozen=True)
class EntryInfo:
    """One entry as ``airgap cache info`` shows it."""

    key: str
    label: str
    size: int
    files: int
    hits: int
    last_used: float
    packages: tuple[str, ...]


@dataclass(frozen=True)
class TreeCache:
    """The tree cache at ``root`` (``<cache dir>/trees``), bounded to ``max_size`` bytes."""

    root: Path
    max_size: int = DEFAULT_MAX

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The cache-wide lock: held only for lookups, inserts and eviction, never a build."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise TreeCacheError(
                f"cannot use the tree cache {self.root}: {e.strerror}",
                remedy="pass --cache-dir with a writable folder, or --no-tree-cache",
            ) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _entry_lock(self, key: str, flags: int) -> int | None:
        """An flock on the entry's lock file, or None when ``LOCK_NB`` and it is taken.
        Opened only under :meth:`_locked`, so removing a free lock file there is safe."""
        locks = self.root / "locks"
        locks.mkdir(exist_ok=True)
        fd = os.open(locks / key, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def acquire(self, key: str) -> tuple[_Record, int] | None:
        """The entry's record, with a shared lock (an fd) that keeps eviction away from it
        until released; None when there is no usable entry (a broken one is removed)."""
        with self._locked():
            folder = self.root / key
            try:
                data = (folder / "record.json").read_bytes()
            except OSError:
                data = None
            record = None if data is None else _parse_record(data, key)
            if record is None:
                if folder.exists():
                    self._remove(key)
                return None
            fd = self._entry_lock(key, fcntl.LOCK_SH)
            assert fd is not None  # a blocking request
            stats = self._stats(key)
            _write_json(folder / "stats.json", {"hits": stats[0] + 1, "last_used": time.time()})
            return record, fd

    def _stats(self, key: str) -> tuple[int, float]:
        try:
            doc = json.loads((self.root / key / "stats.json").read_bytes())
            return int(doc["hits"]), float(doc["last_used"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0, 0.0

    def stage(self, key: str) -> Path:
        """A fresh folder on the cache's file system for building entry ``key``."""
        tmp = self.root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        folder = tmp / f"{key[:16]}-{os.getpid()}-{secrets.token_hex(4)}"
        folder.mkdir()
        return folder

    def insert(self, key: str, stage: Path, record: dict[str, object]) -> bool:
        """Complete a stage and rename it into place; False (stage removed) when an entry
        for ``key`` is there already (a concurrent pack stored it first) or still in use."""
        _write_json(stage / "record.json", record)
        _write_json(stage / "stats.json", {"hits": 0, "last_used": time.time()})
        with self._locked():
            if (self.root / key).exists() and not self._remove(key):
                stored = False
            else:
                os.rename(stage, self.root / key)
                stored = True
        if not stored:
            shutil.rmtree(stage, ignore_errors=True)
        return stored

    def drop(self, key: str) -> None:
        """Remove an entry that failed its check, unless another pack is reading it."""
        with self._locked():
            self._remove(key)

    def _remove(self, key: str) -> bool:
        """Under the lock: move the entry out of the way and delete it; False when in use."""
        fd = self._entry_lock(key, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if fd is None:
            return False
        try:
            folder = self.root / key
            if folder.exists():
                trash = self.root / "tmp" / f"trash-{key[:16]}-{secrets.token_hex(4)}"
                trash.parent.mkdir(exist_ok=True)
                os.rename(folder, trash)
                shutil.rmtree(trash, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.unlink(self.root / "locks" / key)
        finally:
            os.close(fd)
        return True

    def borrow(
        self, wanted: dict[str, list[str]], dest: Path
    ) -> dict[str, tuple[str, dict[str, tuple[int, int, str]]]]:
        """Hard-link (else copy) into ``dest`` the pycs of each wanted bytecode group some
        entry holds (``wanted``: group digest -> its sources' entry paths).

        Returns ``group digest -> (donor key, {entry path: (size, mode, sha256)})``: what
        the linked files must hash to, as the donor's record says. Under the cache lock, so
        no donor is evicted meanwhile; a group whose files cannot be linked is skipped.
        """
        found: dict[str, tuple[str, dict[str, tuple[int, int, str]]]] = {}
        if not wanted:
            return found
        with self._locked():
            for info in reversed(self.entries()):  # most recently used first
                try:
                    data = (self.root / info.key / "record.json").read_bytes()
                except OSError:
                    continue
                record = _parse_record(data, info.key)
                if record is None:
                    continue
                for digest in wanted.keys() & record.groups.keys() - found.keys():
                    pycs = record.groups[digest]
                    if _link_all(self.root / info.key, dest, pycs):
                        found[digest] = (info.key, {p: record.files[p] for p in pycs})
        return found

    def entries(self) -> list[EntryInfo]:
        """Every complete entry, least recently used first."""
        found: list[EntryInfo] = []
        if not self.root.is_dir():
            return found
        for folder in self.root.iterdir():
            if not _KEY_RE.match(folder.name):
                continue
            try:
                record = _parse_record((folder / "record.json").read_bytes(), folder.name)
            except OSError:
                record = None
            if record is None:
                continue
            hits, last = self._stats(folder.name)
            found.append(
                EntryInfo(
                    key=folder.name,
                    label=record.label,
                    size=record.size + _frames_size(folder),
                    files=len(record.files),
                    hits=hits,
                    last_used=last,
                    packages=tuple(f"{i.name}=={i.version}" for i in record.installed),
                )
            )
        return sorted(found, key=lambda e: (e.last_used, e.key))

    def evict(self, max_size: int | None = None) -> list[EntryInfo]:
        """Remove least recently used entries until the rest fit ``max_size`` (default the
        cache's bound); entries in use by a pack are kept. Also clears stale stages and
        broken entries. Returns what was removed."""
        limit = self.max_size if max_size is None else max_size
        removed: list[EntryInfo] = []
        with self._locked():
            entries = self.entries()
            total = sum(e.size for e in entries)
            for e in entries:
                if total <= limit:
                    break
                if self._remove(e.key):
                    removed.append(e)
                    total -= e.size
            complete = {e.key for e in entries}
            for folder in self.root.iterdir():
                if _KEY_RE.match(folder.name) and folder.name not in complete:
                    self._remove(folder.name)  # no record: a torn or foreign entry
            self._clear_stale_stages()
        return removed

    def _clear_stale_stages(self) -> None:
        tmp = self.root / "tmp"
        if not tmp.is_dir():
            return
        now = time.time()
        for folder in tmp.iterdir():
            with contextlib.suppress(OSError):
                if now - folder.lstat().st_mtime > _TMP_MAX_AGE:
                    shutil.rmtree(folder, ignore_errors=True)


def cache_for(cache_dir: Path | None, max_size: int | None = None) -> TreeCache:
    """The tree cache beside the wheel cache: ``<cache dir>/trees``."""
    from .wheels import default_cache_dir

    root = (cache_dir or default_cache_dir()) / "trees"
    return TreeCache(root, default_max_size() if max_size is None else max_size)


# ---- a pack's use of the cache ------------------------------------------------------------


@dataclass
class _Tree:
    spec: TreeSpec
    key: str
    folder: Path
    cache: CacheUse
    installed: tuple[Installed, ...] = ()
    warnings: tuple[str, ...] = ()
    record: RecordFiles | None = None  # for a hit: what the entry's files must hash to
    lock_fd: int | None = None
    payload: dict[str, str] = field(default_factory=dict)  # payload path -> entry path
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    stored: bool = False  # a fresh tree now renamed into the cache
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # digest -> pyc paths
    donors: frozenset[str] = frozenset()  # entries whose pycs were linked into this tree
    reused: int = 0


_FRAMES_DIR: Final = "frames"
_FRAMES_INDEX: Final = "index.json"


class KeptFrames:
    """The compressed frames of cached trees (a :class:`FrameReuse` for write_bundle).

    An entry keeps at most one set of frames, under ``frames/<params>/`` (params: level,
    mtime, zstd version; :func:`frame_params`), stored after a pack whose ``created`` time
    is pinned (SOURCE_DATE_EPOCH): the headers carry that time, so frames written with
    another time could never be reused. Nothing in them is trusted (see FrameReuse).
    """

    def __init__(self, trees: list[_Tree], root: Path | None) -> None:
        self._trees = trees
        self._root = root
        self._indexes: dict[tuple[str, str], dict[str, str]] = {}
        self._bad: set[str] = set()
        self._checks: dict[Path, Future[tuple[str, list[str]]]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self.written_frames: list[tuple[str, str, tuple[str, ...], int, int]] = []
        self.reused: dict[str, int] = {}  # entry key -> frames offered to the writer

    def restart(self) -> None:
        """Forget what the last (abandoned) write used and wrote."""
        self.written_frames.clear()
        self.reused.clear()

    def _tree(self, group: str) -> _Tree:
        key = group.split(":", 1)[0]
        return next(t for t in self._trees if t.key == key)

    def _index(self, key: str, params: str) -> dict[str, str]:
        if (key, params) not in self._indexes:
            folder = self._root / key / _FRAMES_DIR / params if self._root else None
            found: dict[str, str] = {}
            if folder is not None:
                try:
                    doc = json.loads((folder / _FRAMES_INDEX).read_bytes())
                    found = {str(k): str(v) for k, v in doc["frames"].items()}
                except (OSError, ValueError, KeyError, TypeError, AttributeError):
                    found = {}
            self._indexes[key, params] = {
                k: v for k, v in found.items() if re.fullmatch(r"[0-9]{1,6}\.zst", v)
            }
        return self._indexes[key, params]

    def prefetch(self, t: _Tree, params: str, mtime: int) -> None:
        """Start checking every kept frame of ``t`` the writer will ask for (on worker
        threads, one per core), so the checks run while the pack does its other work."""
        if t.cache == "hit":
            for root, _ in t.spec.roots:
                group = f"{t.key}:{root}"
                names = sorted(
                    (p for p, rel in t.payload.items() if rel.split("/", 1)[0] == root),
                    key=lambda p: p.encode("utf-8"),  # the writer's order
                )
                sizes = [t.sizes[t.payload[n]][0] for n in names]
                for a, b in frame_plan(sizes, [group] * len(names)):
                    self._find(group, params, tuple(names[a:b]), mtime)

    def _find(
        self, group: str, params: str, names: tuple[str, ...], mtime: int
    ) -> CachedFrame | None:
        t = self._tree(group)
        if t.cache != "hit" or t.record is None or self._root is None or t.key in self._bad:
            return None
        file = self._index(t.key, params).get(_names_digest(names))
        if file is None:
            return None
        try:
            recorded = tuple(t.record[t.payload[n]][2] for n in names)
            want = [(n, t.sizes[t.payload[n]][0], t.sizes[t.payload[n]][1]) for n in names]
        except KeyError:
            return None
        path = self._root / t.key / _FRAMES_DIR / params / file
        if path not in self._checks:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(os.cpu_count() or 1, "frame-check")
            self._checks[path] = self._pool.submit(_check_file, path, want, mtime)
        return CachedFrame(path, recorded, self._checks[path])

    def lookup(
        self, group: str, params: str, names: tuple[str, ...], mtime: int
    ) -> CachedFrame | None:
        found = self._find(group, params, names, mtime)
        if found is not None:
            t = self._tree(group)
            self.reused[t.key] = self.reused.get(t.key, 0) + 1
        return found

    def adopt(self, early: KeptFrames) -> None:
        """Take over the checks (and threads) another instance started."""
        self._checks.update(early._checks)
        if self._pool is None:
            self._pool, early._pool = early._pool, None

    def close(self) -> None:
        """Stop the checking threads (after they finish what they started)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def rejected(self, group: str, error: IntegrityError) -> NoReturn:
        t = self._tree(group)
        self._bad.add(t.key)
        for path in [p for p in self._checks if p.parents[2].name == t.key]:
            self._checks.pop(path).cancel()  # <key>/frames/<params>/<file>
        if self._root is not None:
            shutil.rmtree(self._root / t.key / _FRAMES_DIR, ignore_errors=True)
        raise CachedTreeMismatch(
            f"tree cache: {t.spec.label} entry {t.key[:16]}: a compressed frame failed its "
            f"check ({error.message}, {error.member}); compressing it again",
            keys=frozenset(),
        )

    def written(
        self, group: str, params: str, names: tuple[str, ...], offset: int, size: int
    ) -> None:
        self.written_frames.append((group, params, names, offset, size))

    def store(self, bundle: Path) -> None:
        """Copy each tree's freshly compressed frames from ``bundle`` into its entry.

        Raises:
            OSError: the entry cannot be written (the caller warns; the bundle is fine).
        """
        if self._root is None:
            return
        by_key: dict[str, list[tuple[str, tuple[str, ...], int, int]]] = {}
        for group, params, names, offset, size in self.written_frames:
            by_key.setdefault(group.split(":", 1)[0], []).append((params, names, offset, size))
        for t in self._trees:
            frames = by_key.get(t.key)
            if not frames or not (t.cache == "hit" or t.stored):
                continue
            params = frames[0][0]
            top = self._root / t.key / _FRAMES_DIR
            if (top / params / _FRAMES_INDEX).exists():
                continue
            stage = top / f".tmp-{os.getpid()}-{secrets.token_hex(4)}"
            stage.mkdir(parents=True)
            index: dict[str, str] = {}
            try:
                with bundle.open("rb") as src:
                    for i, (_, names, offset, size) in enumerate(frames):
                        name = f"{i}.zst"
                        with (stage / name).open("wb") as dst:
                            _copy_range(src, dst, offset, size)
                        index[_names_digest(names)] = name
                (stage / _FRAMES_INDEX).write_text(json.dumps({"frames": index}, sort_keys=True))
                for old in top.iterdir():
                    if old != stage:
                        shutil.rmtree(old, ignore_errors=True)
                os.rename(stage, top / params)
            finally:
                shutil.rmtree(stage, ignore_errors=True)


def _frames_size(entry: Path) -> int:
    """Bytes of an entry's kept frames (they count toward the cache's bound)."""
    total = 0
    with contextlib.suppress(OSError):
        for folder in (entry / _FRAMES_DIR).iterdir():
            for f in folder.iterdir():
                total += f.lstat().st_size
    return total


def _check_file(
    path: Path, members: Sequence[tuple[str, int, int]], mtime: int
) -> tuple[str, list[str]]:
    """A kept frame file's check (see CachedFrame); an unreadable file fails it."""
    try:
        with path.open("rb") as f:
            return check_frame_file(f, members, mtime)
    except OSError as e:
        raise IntegrityError(f"cannot read it: {e.strerror}", member=members[0][0]) from e


def _names_digest(names: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def _copy_range(src: BinaryIO, dst: BinaryIO, offset: int, size: int) -> None:
    done = 0
    while done < size:
        try:
            n = os.copy_file_range(src.fileno(), dst.fileno(), size - done, offset + done)
        except OSError:
            n = 0
        if n == 0:  # no copy_file_range here (or a short one): plain reads
            src.seek(offset + done)
            while done < size:
                chunk = src.read(min(1 << 20, size - done))
                if not chunk:
                    raise OSError(f"{src.name} ended before its frames")
                dst.write(chunk)
                done += len(chunk)
            return
        done += n


@dataclass
class BuiltTrees:
    """The trees of one pack, as payload files; ``check`` is write_bundle's last step."""

    trees: list[_Tree]
    frames: KeptFrames

    @property
    def files(self) -> list[SourceFile]:
        out: list[SourceFile] = []
        for t in self.trees:
            for payload_path, rel in t.payload.items():
                size, mode = t.sizes[rel]
                group = f"{t.key}:{rel.split('/', 1)[0]}"
                out.append(SourceFile(payload_path, t.folder / rel, mode, group, size))
        return out

    def folder(self, label: str, sub: str) -> Path:
        """Where the built tree ``label``'s ``sub`` folder is (e.g. its site-packages)."""
        return next(t.folder / sub for t in self.trees if t.spec.label == label)

    def installed(self, label: str) -> list[Installed]:
        return next(list(t.installed) for t in self.trees if t.spec.label == label)

    def check(self, manifest: Manifest) -> None:
        """Compare the writer's hashes of cached files with the entries' records.

        Raises:
            CachedTreeMismatch: a file's bytes differ (nothing has been signed yet).
        """
        digests = {f.path: f.sha256 for f in manifest.files}
        bad: dict[str, str] = {}
        keys: set[str] = set()
        for t in self.trees:
            if t.record is None:
                continue
            for payload_path, rel in sorted(t.payload.items()):
                want = t.record.get(rel)
                if want is not None and digests.get(payload_path) != want[2]:
                    if t.cache == "hit":
                        bad[t.key] = f"{t.spec.label} entry {t.key[:16]}: {rel} was edited"
                    else:
                        donors = ", ".join(sorted(d[:16] for d in t.donors))
                        bad[t.key] = (
                            f"{t.spec.label}: {rel}, reused from entry {donors}, was edited"
                        )
                    keys.update({t.key, *t.donors})
                    break
        if bad:
            raise CachedTreeMismatch(
                "tree cache: " + "; ".join(bad.values()) + "; rebuilding it from the wheels",
                keys=frozenset(keys),
            )


class _Session:
    """Builds or borrows each tree, stores fresh ones after the bundle is written."""

    def __init__(
        self,
        cache: TreeCache | None,
        target: Target,
        python: Path | None,
        work: Path,
        progress: Progress,
        warn: Callable[[str], None],
    ) -> None:
        self.cache, self.target, self.python = cache, target, python
        self.work, self.progress, self.warn = work, progress, warn
        self.trees: list[_Tree] = []
        self._warned: set[str] = set()

    def close(self) -> None:
        for t in self.trees:
            self._release(t)
            if t.cache != "hit" and not t.stored and self.cache is not None:
                shutil.rmtree(t.folder, ignore_errors=True)  # a stage never stored

    def _release(self, t: _Tree) -> None:
        if t.lock_fd is not None:
            os.close(t.lock_fd)
            t.lock_fd = None

    def obtain(self, spec: TreeSpec) -> _Tree:
        key = tree_key(spec, self.target, self.python)
        got = self.cache.acquire(key) if self.cache is not None else None
        if got is not None and self.cache is not None:
            record, fd = got
            # The signed package list comes from the wheels (their names and versions are
            # part of the key), not from the record.
            installed = _installed(spec.wheels)
            t = _Tree(spec, key, self.cache.root / key, "hit", installed, record.warnings)
            t.record, t.lock_fd = record.files, fd
            self.progress.start(f"{spec.label}: from the tree cache")
            t.sizes, t.payload, problem = _listing(t.folder, spec.roots)
            problem = problem or _differences(record.files, t.sizes)
            if problem is None and record.installed != installed:
                problem = "its record lists other distributions than the wheels"
            self.progress.finish()
            if problem is None:
                return self._emit(t)
            self.warn(f"tree cache: {spec.label} entry {key[:16]}: {problem}; rebuilding it")
            self._release(t)
            self.cache.drop(key)
            return self._build(spec, key, "rebuilt")
        return self._build(spec, key, "off" if self.cache is None else "miss")

    def rebuild(self, keys: frozenset[str]) -> None:
        """Drop entries ``keys`` (trees and bytecode donors) and rebuild the trees that
        used them, this time compiling everything."""
        for t in self.trees:
            if t.key in keys or t.donors & keys:
                self._release(t)
                if t.cache != "hit" and self.cache is not None:
                    shutil.rmtree(t.folder, ignore_errors=True)
        if self.cache is not None:
            for key in sorted(keys):
                self.cache.drop(key)
        for i, t in enumerate(self.trees):
            if t.key in keys or t.donors & keys:
                self.trees[i] = self._build(t.spec, t.key, "rebuilt", reuse=False)

    def _build(self, spec: TreeSpec, key: str, use: CacheUse, *, reuse: bool = True) -> _Tree:
        if self.cache is None:
            folder = self.work / f"tree-{len(self.trees)}-{key[:16]}"
            folder.mkdir()
        else:
            folder = self.cache.stage(key)
        site = folder / spec.roots[0][0]
        prefix = folder / spec.roots[1][0] if len(spec.roots) > 1 else None
        warnings: list[str] = []
        owners: dict[str, tuple[str, str]] = {}
        self.progress.start(f"building {spec.label}", len(spec.wheels), unit="wheels")
        installed = build_site_tree(
            spec.wheels, self.target, site, prefix=prefix, warn=warnings.append, owners=owners
        )
        self.progress.advance(len(spec.wheels))
        self.progress.finish()
        t = _Tree(spec, key, folder, use, tuple(installed), tuple(warnings))
        if self.python is not None:
            self._bytecode(t, owners, reuse=reuse)
        t.sizes, t.payload, problem = _listing(folder, spec.roots)
        if problem is not None:  # our own installer never makes one
            raise SiteTreeError(f"built tree {spec.label}: {problem}")
        return self._emit(t)

    def _bytecode(self, t: _Tree, owners: dict[str, tuple[str, str]], *, reuse: bool) -> None:
        """Compile the tree's sources one group (distribution) at a time, taking the pycs
        of a group another entry compiled from the very same files (same interpreter)."""
        assert self.python is not None
        root = t.spec.roots[0][0]
        ident = interpreter_id(self.python)
        tag = ident.split(" ", 1)[0]  # sys.implementation.cache_tag, e.g. cpython-311
        groups: dict[str, list[str]] = {}  # digest -> sources (tree-relative)
        for files in source_groups(owners).values():
            doc = [CACHE_FORMAT, _INSTALLER_DIGEST, ident, files]
            digest = hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode()).hexdigest()
            groups[digest] = [rel for rel, _ in files]
        borrowed = {}
        if reuse and self.cache is not None:
            borrowed = self.cache.borrow(
                {d: [f"{root}/{p}" for p in srcs] for d, srcs in groups.items()}, t.folder
            )
        t.record = {p: want for _, files in borrowed.values() for p, want in files.items()}
        t.donors = frozenset(donor for donor, _ in borrowed.values())
        t.reused = len(borrowed)
        todo = [srcs for d, srcs in groups.items() if d not in borrowed]
        self.progress.start(f"compiling bytecode ({t.spec.label})")
        site = t.folder / root
        compile_bytecode(site, self.target, self.python, groups=todo)
        self.progress.finish()
        for digest, srcs in groups.items():
            pycs = [f"{root}/{_pyc_path(src, tag)}" for src in srcs]
            t.groups[digest] = tuple(p for p in pycs if (t.folder / p).is_file())

    def _emit(self, t: _Tree) -> _Tree:
        for line in t.warnings:
            if line not in self._warned:
                self._warned.add(line)
                self.warn(line)
        return t

    def store(self, manifest: Manifest) -> None:
        """Record each freshly built tree with the writer's own hashes, and insert it."""
        if self.cache is None:
            return
        digests = {f.path: f.sha256 for f in manifest.files}
        for t in self.trees:
            if t.cache == "hit":
                continue
            files = sorted(
                [rel, *t.sizes[rel], digests[payload_path]]
                for payload_path, rel in t.payload.items()
            )
            record = {
                "format": CACHE_FORMAT,
                "key": t.key,
                "label": t.spec.label,
                "installed": [list(i) for i in t.installed],
                "warnings": list(t.warnings),
                "files": files,
                "size": sum(size for size, _ in t.sizes.values()),
                "groups": {d: list(p) for d, p in sorted(t.groups.items())},
            }
            try:
                t.stored = self.cache.insert(t.key, t.folder, record)
            except (OSError, TreeCacheError) as e:
                # The bundle is written; a cache that cannot take the tree only costs time.
                self.warn(f"tree cache: {t.spec.label} was not stored in {self.cache.root}: {e}")


def early_frame_checks(
    cache: TreeCache,
    specs: Sequence[TreeSpec],
    target: Target,
    python: Path | None,
    frames_for: tuple[str, int],
) -> KeptFrames:
    """Start checking the kept frames of the entries ``specs`` would hit, from their records
    alone (no lock, no listing, no hit counted), before the pack has checked its wheels and
    listed the trees; hand the result to :func:`build_and_write` (``early``).

    Only work is started early: build_and_write still finds each tree, lists and compares
    it, and uses a check only for a frame it asks for itself (the same file and members);
    specs made from unchecked wheel picks merely start checks nobody asks for.
    """
    frames = KeptFrames([], cache.root)
    for spec in specs:
        key = tree_key(spec, target, python)
        try:
            record = _parse_record((cache.root / key / "record.json").read_bytes(), key)
        except OSError:
            record = None
        if record is None:
            continue
        t = _Tree(spec, key, cache.root / key, "hit")
        t.record = record.files
        t.sizes = {rel: (size, mode) for rel, (size, mode, _) in record.files.items()}
        for rel in record.files:
            root, _, tail = rel.partition("/")
            for name, prefix in spec.roots:
                if name == root:
                    t.payload[f"{prefix}/{tail}"] = rel
        frames._trees.append(t)
        frames.prefetch(t, *frames_for)
    return frames


def build_and_write(
    specs: Sequence[TreeSpec],
    write: Callable[[BuiltTrees], Manifest],
    *,
    cache: TreeCache | None,
    target: Target,
    python: Path | None,
    work: Path,
    progress: Progress,
    warn: Callable[[str], None],
    on_tree: Callable[[TreeReport], None] | None = None,
    keep_frames_of: Path | None = None,
    frames_for: tuple[str, int] | None = None,
    early: KeptFrames | None = None,
) -> Manifest:
    """Obtain each tree in ``specs`` (from ``cache`` when it holds a matching entry, else
    built from its wheels and compiled by ``python`` if given), then call ``write`` with them.

    ``write`` must pass :meth:`BuiltTrees.check` to write_bundle, so a cached file whose bytes
    differ from the entry's record stops the write before anything is signed; that tree is
    then rebuilt (with a ``warning:`` line through ``warn``) and ``write`` called again. Fresh
    trees are stored once the bundle is written, recorded with the writer's own hashes;
    then the cache is trimmed to its bound (LRU). ``keep_frames_of``: the bundle ``write``
    writes, when its compressed frames are worth keeping for the next pack (its ``created``
    is pinned); a cached tree's frames are offered to write_bundle through
    ``BuiltTrees.frames`` either way. ``frames_for``: the frame params and mtime ``write``
    will use (:func:`frame_params`), to start checking kept frames as soon as each tree is
    found in the cache. ``early``: checks :func:`early_frame_checks` started (this call
    takes them over, and stops their threads at the end).

    Raises:
        SiteTreeError, TreeCacheError, and whatever ``write`` raises.
    """
    session = _Session(cache, target, python, work, progress, warn)
    frames = KeptFrames(session.trees, cache.root if cache is not None else None)
    if early is not None:
        frames.adopt(early)
    try:
        for spec in specs:
            session.trees.append(session.obtain(spec))
            if frames_for is not None:
                frames.prefetch(session.trees[-1], *frames_for)
        while True:
            frames.restart()
            try:
                manifest = write(BuiltTrees(session.trees, frames))
            except CachedTreeMismatch as e:
                warn(e.message)
                session.rebuild(e.keys)
                continue
            break
        session.store(manifest)
        if keep_frames_of is not None:
            try:
                frames.store(keep_frames_of)
            except OSError as e:
                warn(f"tree cache: the compressed frames were not kept: {e}")
        if on_tree is not None:
            for t in session.trees:
                on_tree(
                    TreeReport(t.spec.label, t.key, t.cache, t.reused, frames.reused.get(t.key, 0))
                )
    finally:
        frames.close()
        session.close()
    if cache is not None:
        try:
            cache.evict()
        except (OSError, TreeCacheError) as e:
            warn(f"tree cache: could not trim {cache.root} to its bound: {e}")
    return manifest
