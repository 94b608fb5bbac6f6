"""Streaming tar + zstd: the strict ustar writer and reader, and the outer bundle layout.

We write and parse tar headers ourselves rather than use ``tarfile``: the writer must be
byte-reproducible, and the reader must refuse everything our writer never emits (links,
devices, pax and GNU records, sparse files) before a single byte reaches the disk.
"""

from __future__ import annotations

import hashlib
import io
import json
import queue
import re
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Final, cast

import zstandard

from ..errors import DeltaError, IntegrityError, ResourceLimitError, UnsafeMemberError, escape
from ..layout import (
    OUTER_COSIGNATURE_PREFIX,
    OUTER_DELTA,
    OUTER_MANIFEST,
    OUTER_PAYLOAD,
    OUTER_SIGNATURE,
)
from .limits import DEFAULT_LIMITS, Limits

BLOCK: Final = 512
CHUNK: Final = 1 << 20
_MAGIC_USTAR: Final = b"ustar\x0000"
_OCTAL_MAX: Final = 8**11  # 11 octal digits; larger sizes use GNU base-256, as GNU tar does
# Revision 1.4 co-signature members: the prefix, then exactly a lowercase hex key id.
_COSIGNATURE_RE: Final = re.compile(re.escape(OUTER_COSIGNATURE_PREFIX) + r"([0-9a-f]{64})")
# The most bytes allowed after the outer archive's last member: the two-block end marker plus
# record padding up to a 1 MiB record (`tar -b 2048`, far beyond GNU tar's 10 KiB default).
MAX_TAIL: Final = (1 << 20) + 2 * BLOCK

_TYPE_NAMES: Final = {
    b"1": "hard link",
    b"2": "symbolic link",
    b"3": "character device",
    b"4": "block device",
    b"5": "directory entry",
    b"6": "FIFO",
    b"7": "contiguous file",
    b"x": "pax header (can rename or resize members)",
    b"g": "pax global header (can rename or resize members)",
    b"L": "GNU long-name record (can rename members)",
    b"K": "GNU long-link record",
    b"S": "sparse member",
    b"D": "GNU directory dump",
    b"M": "GNU multi-volume member",
    b"V": "volume label",
}


# ---- headers ----------------------------------------------------------------------------


def _octal(value: int, width: int) -> bytes:
    """A NUL-terminated octal field of ``width`` bytes."""
    return b"%0*o\x00" % (width - 1, value)


def _size_field(size: int) -> bytes:
    if size < _OCTAL_MAX:
        return _octal(size, 12)
    # GNU base-256: high bit set, big-endian value in the remaining 11 bytes.
    return bytes([0x80]) + size.to_bytes(11, "big")


def _split_name(name: str) -> tuple[bytes, bytes]:
    """Split into ustar (prefix, name) fields; names up to 255 bytes fit, at a '/'."""
    raw = name.encode("utf-8")
    if len(raw) <= 100:
        return b"", raw
    # The longest prefix (<=155 bytes) ending at a '/' whose remainder fits in 100 bytes.
    for i in range(min(len(raw) - 1, 155), 0, -1):
        if raw[i : i + 1] == b"/" and len(raw) - i - 1 <= 100:
            return raw[:i], raw[i + 1 :]
    raise UnsafeMemberError("name does not fit a ustar header (255 bytes)", member=name)


# The ustar header layout (POSIX.1-1988): name, mode, uid, gid, size, mtime, checksum,
# typeflag, linkname, magic+version, uname, gname, devmajor, devminor, prefix, padding.
_USTAR: Final = struct.Struct("100s8s8s8s12s12s8s1s100s8s32s32s8s8s155s12s")
_ZERO_ID: Final = b"%07o\x00" % 0
_ZERO_BLOCK: Final = bytes(BLOCK)


def ustar_header(name: str, size: int, mode: int, mtime: int) -> bytes:
    """One 512-byte POSIX ustar header for a regular file, owners and times normalised."""
    prefix, short = _split_name(name)
    header = _USTAR.pack(
        short,
        _octal(mode, 8),
        _ZERO_ID,
        _ZERO_ID,
        _size_field(size),
        _octal(mtime, 12),
        b" " * 8,  # the checksum is computed with this field as spaces
        b"0",
        b"",
        _MAGIC_USTAR,
        b"",
        b"",
        b"",
        b"",
        prefix,
        b"",
    )  # struct pads every short field with NULs
    checksum = b"%06o\x00 " % sum(header)
    return header[:148] + checksum + header[156:]


def _padding(size: int) -> int:
    return -size % BLOCK


@dataclass(frozen=True)
class Header:
    """A parsed header of a regular file member (every §2 rule but the mtime already held)."""

    name: str
    size: int
    mode: int
    offset: int  # of the header, within its stream
    # Checked against the manifest's ``created`` by the caller, once the manifest is trusted
    # (verify/policy.py): a header alone cannot know it.
    mtime: int = 0


# A numeric field (docs/format.md §2, "Header fields"): ASCII octal digits, leading zeros
# allowed, then at least one terminator (NUL or space), then only NULs or spaces. No leading
# space, sign or empty field (GNU, bsdtar and Python's tarfile all write this shape).
_NUMBER: Final = re.compile(rb"([0-7]+)[\x00 ]+")
_ALLOWED_MODES: Final = (0o644, 0o755)
_ZERO_OWNERS: Final = _ZERO_ID * 2  # two numeric fields holding 0, as our writer spells them
_CANON_MODES: Final = {b"%07o\x00" % m: m for m in _ALLOWED_MODES}


def _text_field(field: bytes) -> tuple[bytes, bool]:
    """The bytes before the first NUL, and whether everything after that NUL is NUL too."""
    value, _, rest = field.partition(b"\x00")
    return value, rest.count(0) == len(rest)


def _parse_number(field: bytes, what: str, name: str, *, empty_ok: bool = False) -> int:
    """An octal numeric field under the strict rule above.

    Raises:
        IntegrityError: it is not one (``empty_ok``: an all-NUL field means 0, as for the
            device numbers our writer leaves empty).
    """
    if empty_ok and field.count(0) == len(field):
        return 0
    match = _NUMBER.fullmatch(field)
    if match is None:
        raise IntegrityError(
            f"malformed {what} field in tar header ({field!r}): octal digits "
            "ended by NUL or space are required",
            member=name,
        )
    return int(match.group(1), 8)


def _parse_size(field: bytes, name: str) -> int:
    """Octal, or GNU base-256 (first byte 0x80, 88-bit big-endian) for 8 GiB and more only."""
    if field[:1] == b"\x80":
        size = int.from_bytes(field[1:], "big")
        if size < _OCTAL_MAX:
            # One encoding per value: a base-256 size an octal field could hold is not ours.
            raise UnsafeMemberError(
                f"size {size} in base-256; sizes under 8 GiB must be octal", member=name
            )
        return size
    if field[:1] and field[0] & 0x80:
        raise UnsafeMemberError(
            "size field in a base-256 form other than GNU's positive one (0x80)", member=name
        )
    return _parse_number(field, "size", name)


def parse_header(block: bytes, offset: int) -> Header:
    """Parse and check one header block of untrusted input against every rule of §2 a single
    header can be checked for; regular files only. The mtime is returned, not checked.

    Raises:
        IntegrityError: bad checksum or a malformed field (encoding).
        UnsafeMemberError: a member type other than a regular file, special or other mode
            bits, owners, owner names, a link name, device numbers, a non-ustar magic, bytes
            hidden after a field's terminator or in the header's unused tail.
    """
    name_field, name_clean = _text_field(block[0:100])
    prefix_field, prefix_clean = _text_field(block[345:500])
    raw_name = prefix_field + b"/" + name_field if prefix_field else name_field
    shown = raw_name.decode("utf-8", "replace")[:200] or "''"
    # The checksum first: nothing else in a block that fails it is worth a word.
    computed = sum(block) - sum(block[148:156]) + 8 * 0x20
    stored = _NUMBER.fullmatch(block[148:156])
    if stored is None or int(stored.group(1), 8) != computed:
        detail = " (the field holds no octal number)" if stored is None else ""
        if stored is not None:
            signed = computed - 256 * sum(1 for b in block[:148] + block[156:] if b >= 0x80)
            if int(stored.group(1), 8) == signed:
                detail = " (a signed-byte sum, as some old tars wrote; POSIX sums unsigned bytes)"
        raise IntegrityError(
            f"tar header checksum mismatch at offset {offset}{detail}", member=shown
        )
    kind = block[156:157]
    if kind != b"0":
        if kind == b"\x00":
            raise UnsafeMemberError(
                "old-style regular file (typeflag NUL); only typeflag '0' is allowed",
                member=shown,
            )
        what = _TYPE_NAMES.get(kind, f"unknown member type {kind!r}")
        raise UnsafeMemberError(f"{what} is not allowed; only regular files are", member=shown)
    if block[257:265] != _MAGIC_USTAR:
        raise UnsafeMemberError(
            "not a POSIX ustar header (GNU or old tar format): magic and version are "
            f"{block[257:265]!r}, not b'ustar\\x0000'",
            member=shown,
        )
    mode = _CANON_MODES.get(block[100:108]) or _parse_number(block[100:108], "mode", shown)
    if mode & 0o7000:
        raise UnsafeMemberError(f"mode {mode:o} has setuid, setgid or sticky bits", member=shown)
    if mode not in _ALLOWED_MODES:
        raise UnsafeMemberError(f"mode {mode:o} is not 644 or 755", member=shown)
    try:
        name = raw_name.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise UnsafeMemberError("name is not valid UTF-8", member=shown) from None
    if not (name_clean and prefix_clean):
        raise UnsafeMemberError(
            "bytes after the NUL that ends the name or prefix field", member=shown
        )
    # Fast paths for the fields as our writer (and GNU tar) writes them; anything else is
    # parsed under the full rule, to accept another writer's spelling or name the problem.
    if block[108:124] != _ZERO_OWNERS:
        uid = _parse_number(block[108:116], "uid", shown)
        gid = _parse_number(block[116:124], "gid", shown)
        if uid or gid:
            raise UnsafeMemberError(f"owner uid {uid}, gid {gid}; both must be 0", member=shown)
    if block[265:329].count(0) != 64:
        uname, gname = block[265:297].rstrip(b"\x00"), block[297:329].rstrip(b"\x00")
        raise UnsafeMemberError(
            f"owner names {uname!r}, {gname!r}; uname and gname must be empty",
            member=shown,
        )
    size = _parse_size(block[124:136], shown)
    mtime = _parse_number(block[136:148], "mtime", shown)
    if block[157:257].count(0) != 100:
        link = block[157:257].rstrip(b"\x00")
        raise UnsafeMemberError(
            f"link name {link!r} on a regular file; it must be empty",
            member=shown,
        )
    devices = block[329:345]
    if devices.count(0) != 16 and devices != _ZERO_OWNERS:
        major = _parse_number(block[329:337], "devmajor", shown, empty_ok=True)
        minor = _parse_number(block[337:345], "devminor", shown, empty_ok=True)
        if major or minor:
            raise UnsafeMemberError(
                f"device numbers {major},{minor} on a regular file; they must be 0 or empty",
                member=shown,
            )
    if block[500:512].count(0) != 12:
        raise UnsafeMemberError("non-zero bytes in the header's unused tail", member=shown)
    return Header(name=name, size=size, mode=mode, offset=offset, mtime=mtime)


# ---- writing ----------------------------------------------------------------------------


def _member_pieces(
    name: str, mode: int, size: int, source: BinaryIO, mtime: int, digests: list[str]
) -> Iterator[bytes]:
    """The bytes of one member (header, data, padding) in pieces of at most ~1 MiB; appends
    the data's sha256 to ``digests`` once the last piece is out.

    Raises:
        IntegrityError: the source yielded a different number of bytes (changed on disk).
    """
    changed = IntegrityError(
        "file changed size while it was being packed",
        member=name,
        remedy="pack again once nothing writes to the project",
    )
    header = ustar_header(name, size, mode, mtime)
    if size < CHUNK:
        # Most files are small: one read and one piece per member keeps per-call overhead
        # out of the compressor's loop.
        data = source.read(size + 1)
        if len(data) != size:
            raise changed
        digests.append(hashlib.sha256(data).hexdigest())
        yield header + data + b"\x00" * _padding(size)
        return
    yield header
    digest = hashlib.sha256()
    remaining = size
    while remaining:
        chunk = source.read(min(CHUNK, remaining))
        if not chunk:
            raise changed
        digest.update(chunk)
        remaining -= len(chunk)
        yield chunk
    if source.read(1):
        raise changed
    digests.append(digest.hexdigest())
    yield b"\x00" * _padding(size)


# A frame holds members up to about this many tar bytes (a member is never split), and a new
# frame starts wherever a member's frame group changes (docs/format.md §5): whole frames can
# then be reused by a later pack of the same tree and checked on several cores.
FRAME_BYTES: Final = 32 << 20


def member_bytes(size: int) -> int:
    """How many tar bytes a member of ``size`` data bytes takes: header, data, padding."""
    return BLOCK + size + _padding(size)


def frame_plan(sizes: Sequence[int], groups: Sequence[str | None]) -> list[tuple[int, int]]:
    """Split members (in payload order) into frames, as ``(start, end)`` index ranges.

    A frame ends before a member whose group differs from the frame's, and before a member
    once the frame holds ``FRAME_BYTES`` or more. Pure and deterministic: the same member
    list always gives the same frames, whichever of them a pack compresses or reuses.
    """
    plan: list[tuple[int, int]] = []
    start, filled = 0, 0
    for i, (size, group) in enumerate(zip(sizes, groups, strict=True)):
        if i > start and (group != groups[start] or filled >= FRAME_BYTES):
            plan.append((start, i))
            start, filled = i, 0
        filled += member_bytes(size)
    if start < len(sizes):
        plan.append((start, len(sizes)))
    return plan


_FRAME_FORMAT: Final = "airgap-frames/1"


def frame_params(level: int, mtime: int) -> str:
    """What decides a frame's compressed bytes besides its members: the frame rules, the
    level, the headers' mtime and the zstd library; a digest, to name reusable frames."""
    doc = [_FRAME_FORMAT, FRAME_BYTES, level, mtime, zstandard.ZSTD_VERSION, zstandard.__version__]
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()


def check_frame(
    src: BinaryIO,
    members: Sequence[tuple[str, int, int]],
    mtime: int,
    max_window: int = DEFAULT_LIMITS.max_window_bytes,
) -> list[str]:
    """Decompress compressed bytes that must hold exactly ``members`` (name, size, mode) as
    this writer emits them; return each member's sha256. Memory stays bounded (~1 MiB
    pieces): the expected sizes bound every read, so a crafted frame cannot inflate.

    Raises:
        IntegrityError: a header, size, padding or the end differs, or the stream is corrupt.
    """
    dctx = zstandard.ZstdDecompressor(max_window_size=max_window)
    reader = dctx.stream_reader(src, read_size=CHUNK, read_across_frames=True, closefd=False)
    buf = memoryview(b"")
    pos = 0

    def ensure(n: int, member: str) -> None:
        """Make the buffer hold the next ``n`` (at most ~CHUNK) decompressed bytes; most
        members then come from one buffer, with no call into the decompressor each."""
        nonlocal buf, pos
        if pos + n > len(buf):
            rest = bytes(buf[pos:])
            piece = reader.read(max(CHUNK, n - len(rest)))
            while len(rest) + len(piece) < n and piece:
                rest += piece
                piece = reader.read(CHUNK)
            buf, pos = memoryview(rest + piece), 0
            if len(buf) < n:
                raise IntegrityError("cached frame ends early", member=member)

    def take(n: int, member: str) -> memoryview:
        nonlocal pos
        ensure(n, member)
        pos += n
        return buf[pos - n : pos]

    digests: list[str] = []
    name = "payload"
    try:
        for name, size, mode in members:
            pad = _padding(size)
            whole = BLOCK + size + pad
            if whole <= CHUNK:  # the common case: the whole member from the buffer at once
                ensure(whole, name)
                end = pos + BLOCK + size
                if buf[pos : pos + BLOCK] != ustar_header(name, size, mode, mtime):
                    raise IntegrityError("cached frame holds another header", member=name)
                if pad and buf[end : end + pad] != _ZERO_BLOCK[:pad]:
                    raise IntegrityError("cached frame has non-zero padding", member=name)
                digests.append(hashlib.sha256(buf[pos + BLOCK : end]).hexdigest())
                pos += whole
                continue
            if take(BLOCK, name) != ustar_header(name, size, mode, mtime):
                raise IntegrityError("cached frame holds another header", member=name)
            digest = hashlib.sha256()
            remaining = size
            while remaining:
                piece = take(min(CHUNK, remaining), name)
                digest.update(piece)
                remaining -= len(piece)
            if pad and take(pad, name) != _ZERO_BLOCK[:pad]:
                raise IntegrityError("cached frame has non-zero padding", member=name)
            digests.append(digest.hexdigest())
        if pos < len(buf) or reader.read(1):
            raise IntegrityError("cached frame holds more than its members", member=name)
    except zstandard.ZstdError as e:
        raise IntegrityError(f"cached frame is corrupt: {e}", member=name) from None
    return digests


class _Hashed(io.RawIOBase):
    """Reads through ``f`` to its end, hashing every byte read."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._f.read(len(buffer))
        self.sha256.update(data)
        buffer[: len(data)] = data
        return len(data)


def check_frame_file(
    f: BinaryIO, members: Sequence[tuple[str, int, int]], mtime: int
) -> tuple[str, list[str]]:
    """:func:`check_frame` on a whole file; also return the sha256 of all its bytes, so a
    copy of them can be proven to be these checked bytes by its digest alone.

    Raises:
        IntegrityError: as check_frame.
    """
    hashed = _Hashed(f)
    digests = check_frame(cast(BinaryIO, hashed), members, mtime)
    while hashed.read(CHUNK):  # bytes the decompressor did not need count too
        pass
    return hashed.sha256.hexdigest(), digests


@dataclass(frozen=True)
class MemberSource:
    """One member to write: its name, mode and size, and how to open its bytes."""

    name: str
    mode: int
    size: int
    open: Callable[[], BinaryIO]


class TarWriter:
    """Writes regular-file members to a binary stream, hashing each member while copying."""

    def __init__(self, out: BinaryIO, mtime: int) -> None:
        self._out = out
        self._mtime = mtime
        self.written = 0

    def add(self, name: str, mode: int, size: int, source: BinaryIO) -> str:
        """Copy exactly ``size`` bytes from ``source`` as member ``name``; return their sha256.

        Raises:
            IntegrityError: the source yielded a different number of bytes (changed on disk).
        """
        digests: list[str] = []
        for piece in _member_pieces(name, mode, size, source, self._mtime, digests):
            self._write(piece)
        return digests[0]

    def add_all(
        self, members: Sequence[MemberSource], on_written: Callable[[int], None] | None = None
    ) -> list[str]:
        """Write every member in order; return their sha256 digests.

        (Reading and hashing in a second thread was measured slower on two cores: the
        compressor's workers already keep both busy.)

        Raises:
            IntegrityError: a file changed size while it was read.
        """
        digests: list[str] = []
        for m in members:
            with m.open() as src:
                for piece in _member_pieces(m.name, m.mode, m.size, src, self._mtime, digests):
                    self._write(piece)
            if on_written is not None:
                on_written(m.size)
        return digests

    def close(self) -> None:
        """Write the end-of-archive marker: two zero blocks."""
        self._write(b"\x00" * (2 * BLOCK))

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self.written += len(data)


class _HashingWriter(io.RawIOBase):
    """Counts and hashes everything written through it to ``target``."""

    def __init__(self, target: BinaryIO) -> None:
        self.target = target
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.target.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)


@dataclass(frozen=True)
class PayloadStats:
    sha256: str
    size: int


class BundleWriter:
    """Writes the outer tar: the payload first, then manifest.json and its signature.

    The payload's size is not known until it is compressed, so its header is written as a
    placeholder and rewritten at the end; ``out`` must be seekable (a regular file).
    """

    def __init__(self, out: BinaryIO, mtime: int, level: int, threads: int) -> None:
        if threads < 1:
            # zstd's output is identical for any worker count >= 1, but differs with 0
            # (single-threaded mode); always using workers keeps bundles reproducible.
            raise ValueError("threads must be >= 1")
        self._out = out
        self._mtime = mtime
        self.mtime = mtime
        self._start = out.tell()
        out.write(b"\x00" * BLOCK)  # placeholder header for payload.tar.zst
        self._hashing = _HashingWriter(out)
        params = zstandard.ZstdCompressionParameters.from_level(
            level, threads=threads, write_checksum=True, write_content_size=False
        )
        self._compressor = zstandard.ZstdCompressor(compression_params=params)
        self._zwriter = self._compressor.stream_writer(
            cast(BinaryIO, self._hashing), closefd=False, write_size=CHUNK
        )
        self.tar = TarWriter(cast(BinaryIO, self._zwriter), mtime)
        self._frame_start = 0

    @property
    def payload_offset(self) -> int:
        """Where the compressed payload starts in ``out`` (after its outer header)."""
        return self._start + BLOCK

    @property
    def compressed(self) -> int:
        """Compressed payload bytes written so far (a frame's offset, after end_frame)."""
        return self._hashing.size

    def end_frame(self) -> None:
        """End the current zstd frame, if anything was written since the last one."""
        if self.tar.written != self._frame_start:
            self._zwriter.flush(zstandard.FLUSH_FRAME)
            self._frame_start = self.tar.written

    def copy_frame(self, src: BinaryIO, tar_bytes: int) -> str:
        """Append already-compressed frame bytes (which decompress to ``tar_bytes`` bytes of
        members) as they are; return their sha256. The caller must prove them (e.g. with
        :func:`check_frame_file` and that digest) before signing."""
        self.end_frame()
        digest = hashlib.sha256()
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            self._hashing.write(chunk)
        self.tar.written += tar_bytes
        self._frame_start = self.tar.written
        return digest.hexdigest()

    def finish_payload(self) -> PayloadStats:
        """End the members' frame, then write the end-of-archive marker in a frame of its
        own and close it; fix up the payload's outer header."""
        self.end_frame()
        self.tar.close()
        self._zwriter.flush(zstandard.FLUSH_FRAME)
        size = self._hashing.size
        self._out.write(b"\x00" * _padding(size))
        end = self._out.tell()
        self._out.seek(self._start)
        self._out.write(ustar_header(OUTER_PAYLOAD, size, 0o644, self._mtime))
        self._out.seek(end)
        return PayloadStats(sha256=self._hashing.sha256.hexdigest(), size=size)

    def finish(
        self, manifest: bytes, signature: bytes, cosignatures: Sequence[tuple[str, bytes]] = ()
    ) -> None:
        """Append the manifest and its signature, any co-signatures (revision 1.4, as
        ``(key id, signature)`` pairs), then the end-of-archive marker."""
        for name, data in ((OUTER_MANIFEST, manifest), (OUTER_SIGNATURE, signature)):
            self._out.write(ustar_header(name, len(data), 0o644, self._mtime))
            self._out.write(data + b"\x00" * _padding(len(data)))
        write_cosignatures(self._out, self._mtime, cosignatures)
        self._out.flush()


def cosignature_member(key_id: str) -> str:
    """The outer member name of the co-signature by ``key_id`` (revision 1.4)."""
    return OUTER_COSIGNATURE_PREFIX + key_id


def write_cosignatures(out: BinaryIO, mtime: int, items: Sequence[tuple[str, bytes]]) -> None:
    """Co-signature members sorted by key id (one per key), then the end-of-archive marker.

    Sorting makes the bytes independent of the order keys signed in (reproducible), and is
    what the reader insists on, so a duplicate can never be slipped in between.
    """
    by_key = dict(items)
    if len(by_key) != len(items):
        raise ValueError("one co-signature per key id")
    for kid in sorted(by_key):
        if not _COSIGNATURE_RE.fullmatch(cosignature_member(kid)):
            raise ValueError(f"not a key id: {kid!r}")
        data = by_key[kid]
        out.write(ustar_header(cosignature_member(kid), len(data), 0o644, mtime))
        out.write(data + b"\x00" * _padding(len(data)))
    out.write(b"\x00" * (2 * BLOCK))


# ---- reading ----------------------------------------------------------------------------


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise IntegrityError(
            f"bundle is truncated (wanted {n} bytes, got {len(data)})", member="bundle"
        )
    return data


@dataclass(frozen=True)
class OuterBundle:
    """Where the three outer members are; only the small ones are read into memory.

    ``cosignatures`` are the revision 1.4 members after the signature, as ``(key id,
    signature)`` pairs in increasing key id order: untrusted until verified, the name
    included. ``signed_end`` is the offset just after the signature member, where they begin.
    """

    manifest: bytes
    signature: bytes
    payload_offset: int
    payload_size: int
    cosignatures: tuple[tuple[str, bytes], ...] = ()
    signed_end: int = 0
    # (member name, header mtime) of the outer members, in order: §2 wants each to be the
    # manifest's ``created``, which is only known once the manifest is read (check_times).
    mtimes: tuple[tuple[str, int], ...] = ()

    def check_times(self, created: int) -> None:
        """Every outer header's mtime is the manifest's ``created`` (§2).

        The outer headers are parsed before anything is trusted, so callers run this once
        the manifest is parsed (after its signature verified, when verifying: §7 step 4).

        Raises:
            UnsafeMemberError: naming the first outer member whose mtime differs.
        """
        for name, mtime in self.mtimes:
            if mtime != created:
                raise UnsafeMemberError(
                    f"mtime {mtime} is not the manifest's created time {created}", member=name
                )


def read_outer(f: BinaryIO, limits: Limits = DEFAULT_LIMITS) -> OuterBundle:
    """Read the outer tar's structure, the manifest and the signature; skip the payload.

    Seeks over the payload, so this is instant on a bundle of any size.

    Raises:
        IntegrityError, UnsafeMemberError, ResourceLimitError: not exactly our three members.
    """
    expected = (OUTER_PAYLOAD, OUTER_MANIFEST, OUTER_SIGNATURE)
    bounds = {
        OUTER_MANIFEST: limits.max_manifest_bytes,
        OUTER_SIGNATURE: limits.max_signature_bytes,
    }
    found: dict[str, tuple[int, int]] = {}
    small: dict[str, bytes] = {}
    mtimes: list[tuple[str, int]] = []
    f.seek(0, io.SEEK_END)
    total = f.tell()
    offset = 0
    f.seek(0)
    for want in expected:
        block = _read_exact(f, BLOCK)
        if block == b"\x00" * BLOCK:
            raise IntegrityError(f"member {want!r} is missing", member=want)
        header = parse_header(block, offset)
        if header.name == OUTER_DELTA and offset == 0:
            # A delta (docs/format.md §13) is refused whole, never half-read as a bundle.
            raise DeltaError(
                "this is a delta bundle (airgap-delta/1), not a full bundle",
                member=OUTER_DELTA,
                remedy="apply it with `airgap unpack DELTA DEST` where DEST holds its base "
                "version (`airgap inspect DELTA` names it), or use the full bundle",
            )
        if header.name != want:
            if header.name in expected:
                raise IntegrityError(
                    f"outer members out of order: expected {want!r}", member=header.name
                )
            raise IntegrityError("unexpected member in the outer archive", member=header.name)
        mtimes.append((want, header.mtime))
        data_offset = offset + BLOCK
        if data_offset + header.size > total:
            raise IntegrityError("bundle is truncated inside this member", member=want)
        if want in bounds:
            if header.size > bounds[want]:
                raise ResourceLimitError(
                    f"{header.size} bytes, over the limit of {bounds[want]}", member=want
                )
            small[want] = _read_exact(f, header.size)
        found[want] = (data_offset, header.size)
        # The padding up to the next block must be zeros, as in the payload (§2).
        f.seek(data_offset + header.size)
        pad = _padding(header.size)
        padding = f.read(pad)
        if len(padding) != pad:
            raise IntegrityError("bundle is truncated inside this member's padding", member=want)
        if padding.count(0) != pad:
            raise IntegrityError("non-zero padding after member data", member=want)
        offset = data_offset + header.size + pad
        f.seek(offset)
    signed_end = offset
    cosignatures, offset = read_cosignatures(f, offset, total, limits, mtimes)
    # After the members: only zero blocks (the end marker, maybe record padding).
    tail_len = total - offset
    if tail_len < 2 * BLOCK:
        raise IntegrityError("end-of-archive marker missing", member="bundle")
    if tail_len > MAX_TAIL:
        # Record padding is at most one tar record; gigabytes of "padding" only cost time.
        raise IntegrityError(
            f"{tail_len} bytes after the last member, over the {MAX_TAIL} bytes an end "
            "marker and record padding need",
            member="bundle",
        )
    remaining = tail_len
    while remaining:
        chunk = f.read(min(CHUNK, remaining))
        if not chunk:
            raise IntegrityError("bundle is truncated", member="bundle")
        if chunk.count(0) != len(chunk):
            raise IntegrityError("extra data after the last member", member="bundle")
        remaining -= len(chunk)
    if tail_len % BLOCK:
        raise IntegrityError(
            "the end marker and padding are not whole 512-byte blocks", member="bundle"
        )
    payload_offset, payload_size = found[OUTER_PAYLOAD]
    return OuterBundle(
        manifest=small[OUTER_MANIFEST],
        signature=small[OUTER_SIGNATURE],
        payload_offset=payload_offset,
        payload_size=payload_size,
        cosignatures=cosignatures,
        signed_end=signed_end,
        mtimes=tuple(mtimes),
    )


def read_cosignatures(
    f: BinaryIO, offset: int, total: int, limits: Limits, mtimes: list[tuple[str, int]]
) -> tuple[tuple[tuple[str, bytes], ...], int]:
    """The revision 1.4 co-signature members from ``offset`` up to the end marker (after a
    full bundle's signature, or a delta's: docs/format.md §13.1).

    Each name must be the prefix and a lowercase hex key id, each size at most one
    signature, key ids strictly increasing (so no duplicates), at most
    ``limits.max_cosignatures`` of them. Returns them and the offset of the end marker.

    Raises:
        IntegrityError, UnsafeMemberError, ResourceLimitError: any of those rules broken.
    """
    found: list[tuple[str, bytes]] = []
    while offset + BLOCK <= total:
        block = _read_exact(f, BLOCK)
        if block == b"\x00" * BLOCK:
            break
        if not block.startswith(OUTER_COSIGNATURE_PREFIX.encode()):
            # Anything but a co-signature after the signature: as before revision 1.4.
            raise IntegrityError("extra data after the last member", member="bundle")
        header = parse_header(block, offset)
        shown = escape(header.name)
        match = _COSIGNATURE_RE.fullmatch(header.name)
        if match is None:
            raise IntegrityError(
                "unexpected member in the outer archive (a co-signature member is named "
                f"{OUTER_COSIGNATURE_PREFIX}<64 lowercase hex key id>)",
                member=shown,
            )
        kid = match.group(1)
        if found and kid == found[-1][0]:
            raise UnsafeMemberError("duplicate member", member=shown)
        if found and kid < found[-1][0]:
            raise IntegrityError(
                "co-signature members out of order (key ids must increase)", member=shown
            )
        if len(found) >= limits.max_cosignatures:
            raise ResourceLimitError(
                f"more than {limits.max_cosignatures} co-signatures", member=shown
            )
        if header.size > limits.max_signature_bytes:
            raise ResourceLimitError(
                f"{header.size} bytes, over the limit of {limits.max_signature_bytes}",
                member=shown,
            )
        if offset + BLOCK + header.size > total:
            raise IntegrityError("bundle is truncated inside this member", member=shown)
        found.append((kid, _read_exact(f, header.size)))
        mtimes.append((shown, header.mtime))  # §2: `created`, as the three members
        pad = _padding(header.size)
        if _read_exact(f, pad).count(0) != pad:
            raise IntegrityError("non-zero padding after member data", member=shown)
        offset += BLOCK + header.size + pad
        f.seek(offset)
    f.seek(offset)
    return tuple(found), offset


def hash_region(f: BinaryIO, offset: int, size: int) -> str:
    """sha256 of ``size`` bytes at ``offset``, read in bounded chunks."""
    f.seek(offset)
    digest = hashlib.sha256()
    remaining = size
    while remaining:
        chunk = f.read(min(CHUNK, remaining))
        if not chunk:
            raise IntegrityError("payload is truncated", member=OUTER_PAYLOAD)
        digest.update(chunk)
        remaining -= len(chunk)
    return digest.hexdigest()


class _Region(io.RawIOBase):
    """Exactly ``size`` bytes of ``f`` from ``offset``, re-hashed as they are read.

    The payload was hashed once before decompression; hashing again while reading catches a
    file that was swapped between the two passes.
    """

    def __init__(self, f: BinaryIO, offset: int, size: int) -> None:
        self._f = f
        self._remaining = size
        self.sha256 = hashlib.sha256()
        f.seek(offset)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._remaining)
        if n == 0:
            return 0
        data = self._f.read(n)
        if not data:
            raise IntegrityError("payload is truncated", member=OUTER_PAYLOAD)
        buffer[: len(data)] = data
        self.sha256.update(data)
        self._remaining -= len(data)
        return len(data)


class _Bounded:
    """Reads from the decompressor, refusing output beyond ``limit`` bytes."""

    def __init__(self, reader: zstandard.ZstdDecompressionReader, limit: int) -> None:
        self._reader = reader
        self._limit = limit
        self._over = False
        self.count = 0

    def _over_limit(self) -> ResourceLimitError:
        return ResourceLimitError(
            f"decompressed output exceeds the manifest's declared total ({self._limit} "
            "bytes with tar headers)",
            member=OUTER_PAYLOAD,
        )

    def read(self, n: int) -> bytes:
        if self._over:
            raise self._over_limit()
        try:
            data = self._reader.read(n)
        except zstandard.ZstdError as e:
            text = str(e)
            if "memory" in text or "window" in text.lower():
                raise ResourceLimitError(
                    f"zstd frame needs a window beyond the limit ({text})",
                    member=OUTER_PAYLOAD,
                ) from e
            raise IntegrityError(f"zstd stream is corrupt ({text})", member=OUTER_PAYLOAD) from e
        if self.count + len(data) > self._limit:
            # Hand over the part within the limit and fail on the next read: a bad member
            # inside the declared total is then named by its own check, whatever the chunking
            # or read-ahead.
            data = data[: self._limit - self.count]
            self._over = True
            if not data:
                raise self._over_limit()
        self.count += len(data)
        return data


class _Prefetch:
    """Decompresses ahead in a background thread, so decompression overlaps with hashing
    and writing (zstd, hashlib and file writes all release the GIL).

    At most ``depth`` chunks wait in the queue, so memory stays bounded; an error raised
    while decompressing (a limit, a corrupt frame) is re-raised to the reader in order.
    """

    def __init__(self, source: _Bounded, depth: int = 8) -> None:
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._buffer = memoryview(b"")
        self._eof = False
        self._thread = threading.Thread(
            target=self._run, args=(source,), name="airgap-decompress", daemon=True
        )
        self._thread.start()

    def _run(self, source: _Bounded) -> None:
        item: bytes | BaseException
        while not self._stop.is_set():
            try:
                item = source.read(CHUNK)
            except BaseException as e:  # forwarded to the reader, which re-raises it
                item = e
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if not isinstance(item, bytes) or not item:
                return

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; b"" at the end of the stream."""
        if not self._buffer:
            if self._eof:
                return b""
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            if not item:
                self._eof = True
                return b""
            if n >= len(item):
                return item  # the common case for file data: hand the chunk over, no copy
            self._buffer = memoryview(item)
        data = bytes(self._buffer[:n])
        self._buffer = self._buffer[n:]
        return data

    def read_exact(self, n: int, member: str) -> bytes:
        parts = []
        remaining = n
        while remaining:
            chunk = self.read(remaining)
            if not chunk:
                raise IntegrityError("payload tar ends inside a member", member=member)
            parts.append(chunk)
            remaining -= len(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Stop the thread (also after an error); waits for it to finish."""
        self._stop.set()
        self._thread.join()


class PayloadReader:
    """Yields (header, chunks) for each member of the decompressed payload tar.

    Only call this after the payload's sha256 matched the signed manifest. ``limit`` bounds
    the decompressed bytes (file data plus tar framing the manifest implies).
    """

    def __init__(
        self, f: BinaryIO, offset: int, size: int, limit: int, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        self._region = _Region(f, offset, size)
        dctx = zstandard.ZstdDecompressor(max_window_size=limits.max_window_bytes)
        raw = dctx.stream_reader(
            cast(BinaryIO, self._region), read_size=CHUNK, read_across_frames=True, closefd=False
        )
        self._src = _Prefetch(_Bounded(raw, limit))
        self._offset = 0

    def members(self) -> Iterator[tuple[Header, Iterator[bytes]]]:
        """Each member's header and a generator of its data; consume it before the next."""
        try:
            while True:
                block = self._src.read_exact(BLOCK, "payload")
                if block == b"\x00" * BLOCK:
                    second = self._src.read_exact(BLOCK, "payload")
                    if second != b"\x00" * BLOCK:
                        raise IntegrityError("malformed end-of-archive marker", member="payload")
                    if self._src.read(1):
                        raise IntegrityError(
                            "extra data after the end of the payload tar", member="payload"
                        )
                    return
                header = parse_header(block, self._offset)
                self._offset += BLOCK
                yield header, self._data(header)
                self._offset += header.size + _padding(header.size)
        finally:
            # Also on an error or an abandoned generator: the decompressing thread stops.
            self._src.close()

    def _data(self, header: Header) -> Iterator[bytes]:
        remaining = header.size
        while remaining:
            chunk = self._src.read(min(CHUNK, remaining))
            if not chunk:
                raise IntegrityError("payload tar ends inside this member", member=header.name)
            remaining -= len(chunk)
            yield chunk
        pad = _padding(header.size)
        if pad and self._src.read_exact(pad, header.name).count(0) != pad:
            raise IntegrityError("non-zero padding after member data", member=header.name)

    def finish(self, expected_sha256: str) -> None:
        """Hash any compressed bytes left unread, then compare with the signed digest.

        Raises:
            IntegrityError: the payload changed since it was first hashed.
        """
        while self._region.read(CHUNK):
            pass
        if self._region.sha256.hexdigest() != expected_sha256:
            raise IntegrityError(
                "payload changed while it was being read",
                member=OUTER_PAYLOAD,
                remedy="make sure nothing writes to the bundle file during unpack",
            )


def decompressed_limit(unpacked_size: int, file_count: int) -> int:
    """The most decompressed bytes a payload with these declared totals can produce."""
    return unpacked_size + file_count * (2 * BLOCK - 1) + 2 * BLOCK
