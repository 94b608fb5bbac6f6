"""The strict ustar writer and reader, zstd framing and limits, and the outer bundle layout."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import craft
import pytest
import zstandard
from conftest import MakeBundle

from bundler.errors import IntegrityError, ResourceLimitError, UnsafeMemberError
from bundler.formats.archive import (
    BLOCK,
    BundleWriter,
    PayloadReader,
    TarWriter,
    decompressed_limit,
    hash_region,
    parse_header,
    read_outer,
    ustar_header,
)
from bundler.formats.limits import Limits
from bundler.formats.manifest import parse_manifest

# ---- headers ------------------------------------------------------------------------------


def test_ustar_header_is_plain_posix_with_normalised_owner_and_time() -> None:
    block = ustar_header("app/score.py", 1234, 0o755, 1_700_000_000)
    assert len(block) == BLOCK
    info = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
    assert (info.name, info.size, info.mode, info.mtime) == (
        "app/score.py",
        1234,
        0o755,
        1_700_000_000,
    )
    assert (info.uid, info.gid, info.uname, info.gname) == (0, 0, "", "")
    assert info.type == tarfile.REGTYPE
    assert block[257:265] == b"ustar\x0000"
    parsed = parse_header(block, 0)
    assert (parsed.name, parsed.size, parsed.mode) == ("app/score.py", 1234, 0o755)


@pytest.mark.parametrize(
    "name",
    [
        "app/" + "a" * 96,  # 100 bytes: the name field alone
        "app/" + "a" * 97,  # 101 bytes: prefix "app"
        "app/" + "b" * 50 + "/" + "c" * 95,
        "site-packages/" + "p" * 141 + "/" + "n" * 99,  # 255 bytes: both fields full
    ],
    ids=["100", "101", "150", "255"],
)
def test_long_names_use_the_ustar_prefix_field(name: str) -> None:
    block = ustar_header(name, 0, 0o644, 0)
    assert parse_header(block, 0).name == name
    assert tarfile.TarInfo.frombuf(block, "utf-8", "strict").name == name


def test_a_name_that_fits_no_ustar_header_is_refused() -> None:
    with pytest.raises(UnsafeMemberError, match="does not fit a ustar header"):
        ustar_header("app/" + "x" * 200, 0, 0o644, 0)  # no '/' to split at


def test_sizes_beyond_eleven_octal_digits_use_gnu_base256() -> None:
    size = 8**11 + 5  # 8 GiB + 5: beyond the 11 octal digits of the size field
    block = ustar_header("model/huge.bin", size, 0o644, 0)
    assert block[124] == 0x80
    assert parse_header(block, 0).size == size
    assert tarfile.TarInfo.frombuf(block, "utf-8", "strict").size == size


@pytest.mark.parametrize(
    ("block", "error", "text"),
    [
        (craft.header("a", checksum_delta=1), IntegrityError, "checksum mismatch"),
        (craft.header("a", typeflag=b"2"), UnsafeMemberError, "symbolic link"),
        (craft.header("a", typeflag=b"x"), UnsafeMemberError, "pax header"),
        (craft.header("a", magic=craft.GNU), UnsafeMemberError, "not a POSIX ustar header"),
        (craft.header("a", mode=0o4755), UnsafeMemberError, "setuid, setgid or sticky"),
        (craft.header("a", size_field=b"9"), IntegrityError, "malformed size field"),
        (craft.header(b"\xff"), UnsafeMemberError, "not valid UTF-8"),
    ],
)
def test_parse_header_refuses(block: bytes, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        parse_header(block, 0)


def test_parse_header_refuses_the_old_regular_file_type() -> None:
    # Type '\0' meant a regular file in pre-POSIX archives; §2 allows only '0' (see
    # tests/test_strict_reader.py for the reader and CLI).
    with pytest.raises(UnsafeMemberError, match="typeflag NUL"):
        parse_header(craft.header("app/a", 3, typeflag=b"\x00"), 0)


# ---- the tar writer ------------------------------------------------------------------------


def test_tar_writer_output_is_read_by_the_standard_tarfile_module() -> None:
    out = io.BytesIO()
    writer = TarWriter(out, mtime=42)
    digests = {}
    for f in craft.DEFAULT_FILES:
        digests[f.path] = writer.add(f.path, f.mode, len(f.data), io.BytesIO(f.data))
    writer.close()
    assert writer.written == len(out.getvalue())
    assert len(out.getvalue()) % BLOCK == 0
    with tarfile.open(fileobj=io.BytesIO(out.getvalue()), mode="r:") as tf:
        members = tf.getmembers()
        assert [m.name for m in members] == [f.path for f in craft.DEFAULT_FILES]
        for m, f in zip(members, craft.DEFAULT_FILES, strict=True):
            assert (m.mode, m.mtime, m.isreg()) == (f.mode, 42, True)
            data = tf.extractfile(m).read()  # type: ignore[union-attr]
            assert data == f.data
            assert digests[f.path] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("actual", [b"short", b"much longer than declared"])
def test_tar_writer_refuses_a_source_that_changed_size(actual: bytes) -> None:
    writer = TarWriter(io.BytesIO(), mtime=0)
    with pytest.raises(IntegrityError, match="changed size while it was being packed"):
        writer.add("app/a.py", 0o644, 10, io.BytesIO(actual))


def test_bundle_writer_needs_worker_threads() -> None:
    with pytest.raises(ValueError, match="threads must be >= 1"):
        BundleWriter(io.BytesIO(), mtime=0, level=3, threads=0)


# ---- the outer tar -------------------------------------------------------------------------


def test_read_outer_finds_the_three_members(make_bundle: MakeBundle) -> None:
    bundle = make_bundle()
    with bundle.open("rb") as f:
        outer = read_outer(f)
        manifest = parse_manifest(outer.manifest)
        assert len(outer.signature) == 64
        assert outer.payload_offset == BLOCK
        assert outer.payload_size == manifest.payload.size
        assert hash_region(f, outer.payload_offset, outer.payload_size) == manifest.payload.sha256
    with tarfile.open(bundle, mode="r:") as tf:
        assert tf.getnames() == ["payload.tar.zst", "manifest.json", "manifest.json.sig"]


class CountingReader(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.read_bytes = 0

    def read(self, n: int | None = -1) -> bytes:
        data = super().read(n)
        self.read_bytes += len(data)
        return data


def test_read_outer_skips_the_payload(make_bundle: MakeBundle) -> None:
    # A payload of random bytes that does not compress: reading the outer tar must seek over it.
    import random

    big = random.Random(7).randbytes(2 * 2**20)
    data = make_bundle(files={"app/score.py": b"x", "model/big.bin": big}).read_bytes()
    f = CountingReader(data)
    outer = read_outer(f)
    assert outer.payload_size > len(big)
    assert f.read_bytes < 16 * 1024


def test_read_outer_accepts_record_padding(make_bundle: MakeBundle) -> None:
    # GNU tar pads archives to 10 KiB records with zero blocks; that is still our bundle.
    data = make_bundle().read_bytes()
    padded = data + bytes(-len(data) % 10240)
    assert read_outer(io.BytesIO(padded)).manifest == read_outer(io.BytesIO(data)).manifest


# ---- the payload reader ----------------------------------------------------------------------


def _reader(payload: bytes, limit: int, limits: Limits | None = None) -> PayloadReader:
    f = io.BytesIO(b"\x00" * 7 + payload)  # at an offset, like inside the outer tar
    return PayloadReader(f, 7, len(payload), limit, *([limits] if limits else []))


def _read_all(reader: PayloadReader) -> dict[str, bytes]:
    return {h.name: b"".join(chunks) for h, chunks in reader.members()}


def test_payload_reader_yields_every_member() -> None:
    payload = craft.zstd(craft.tar(craft.members_of(craft.DEFAULT_FILES)))
    reader = _reader(payload, 10**6)
    assert _read_all(reader) == {f.path: f.data for f in craft.DEFAULT_FILES}
    reader.finish(hashlib.sha256(payload).hexdigest())


def test_payload_reader_notices_a_payload_that_changed_after_hashing() -> None:
    payload = craft.zstd(craft.tar(craft.members_of(craft.DEFAULT_FILES)))
    reader = _reader(payload, 10**6)
    _read_all(reader)
    with pytest.raises(IntegrityError, match="payload changed while it was being read"):
        reader.finish(hashlib.sha256(b"what was hashed first").hexdigest())


def test_payload_reader_reads_across_frames() -> None:
    first, second = craft.DEFAULT_FILES[:2], craft.DEFAULT_FILES[2:]
    payload = craft.zstd(b"".join(craft.members_of(first))) + craft.zstd(
        craft.tar(craft.members_of(second))
    )
    assert _read_all(_reader(payload, 10**6)).keys() == {f.path for f in craft.DEFAULT_FILES}


def test_decompressed_limit_covers_the_largest_framing() -> None:
    # One-byte files need the most padding (511 bytes each): the limit is exactly reached.
    files = [craft.F(f"app/{i}", b"x") for i in range(5)]
    tar = craft.tar(craft.members_of(files))
    assert len(tar) == decompressed_limit(5, 5)
    assert _read_all(_reader(craft.zstd(tar), decompressed_limit(5, 5))).keys() == {
        f.path for f in files
    }


def test_output_beyond_the_limit_is_refused() -> None:
    tar = craft.tar(craft.members_of(craft.DEFAULT_FILES))
    with pytest.raises(ResourceLimitError, match="exceeds the manifest's declared total"):
        _read_all(_reader(craft.zstd(tar), len(tar) - 1))


def test_members_within_the_limit_are_delivered_before_the_limit_error() -> None:
    # Regression: with read-ahead, the limit error used to replace the whole chunk it was
    # found in, so a bad member inside the limit was reported as a limit breach instead of
    # by its own check.
    good = craft.DEFAULT_FILES[0]
    tar = craft.tar([craft.member(good.path, good.data), craft.member("app/b", bytes(4096))])
    reader = _reader(craft.zstd(tar), limit=3 * BLOCK + 100)
    members = reader.members()
    header, chunks = next(members)
    assert (header.name, b"".join(chunks)) == (good.path, good.data)
    header, chunks = next(members)
    assert header.name == "app/b"  # its header is still within the limit, its data is not
    with pytest.raises(ResourceLimitError, match="exceeds the manifest's declared total"):
        b"".join(chunks)


@pytest.mark.parametrize(("window_log", "refused"), [(27, False), (28, True), (31, True)])
def test_zstd_window_limit(window_log: int, refused: bool) -> None:
    tar = craft.tar(craft.members_of(craft.DEFAULT_FILES))
    payload = craft.zstd(tar, window_log=window_log)
    assert zstandard.get_frame_parameters(payload).window_size == 2**window_log
    if refused:
        with pytest.raises(ResourceLimitError, match="window beyond the limit"):
            _read_all(_reader(payload, 10**6))
    else:
        assert len(_read_all(_reader(payload, 10**6))) == len(craft.DEFAULT_FILES)


def test_zstd_window_limit_is_configurable() -> None:
    payload = craft.zstd(craft.tar(craft.members_of(craft.DEFAULT_FILES)), window_log=21)
    with pytest.raises(ResourceLimitError, match="window beyond the limit"):
        _read_all(_reader(payload, 10**6, Limits(max_window_bytes=2**20)))


def test_abandoned_reader_stops_its_thread() -> None:
    import threading

    payload = craft.zstd(craft.tar(craft.members_of(craft.DEFAULT_FILES)))
    before = threading.active_count()
    for _ in range(20):
        members = _reader(payload, 10**6).members()
        next(members)
        members.close()  # what happens when a check fails after the first member
    assert threading.active_count() == before


def test_the_writer_bundle_is_read_back(make_bundle: MakeBundle, tmp_path: Path) -> None:
    bundle = make_bundle(files={"app/score.py": b"x" * 5000, "model/m.bin": b""})
    with bundle.open("rb") as f:
        outer = read_outer(f)
        manifest = parse_manifest(outer.manifest)
        limit = decompressed_limit(manifest.payload.unpacked_size, manifest.payload.file_count)
        reader = PayloadReader(f, outer.payload_offset, outer.payload_size, limit)
        assert _read_all(reader) == {"app/score.py": b"x" * 5000, "model/m.bin": b""}
        reader.finish(manifest.payload.sha256)


# ---- frames (docs/format.md §5) ----------------------------------------------------------


def test_frame_plan_breaks_at_group_changes_and_after_the_size_but_never_inside_a_member() -> None:
    from bundler.formats.archive import FRAME_BYTES, frame_plan, member_bytes

    big = FRAME_BYTES  # one member alone fills a frame
    assert frame_plan([], []) == []
    assert frame_plan([1, 2, 3], [None, None, None]) == [(0, 3)]
    assert frame_plan([1, 2, 3, 4], [None, "a", "a", None]) == [(0, 1), (1, 3), (3, 4)]
    # A frame that has reached FRAME_BYTES ends before the next member, even in one group.
    assert frame_plan([big, 1, big - 2 * member_bytes(1), 1], ["a"] * 4) == [(0, 1), (1, 4)]
    assert frame_plan([big, 1, big - member_bytes(1), 1], ["a"] * 4) == [(0, 1), (1, 3), (3, 4)]
    assert frame_plan([big * 3], ["a"]) == [(0, 1)]  # a large member is never split
    # The same list always gives the same plan, and groups' names only matter by changing.
    assert frame_plan([5, 6], ["x", "y"]) == frame_plan([5, 6], ["p", "q"])


def _frame(members: list[tuple[str, bytes, int]], mtime: int = 7) -> bytes:
    from bundler.formats.archive import ustar_header

    raw = b"".join(
        ustar_header(n, len(d), m, mtime) + d + b"\0" * (-len(d) % 512) for n, d, m in members
    )
    return zstandard.ZstdCompressor(level=3).compress(raw)


def test_check_frame_returns_each_members_digest_and_refuses_any_difference() -> None:
    from bundler.formats.archive import check_frame

    members = [("a/x.py", b"x" * 700, 0o644), ("a/y", b"", 0o755), ("a/z", b"z" * 3, 0o644)]
    want = [(n, len(d), m) for n, d, m in members]
    good = _frame(members)
    assert check_frame(io.BytesIO(good), want, 7) == [
        hashlib.sha256(d).hexdigest() for _, d, _ in members
    ]

    def refused(data: bytes, expect: list[tuple[str, int, int]] = want, mtime: int = 7) -> str:
        with pytest.raises(IntegrityError) as e:
            check_frame(io.BytesIO(data), expect, mtime)
        return e.value.message

    assert "another header" in refused(good, mtime=8)  # headers carry the mtime
    assert "another header" in refused(good, [want[0], ("a/y", 0, 0o644), want[2]])
    assert "more than its members" in refused(good, want[:2])
    assert "ends early" in refused(good, [*want, ("a/w", 1, 0o644)])
    assert "ends early" in refused(good[: len(good) // 2])
    assert "corrupt" in refused(good[:20] + bytes([good[20] ^ 0xFF]) + good[21:])
    # Two valid frames back to back are read across (as every reader does), so a frame
    # followed by more members is refused as holding more than its own.
    assert "more than its members" in refused(good + _frame(members[:1]))
    # Non-zero padding after a member.
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(good)
    bad = bytearray(raw)
    bad[512 + 700] = 1
    assert "non-zero padding" in refused(zstandard.ZstdCompressor().compress(bytes(bad)))


def test_check_frame_reads_a_bomb_in_bounded_pieces() -> None:
    # 1 GiB of zeros compresses to ~32 KiB; the check reads no more than the expected
    # members' bytes plus one piece, so it refuses quickly without inflating it.
    import resource

    from bundler.formats.archive import check_frame, ustar_header

    head = ustar_header("a/x", 10, 0o644, 7)
    cctx = zstandard.ZstdCompressor(level=1)
    chunks = cctx.compressobj()
    parts = [chunks.compress(head + b"\0" * 512)]
    zero = b"\0" * (1 << 20)
    parts += [chunks.compress(zero) for _ in range(1024)]
    parts.append(chunks.flush())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(IntegrityError, match="more than its members"):
        check_frame(io.BytesIO(b"".join(parts)), [("a/x", 10, 0o644)], 7)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024  # KiB
