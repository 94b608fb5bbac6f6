"""Split bundles (docs/format.md section 12): the signed part index `airgap-parts/1`, judging
one part against it, and a read-only, seekable file over the parts that hashes every part
against the index before any of its bytes is handed out."""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import os
import re
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, BinaryIO, Final, Protocol

from ..errors import BundleError, PartError, PartsIndexError, UsageError
from . import strictjson
from .signing import TrustedKey, verify_signature

FORMAT: Final = "airgap-parts/1"
# Smaller parts would only multiply files and index lines; no medium is that small.
MIN_PART_SIZE: Final = 10**6
MAX_PARTS: Final = 100_000
MAX_INDEX_BYTES: Final = 32 << 20  # 100,000 parts of ~300 bytes each, with room
# The largest file FAT32 can hold (4 GiB - 1 byte): parts above it get a warning.
FAT32_MAX_FILE: Final = (1 << 32) - 1
# The head and tail probes: sha256 of a part's first and last 64 KiB, only to tell a damaged
# part (probes match) from a foreign one (nothing matches); never used to accept a part.
PROBE: Final = 64 << 10
CHUNK: Final = 1 << 20
INDEX_SUFFIX: Final = ".split.json"
SIGNATURE_SUFFIX: Final = ".sig"
SUMS_SUFFIX: Final = ".sha256"
STATE_SUFFIX: Final = ".split-state"
_SHA256_RE: Final = re.compile(r"[0-9a-f]{64}")
_UNSAFE_NAME_RE: Final = re.compile(r"[\x00-\x1f\x7f/\\]")

_UNITS: Final = {
    "": 1,
    "K": 10**3,
    "KB": 10**3,
    "M": 10**6,
    "MB": 10**6,
    "G": 10**9,
    "GB": 10**9,
    "T": 10**12,
    "TB": 10**12,
    "KIB": 1 << 10,
    "MIB": 1 << 20,
    "GIB": 1 << 30,
    "TIB": 1 << 40,
}
_SIZE_RE: Final = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")


def parse_size(text: str) -> int:
    """A part size: ``4000000000``, ``4G``/``4GB`` (powers of 1000, as media are labelled:
    a 4.7 GB DVD), ``4GiB`` (powers of 1024), decimals allowed (``4.7G``); whole bytes.

    Raises:
        UsageError: not a size, or below the 1M (10^6 bytes) minimum.
    """
    match = _SIZE_RE.fullmatch(text)
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _UNITS:
        raise UsageError(
            f"--size {text!r} is not a size",
            remedy="give bytes or a unit: 4000000000, 4G (10^9), 700M, 4GiB (2^30), 4.7G",
        )
    try:
        size = int(Decimal(match.group(1)) * _UNITS[unit])
    except InvalidOperation as e:  # pragma: no cover - the pattern admits only numbers
        raise UsageError(f"--size {text!r} is not a size") from e
    if size < MIN_PART_SIZE:
        raise UsageError(
            f"--size {text!r} is {size} bytes, below the minimum part size of "
            f"{MIN_PART_SIZE} bytes (1M)",
            remedy="choose a larger size, e.g. 700M (a CD), 4G (FAT32), 4.7G (a DVD)",
        )
    return size


# ---- names --------------------------------------------------------------------------------


def part_name(bundle_file: str, index: int, count: int) -> str:
    """``model.airgap.part001``: numbered from 1, at least three digits, equal width."""
    return f"{bundle_file}.part{index:0{max(3, len(str(count)))}d}"


def index_name(bundle_file: str) -> str:
    return bundle_file + INDEX_SUFFIX


def signature_path(index_path: Path) -> Path:
    return index_path.with_name(index_path.name + SIGNATURE_SUFFIX)


def part_pattern(bundle_file: str) -> re.Pattern[str]:
    """Any file named like a part of this bundle (to find extra or stale ones)."""
    return re.compile(re.escape(bundle_file) + r"\.part[0-9]+")


def _check_plain_name(name: str, what: str) -> None:
    if (
        not name
        or name in (".", "..")
        or _UNSAFE_NAME_RE.search(name)
        or len(name.encode("utf-8")) > 255
    ):
        raise _invalid(f"{what} {name[:100]!r} is not a plain file name")


# ---- the index ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PartEntry:
    """One part: its 1-based number, file name, place in the bundle, size and digests."""

    index: int
    file: str
    offset: int
    size: int
    sha256: str
    head_sha256: str
    tail_sha256: str


@dataclass(frozen=True)
class BundleIdentity:
    """The bundle the parts join into: its file name, name, version and digests."""

    file: str
    name: str
    version: str
    manifest_sha256: str
    sha256: str
    size: int


@dataclass(frozen=True)
class PartsIndex:
    """The signed list of parts (``<bundle>.split.json``; its signature beside it)."""

    bundle: BundleIdentity
    signer: str
    part_size: int
    parts: tuple[PartEntry, ...]

    def to_json_dict(self) -> dict[str, Any]:
        b = self.bundle
        return {
            "format": FORMAT,
            "bundle": {
                "file": b.file,
                "name": b.name,
                "version": b.version,
                "manifest_sha256": b.manifest_sha256,
                "sha256": b.sha256,
                "size": b.size,
            },
            "signer": self.signer,
            "part_size": self.part_size,
            "parts": [
                {
                    "index": p.index,
                    "file": p.file,
                    "offset": p.offset,
                    "size": p.size,
                    "sha256": p.sha256,
                    "head_sha256": p.head_sha256,
                    "tail_sha256": p.tail_sha256,
                }
                for p in self.parts
            ],
        }

    def to_bytes(self) -> bytes:
        """Canonical JSON, as the manifest: sorted keys, no spaces, one trailing newline."""
        text = json.dumps(
            self.to_json_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return (text + "\n").encode("utf-8")

    def sha256sums(self) -> bytes:
        """The parts as `sha256sum -c` reads them: ``<hex>  <file>`` lines."""
        return "".join(f"{p.sha256}  {p.file}\n" for p in self.parts).encode("utf-8")


class _Malformed(Exception):  # private: parse_index turns it into PartsIndexError
    """A rule of the index is broken; carries the text without the member."""


def _invalid(message: str) -> _Malformed:
    return _Malformed(message)


def _strict_object(data: bytes) -> dict[str, Any]:
    try:
        obj = strictjson.loads(data)
    except strictjson.StrictJSONError as e:
        raise _invalid(str(e)) from e
    if not isinstance(obj, dict):
        raise _invalid("the index must be a JSON object")
    return obj


def _field(obj: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = obj.get(key)
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok or (isinstance(value, int) and value < 0) or (kind is str and not value):
        name = "a non-negative integer" if kind is int else f"a non-empty {kind.__name__}"
        raise _invalid(f"field {where}{key!r} must be {name}")
    if key.endswith("sha256") and not _SHA256_RE.fullmatch(str(value)):
        raise _invalid(f"field {where}{key!r} must be 64 lowercase hex digits")
    return value


def parse_index(data: bytes, member: str = "split.json") -> PartsIndex:
    """Parse and check an index (after its signature verified); every rule of section 12.
    ``member`` names the index file in errors.

    Raises:
        PartsIndexError: not strict JSON, another format, a missing or mistyped field, or
        parts that do not tile the bundle exactly.
    """
    try:
        return _parse_index(data)
    except _Malformed as e:
        raise PartsIndexError(str(e), member=member) from None


def _parse_index(data: bytes) -> PartsIndex:
    obj = _strict_object(data)
    fmt = obj.get("format")
    if fmt != FORMAT:
        raise _invalid(f"format {str(fmt)[:40]!r} is not {FORMAT!r} (a newer airgap may read it)")
    b = obj.get("bundle")
    if not isinstance(b, dict):
        raise _invalid("field 'bundle' must be an object")
    bundle = BundleIdentity(
        file=_field(b, "file", str, "bundle."),
        name=_field(b, "name", str, "bundle."),
        version=_field(b, "version", str, "bundle."),
        manifest_sha256=_field(b, "manifest_sha256", str, "bundle."),
        sha256=_field(b, "sha256", str, "bundle."),
        size=_field(b, "size", int, "bundle."),
    )
    _check_plain_name(bundle.file, "bundle.file")
    signer = _field(obj, "signer", str, "")
    if not _SHA256_RE.fullmatch(signer):
        raise _invalid("field 'signer' must be 64 lowercase hex digits (a key id)")
    part_size = _field(obj, "part_size", int, "")
    raw_parts = obj.get("parts")
    if not isinstance(raw_parts, list) or not raw_parts:
        raise _invalid("field 'parts' must be a non-empty list")
    if len(raw_parts) > MAX_PARTS:
        raise _invalid(f"{len(raw_parts)} parts, over the limit of {MAX_PARTS}")
    parts: list[PartEntry] = []
    offset = 0
    count = len(raw_parts)
    for n, raw in enumerate(raw_parts, start=1):
        if not isinstance(raw, dict):
            raise _invalid(f"parts[{n - 1}] must be an object")
        where = f"parts[{n - 1}]."
        entry = PartEntry(
            index=_field(raw, "index", int, where),
            file=_field(raw, "file", str, where),
            offset=_field(raw, "offset", int, where),
            size=_field(raw, "size", int, where),
            sha256=_field(raw, "sha256", str, where),
            head_sha256=_field(raw, "head_sha256", str, where),
            tail_sha256=_field(raw, "tail_sha256", str, where),
        )
        # The parts tile the bundle in order, each named as the splitter names it: a reader
        # never has to trust a name or an offset beyond what this arithmetic allows.
        if entry.index != n:
            raise _invalid(f"{where}index is {entry.index}, expected {n}")
        if entry.file != part_name(bundle.file, n, count):
            raise _invalid(f"{where}file {entry.file[:100]!r} is not the name of part {n}")
        if entry.offset != offset:
            raise _invalid(f"{where}offset is {entry.offset}, expected {offset}")
        last = n == count
        if entry.size == 0 or entry.size > part_size or (not last and entry.size != part_size):
            raise _invalid(f"{where}size {entry.size} does not fit part_size {part_size}")
        parts.append(entry)
        offset += entry.size
    if offset != bundle.size:
        raise _invalid(f"the parts add up to {offset} bytes, the bundle is {bundle.size}")
    return PartsIndex(bundle=bundle, signer=signer, part_size=part_size, parts=tuple(parts))


def peek_index_signer(data: bytes) -> str | None:
    """The key id an untrusted index claims, for an error message only."""
    try:
        signer = _strict_object(data).get("signer")
    except _Malformed:
        return None
    return signer if isinstance(signer, str) and _SHA256_RE.fullmatch(signer) else None


def verify_index(
    data: bytes, signature: bytes, keys: Iterable[TrustedKey], index_member: str
) -> tuple[PartsIndex, TrustedKey]:
    """The signature over the exact index bytes with a trusted key, then the index rules.
    ``index_member`` is the index's file name (its signature is that plus ``.sig``).

    Raises:
        SignatureError: no trusted key verifies it; PartsIndexError: malformed, or its
        ``signer`` is not the key that verified it.
    """
    key = verify_signature(
        data,
        signature,
        keys,
        claimed_signer=lambda: peek_index_signer(data),
        member=index_member + SIGNATURE_SUFFIX,
    )
    index = parse_index(data, index_member)
    if index.signer != key.key_id:
        raise PartsIndexError(
            f"the index names signer {index.signer[:16]}... but was signed by {key.key_id[:16]}...",
            member=index_member,
        )
    return index, key


# ---- judging one part -------------------------------------------------------------------


@dataclass(frozen=True)
class Observed:
    """What was read from one part file: its size and digests (probes only when wanted)."""

    size: int
    sha256: str
    head_sha256: str | None = None
    tail_sha256: str | None = None


def _probes(size: int) -> tuple[int, int]:
    """(offset, length) of the tail probe; the head probe is the first min(size, PROBE)."""
    n = min(size, PROBE)
    return size - n, n


def digest_fd(fd: int, limit: int) -> Observed:
    """The size of an open file and the sha256 of its bytes, read only when it has at most
    ``limit`` bytes (no part is larger: a huge or sparse file planted as a part costs
    nothing)."""
    size = os.fstat(fd).st_size
    if size > limit:
        return Observed(size=size, sha256="")
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(CHUNK))
    done = 0
    while done < size:
        n = os.preadv(fd, [buffer[: min(CHUNK, size - done)]], done)
        if not n:
            break
        digest.update(buffer[:n])
        done += n
    return Observed(size=done, sha256=digest.hexdigest())


def with_probes(fd: int, seen: Observed) -> Observed:
    """``seen`` plus the sha256 of the file's first and last min(size, 64 KiB) bytes."""
    offset, n = _probes(seen.size)
    head = hashlib.sha256(os.pread(fd, min(seen.size, PROBE), 0)).hexdigest()
    tail = hashlib.sha256(os.pread(fd, n, offset)).hexdigest()
    return Observed(size=seen.size, sha256=seen.sha256, head_sha256=head, tail_sha256=tail)


def judge(index: PartsIndex, entry: PartEntry, seen: Observed) -> tuple[str, str] | None:
    """None when ``seen`` is exactly ``entry``; else (status, detail). Pure.

    status is one of: truncated, too long, reordered (the bytes of another part), foreign
    (nothing of it matches: another bundle's part, or another split), damaged.
    """
    if seen.size == entry.size and seen.sha256 == entry.sha256:
        return None
    for other in index.parts:
        if other.index != entry.index and (seen.size, seen.sha256) == (other.size, other.sha256):
            return (
                "reordered",
                f"holds the bytes of part {other.index} ({other.file}): parts swapped, "
                "renamed or copied twice",
            )
    head_ok = seen.head_sha256 == entry.head_sha256
    if seen.size < entry.size:
        # Shorter than a probe, a prefix cannot be told from a stranger: call it truncated.
        if head_ok or seen.size < min(entry.size, PROBE):
            return "truncated", f"{seen.size} of {entry.size} bytes (copy it again)"
        return "foreign", f"{seen.size} bytes, not {entry.size}, and its start differs: " + (
            "not a part of this bundle (another bundle's, or another split's)"
        )
    if seen.size > entry.size:
        kind = "too long" if head_ok else "foreign"
        return kind, f"{seen.size} bytes, the index says {entry.size}"
    if head_ok or seen.tail_sha256 == entry.tail_sha256:
        return "damaged", "sha256 differs from the signed index (bytes changed in transfer)"
    return (
        "foreign",
        "its bytes differ throughout: not a part of this bundle (another bundle's, or another "
        "split's)",
    )


# ---- reading the parts as one file --------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """A part file as the kernel sees it; a part that changes after its check differs here."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Identity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def open_part(index: PartsIndex, folder: Path, entry: PartEntry) -> int:
    """An O_RDONLY descriptor of a part, which must be a regular file.

    Raises:
        PartError: missing, unreadable or not a regular file.
    """
    try:
        # O_NONBLOCK: a FIFO planted as a part must not hang the reader at open().
        fd = os.open(folder / entry.file, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise PartError(
            "missing",
            f"part {entry.index} of {len(index.parts)}, {entry.size} bytes",
            member=entry.file,
            remedy=REMEDIES["missing"],
        ) from None
    except OSError as e:
        raise PartError("unreadable", str(e.strerror), member=entry.file) from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PartError("unreadable", "not a regular file", member=entry.file)
    return fd


def check_part_fd(index: PartsIndex, entry: PartEntry, fd: int) -> Identity:
    """Hash an open part against the index; its identity when it matches.

    Raises:
        PartError: naming what is wrong with it (see ``judge``), or that it changed while read.
    """
    before = Identity.of(os.fstat(fd))
    seen = digest_fd(fd, index.part_size)
    verdict = judge(index, entry, seen)
    if verdict is not None:
        # Only now the probes, to name the failure; a good part costs one hash pass.
        verdict = judge(index, entry, with_probes(fd, seen)) or verdict
        status, detail = verdict
        raise PartError(status, detail, member=entry.file, remedy=REMEDIES[status])
    if Identity.of(os.fstat(fd)) != before:
        raise PartError("unreadable", "changed while it was being checked", member=entry.file)
    return before


# What to do about each kind of bad part (the statuses of `judge`, and the arrival check's).
REMEDIES: Final = {
    "missing": "copy it from its medium into the folder of the index (or pass --wait SECONDS)",
    "unreadable": "copy it again from its medium",
    "truncated": "copy it again from its medium",
    "too long": "copy it again from its medium",
    "damaged": "copy it again from its medium, or split the bundle again",
    "foreign": "put this bundle's part there (check the bundle's name and version)",
    "reordered": "give each part its own name again (see the index)",
    "duplicate": "remove the copy and put the right part there",
    "extra": "remove it: the signed index lists no such part",
}


class PartsFile(io.RawIOBase):
    """The parts of a split bundle as one read-only, seekable file, never joined on disk.

    A part is hashed against the signed index the first time any byte of it is wanted (or
    is taken as checked from ``checked``: identities this process itself just hashed, never
    a state file); afterwards each read re-checks that the file is the same inode, size,
    mtime and ctime, so a part swapped or rewritten after its check is refused.
    """

    def __init__(
        self, index: PartsIndex, folder: Path, checked: Mapping[int, Identity] | None = None
    ) -> None:
        super().__init__()
        self.index = index
        self._folder = folder
        self._starts = [p.offset for p in index.parts]
        self._size = index.bundle.size
        self._pos = 0
        self._checked: dict[int, Identity] = dict(checked or {})
        self._fd: int | None = None
        self._fd_part = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def _part_fd(self, entry: PartEntry) -> int:
        if self._fd is not None and self._fd_part == entry.index:
            if Identity.of(os.fstat(self._fd)) != self._checked[entry.index]:
                raise PartError("unreadable", "changed after it was checked", member=entry.file)
            return self._fd
        self._close_fd()
        fd = open_part(self.index, self._folder, entry)
        try:
            known = self._checked.get(entry.index)
            if known is None:
                self._checked[entry.index] = check_part_fd(self.index, entry, fd)
            elif Identity.of(os.fstat(fd)) != known:
                raise PartError(
                    "unreadable",
                    "changed after it was checked (another file, or rewritten)",
                    member=entry.file,
                    remedy="leave the parts alone while airgap reads them",
                )
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._fd_part = fd, entry.index
        return fd

    def read(self, size: int | None = -1, /) -> bytes:
        """Up to ``size`` bytes (all that is left when negative); short only at the end."""
        left = max(0, self._size - self._pos)
        size = left if size is None or size < 0 else min(size, left)
        if size == 0:
            return b""
        entry = self.index.parts[bisect.bisect_right(self._starts, self._pos) - 1]
        if self._pos + size > entry.offset + entry.size:
            buffer = bytearray(size)  # across a part boundary
            return bytes(buffer[: self.readinto(buffer)])
        # Within one part (nearly every read): one pread, no copy.
        data = os.pread(self._part_fd(entry), size, self._pos - entry.offset)
        if len(data) != size:
            raise PartError("truncated", "ended early, after its check", member=entry.file)
        self._pos += size
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        want = min(len(view), max(0, self._size - self._pos))
        done = 0
        while done < want:
            i = bisect.bisect_right(self._starts, self._pos) - 1
            entry = self.index.parts[i]
            fd = self._part_fd(entry)
            n = min(want - done, entry.offset + entry.size - self._pos)
            got = os.preadv(fd, [view[done : done + n]], self._pos - entry.offset)
            if got != n:
                raise PartError("truncated", "ended early, after its check", member=entry.file)
            done += n
            self._pos += n
        return done

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        self._close_fd()
        super().close()


# ---- writing parts ------------------------------------------------------------------------


@dataclass(frozen=True)
class WrittenPart:
    size: int
    sha256: str
    head_sha256: str
    tail_sha256: str


class Readable(Protocol):
    """What `split_stream` reads from: a binary file that fills a buffer."""

    def readinto(self, buffer: memoryview, /) -> int | None: ...


def split_stream(
    src: Readable,
    size: int,
    part_size: int,
    sinks: Iterator[BinaryIO],
    advance: Callable[[int], None] | None = None,
) -> list[WrittenPart]:
    """Copy ``size`` bytes of ``src`` into consecutive sinks of ``part_size`` bytes (the last
    shorter); return each part's size and digests. One reused buffer: no copy per chunk.

    Raises:
        BundleError: ``src`` ended early (the bundle changed while it was split).
    """
    buffer = memoryview(bytearray(CHUNK))
    written: list[WrittenPart] = []
    remaining = size
    while remaining:
        sink = next(sinks)
        this = min(part_size, remaining)
        tail_start = this - min(this, PROBE)
        digest, head = hashlib.sha256(), hashlib.sha256()
        tail = bytearray()
        done = 0
        while done < this:
            n = src.readinto(buffer[: min(CHUNK, this - done)])
            if not n:
                raise BundleError("the bundle ended early while it was split")
            chunk = buffer[:n]
            sink.write(chunk)
            digest.update(chunk)
            if done < PROBE:
                head.update(chunk[: PROBE - done])
            if done + n > tail_start:
                tail += chunk[max(0, tail_start - done) :]
            done += n
            if advance is not None:
                advance(n)
        written.append(
            WrittenPart(
                size=this,
                sha256=digest.hexdigest(),
                head_sha256=head.hexdigest(),
                tail_sha256=hashlib.sha256(tail).hexdigest(),
            )
        )
        remaining -= this
    return written


class BackgroundDigest:
    """The sha256 of ``size`` bytes of an open file, read with pread (the file offset is
    untouched) and hashed in a thread, while the caller reads the same file to split it:
    hashlib and pread release the GIL, so on a free core the whole-bundle digest costs no
    extra wall time, and nothing passes between the threads but the result."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd, self._size = fd, size
        self._digest = hashlib.sha256()
        self._error: OSError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="airgap-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buffer = memoryview(bytearray(CHUNK))
        offset = 0
        try:
            while offset < self._size and not self._stop.is_set():
                n = os.preadv(self._fd, [buffer[: min(CHUNK, self._size - offset)]], offset)
                if not n:
                    break
                self._digest.update(buffer[:n])
                offset += n
        except OSError as e:
            self._error = e
        self._done = offset

    def result(self) -> str:
        """The hex digest, once the thread is done.

        Raises:
            BundleError: the file could not be read to its end.
        """
        self._thread.join()
        if self._error is not None or self._done != self._size:
            raise BundleError("the bundle ended early or became unreadable while it was split")
        return self._digest.hexdigest()

    def cancel(self) -> None:
        self._stop.set()
        self._thread.join()


def build_index(
    bundle: BundleIdentity, signer: str, part_size: int, written: Sequence[WrittenPart]
) -> PartsIndex:
    """The index of parts written by ``split_stream``."""
    parts = []
    offset = 0
    for n, w in enumerate(written, start=1):
        parts.append(
            PartEntry(
                index=n,
                file=part_name(bundle.file, n, len(written)),
                offset=offset,
                size=w.size,
                sha256=w.sha256,
                head_sha256=w.head_sha256,
                tail_sha256=w.tail_sha256,
            )
        )
        offset += w.size
    return PartsIndex(bundle=bundle, signer=signer, part_size=part_size, parts=tuple(parts))
