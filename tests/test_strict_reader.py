"""The reader enforces every MUST of docs/format.md §2-§7, and its messages are safe to print.

Bundles are crafted byte by byte (tests/craft.py), as an independent implementation written
from the spec would write them, then given to the real reader (``verify`` and ``unpack``, with
the CPython canary pattern: nothing written anywhere) and, for the messages and the
non-regular files, to the real CLI (in-process, and as a subprocess under ``unshare -n`` with
a timeout, so a hang fails the test instead of stalling it).

Each header rule is tried twice: on a payload member (app/score.py, read after the signature,
manifest and payload hash verified) and on the outer payload.tar.zst header (read before
anything is trusted; its mtime only once the manifest verified).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import craft
import pytest
from conftest import NOW, GoodUnpack, KeyPair, Victim, require_netns
from craft import BLOCK, CREATED, DEFAULT_FILES, F

from bundler.cli import main
from bundler.errors import (
    EXIT_ERROR,
    EXIT_REJECTED,
    BundleError,
    BundleRejected,
    IntegrityError,
    TrustError,
    UnsafeMemberError,
    escape,
)
from bundler.formats.archive import MAX_TAIL
from bundler.inspecting import read_manifest_unverified
from bundler.verify.unpack import open_verified, unpack, verify

SCORE = DEFAULT_FILES[0]
REST = DEFAULT_FILES[1:]

# ==== header rules (§2), each on a payload member and on the outer payload header ==========

Member = Callable[[str, bytes], bytes]  # (name, data) -> header + data + padding


def fields(**kw: Any) -> Member:
    """A member whose header has these craft.header fields."""
    return lambda name, data: craft.member(name, data, **kw)


def at(offset: int, value: bytes, checksum: str = "unsigned") -> Member:
    """A well-formed member with ``value`` written into its header at ``offset``."""
    return lambda name, data: craft.patched(
        craft.member(name, data), offset, value, checksum=checksum
    )


def size_field(field: bytes) -> Member:
    return lambda name, data: craft.member(name, data, size_field=field)


@dataclass(frozen=True)
class HeaderCase:
    id: str
    make: Member
    error: type[BundleRejected]
    text: str


HEADER_CASES = [
    # owners and owner names
    HeaderCase("uid-1000", fields(uid=1000), UnsafeMemberError, "owner uid 1000, gid 0;"),
    HeaderCase("gid-1", fields(gid=1), UnsafeMemberError, "owner uid 0, gid 1; both must be 0"),
    HeaderCase("uname-root", at(265, b"root"), UnsafeMemberError, "uname and gname must be empty"),
    HeaderCase("gname-wheel", at(297, b"wheel"), UnsafeMemberError, "b'', b'wheel'"),
    # times: the manifest's created, nothing else
    HeaderCase(
        "mtime-created-plus-1",
        fields(mtime=CREATED + 1),
        UnsafeMemberError,
        f"mtime {CREATED + 1} is not the manifest's created time {CREATED}",
    ),
    HeaderCase(
        "mtime-zero", fields(mtime=0), UnsafeMemberError, "mtime 0 is not the manifest's created"
    ),
    # type: '0' only
    HeaderCase("typeflag-nul", fields(typeflag=b"\x00"), UnsafeMemberError, "typeflag NUL); only"),
    # device numbers
    HeaderCase("devmajor-1", fields(devmajor=1), UnsafeMemberError, "device numbers 1,0"),
    HeaderCase("devminor-3", fields(devminor=3), UnsafeMemberError, "device numbers 0,3"),
    # magic and version
    HeaderCase("magic-gnu", fields(magic=craft.GNU), UnsafeMemberError, "b'ustar  \\x00'"),
    HeaderCase("magic-v7", fields(magic=craft.V7), UnsafeMemberError, "not a POSIX ustar header"),
    HeaderCase("version-01", fields(magic=b"ustar\x0001"), UnsafeMemberError, "not a POSIX ustar"),
    HeaderCase(
        "version-spaces", fields(magic=b"ustar\x00  "), UnsafeMemberError, "not a POSIX ustar"
    ),
    # mode: 0644 or 0755, nothing else (no file-type bits either)
    HeaderCase("mode-600", fields(mode=0o600), UnsafeMemberError, "mode 600 is not 644 or 755"),
    HeaderCase("mode-777", fields(mode=0o777), UnsafeMemberError, "mode 777 is not 644 or 755"),
    HeaderCase(
        "mode-type-bits", fields(mode=0o100644), UnsafeMemberError, "mode 100644 is not 644"
    ),
    HeaderCase("mode-setgid", fields(mode=0o2755), UnsafeMemberError, "setuid, setgid or sticky"),
    # size encodings
    HeaderCase(
        "size-base256-small",
        lambda name, data: craft.member(
            name, data, size_field=b"\x80" + len(data).to_bytes(11, "big")
        ),
        UnsafeMemberError,
        "sizes under 8 GiB must be octal",
    ),
    HeaderCase(
        "size-base256-negative",
        size_field(b"\xff" * 12),
        UnsafeMemberError,
        "base-256 form other than GNU's",
    ),
    HeaderCase(
        "size-leading-space",
        lambda name, data: craft.member(name, data, size_field=b" %010o\x00" % len(data)),
        IntegrityError,
        "malformed size field",
    ),
    HeaderCase(
        "size-no-terminator",
        lambda name, data: craft.member(name, data, size_field=b"%012o" % len(data)),
        IntegrityError,
        "malformed size field",
    ),
    HeaderCase("size-empty", size_field(b"\x00" * 12), IntegrityError, "malformed size field"),
    HeaderCase(
        "size-plus-sign",
        lambda name, data: craft.member(name, data, size_field=b"+%010o\x00" % len(data)),
        IntegrityError,
        "malformed size field",
    ),
    HeaderCase("uid-decimal-9", at(108, b"0000009\x00"), IntegrityError, "malformed uid field"),
    HeaderCase("mode-empty", at(100, b"\x00" * 8), IntegrityError, "malformed mode field"),
    # checksum: POSIX's unsigned sum only
    HeaderCase(
        "checksum-signed",
        at(500, b"\xe9", checksum="signed"),  # one high byte makes the two sums differ
        IntegrityError,
        "a signed-byte sum, as some old tars wrote",
    ),
    HeaderCase(
        "checksum-off-by-one",
        fields(checksum_delta=1),
        IntegrityError,
        "tar header checksum mismatch",
    ),
    HeaderCase("checksum-empty", at(148, b"\x00" * 8, "keep"), IntegrityError, "checksum mismatch"),
    # link name, hidden bytes
    HeaderCase(
        "linkname", fields(linkname="app/other.py"), UnsafeMemberError, "link name b'app/other"
    ),
    HeaderCase(
        "name-junk-after-nul",
        lambda name, data: craft.patched(craft.member(name, data), len(name), b"\x00../../evil"),
        UnsafeMemberError,
        "bytes after the NUL that ends the name",
    ),
    HeaderCase(
        "prefix-junk-after-nul",
        at(345, b"\x00evil"),
        UnsafeMemberError,
        "bytes after the NUL that ends the name or prefix",
    ),
    HeaderCase(
        "header-tail", at(500, b"x"), UnsafeMemberError, "non-zero bytes in the header's unused"
    ),
]


@dataclass
class Scene:
    publisher: KeyPair
    victim: Victim
    tmp: Path
    count: int = 0

    def write(self, data: bytes) -> Path:
        self.count += 1
        path = self.tmp / f"strict-{self.count}.airgap"
        path.write_bytes(data)
        return path

    def bundle(self, **options: Any) -> Path:
        return self.write(craft.craft(self.publisher.private, **options).bundle)

    def outer_payload_header(self, make: Member) -> Path:
        """A bundle whose outer payload.tar.zst member is ``make``'s (manifest, signature
        and payload otherwise good)."""
        parts = craft.craft(self.publisher.private)
        return self.write(
            craft.tar(
                [
                    make("payload.tar.zst", parts.payload),
                    craft.member("manifest.json", parts.manifest_bytes),
                    craft.member("manifest.json.sig", parts.signature),
                ]
            )
        )

    def refused(self, bundle: Path, error: type[BundleRejected], member: str, text: str) -> str:
        """Refused by verify and by unpack (nothing written); the one-line diagnostics."""
        before = self.victim.snapshot()
        messages = []
        for run in (
            lambda: verify(bundle, [self.publisher.pub], now=NOW),
            lambda: unpack(bundle, self.victim.dest, [self.publisher.pub], now=NOW),
        ):
            with pytest.raises(BundleRejected) as info:
                run()
            exc = info.value
            assert type(exc) is error, f"{type(exc).__name__}: {exc}"
            assert exc.exit_code == EXIT_REJECTED
            assert exc.member == member
            assert str(exc).startswith(f"{error.check}: {member}: "), str(exc)
            assert text in str(exc), str(exc)
            messages.append(exc.diagnostics())
            assert self.victim.snapshot() == before
        assert messages[0] == messages[1]
        return messages[0]


@pytest.fixture
def scene(publisher: KeyPair, victim: Victim, tmp_path: Path) -> Scene:
    return Scene(publisher, victim, tmp_path)


@pytest.mark.parametrize("c", HEADER_CASES, ids=[c.id for c in HEADER_CASES])
def test_payload_header_rule(c: HeaderCase, scene: Scene) -> None:
    bundle = scene.bundle(payload_members=[c.make(SCORE.path, SCORE.data), *craft.members_of(REST)])
    # Signature, manifest and payload digest are good: the header rule itself refuses.
    assert open_verified(bundle, [scene.publisher.pub], now=NOW).manifest.name == "demo"
    scene.refused(bundle, c.error, SCORE.path, c.text)


@pytest.mark.parametrize("c", HEADER_CASES, ids=[c.id for c in HEADER_CASES])
def test_outer_header_rule(c: HeaderCase, scene: Scene) -> None:
    scene.refused(scene.outer_payload_header(c.make), c.error, "payload.tar.zst", c.text)


@pytest.mark.parametrize("index", [1, 2])
def test_outer_mtime_of_manifest_and_signature_members(index: int, scene: Scene) -> None:
    parts = craft.craft(scene.publisher.private)
    members = [
        ("payload.tar.zst", parts.payload),
        ("manifest.json", parts.manifest_bytes),
        ("manifest.json.sig", parts.signature),
    ]
    blob = craft.tar(
        [
            craft.member(name, data, mtime=CREATED - 7 if i == index else CREATED)
            for i, (name, data) in enumerate(members)
        ]
    )
    bundle = scene.write(blob)
    text = f"mtime {CREATED - 7} is not the manifest's created time {CREATED}"
    scene.refused(bundle, UnsafeMemberError, members[index][0], text)
    # inspect reads the manifest unverified, but holds the headers to the same rule
    with pytest.raises(UnsafeMemberError, match=text):
        read_manifest_unverified(bundle)


def test_octal_variants_are_accepted(scene: Scene) -> None:
    """What §2 allows, as other tar writers emit it: no leading zeros, space terminators
    (bsdtar), NUL then spaces, empty device fields, a name filling its whole field."""

    def libarchive_style(f: F) -> bytes:
        name, data = f.path, f.data
        m = craft.member(name, data)
        for offset, value in (
            (100, b"%o \x00   " % f.mode),  # mode: no leading zeros, space then NUL, spaces
            (108, b"000000 \x00"),  # uid, gid as bsdtar writes them
            (116, b"0 \x00\x00\x00\x00\x00\x00"),
            (124, b"%011o " % len(data)),  # size ended by a space
            (136, b"%o " % CREATED),  # mtime: 11 digits and a space, no NUL
            (329, b"\x00" * 16),  # device numbers empty
        ):
            m = craft.patched(m, offset, value)
        return m

    long_name = "app/" + "n" * 96  # exactly 100 bytes: the name field has no NUL
    files = [*DEFAULT_FILES[:1], F(long_name, b"long"), *REST]
    payload = [libarchive_style(f) for f in files]
    canonical = craft.members_of(files)
    assert all(a[:BLOCK] != b[:BLOCK] for a, b in zip(payload, canonical, strict=True))
    assert payload[0][100:108] == b"644 \x00   " and payload[0][136:148] == b"%o " % CREATED
    bundle = scene.bundle(files=files, payload_members=payload)
    assert verify(bundle, [scene.publisher.pub], now=NOW).manifest.name == "demo"
    unpack(bundle, scene.victim.dest, [scene.publisher.pub], now=NOW)
    assert (scene.victim.dest / long_name).read_bytes() == b"long"


def test_a_bundle_written_with_pythons_tarfile_is_accepted(scene: Scene) -> None:
    """An independent writer (CPython's tarfile, ustar format) following §2 is read."""

    def ustar(members: list[tuple[str, bytes, int]]) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as t:
            for name, data, mode in members:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), mode, CREATED
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                t.addfile(info, io.BytesIO(data))
        return out.getvalue()

    # tarfile pads to a 10 KiB record; §4 wants nothing after the payload's end marker, so
    # the payload is cut there (the outer archive keeps its record padding, which §2 allows).
    payload_tar = ustar([(f.path, f.data, f.mode) for f in DEFAULT_FILES])
    end = len(b"".join(craft.members_of(DEFAULT_FILES))) + 2 * BLOCK
    assert payload_tar[end:] == bytes(len(payload_tar) - end)
    payload = craft.zstd(payload_tar[:end])
    manifest = craft.manifest_dict(DEFAULT_FILES, payload, signer=scene.publisher.key_id)
    manifest_bytes = craft.dumps(manifest)
    signature = scene.publisher.private.sign(manifest_bytes)
    blob = ustar(
        [
            ("payload.tar.zst", payload, 0o644),
            ("manifest.json", manifest_bytes, 0o644),
            ("manifest.json.sig", signature, 0o644),
        ]
    )
    assert len(blob) % 10240 == 0  # with tarfile's record padding
    bundle = scene.write(blob)
    assert verify(bundle, [scene.publisher.pub], now=NOW).manifest.name == "demo"
    unpack(bundle, scene.victim.dest, [scene.publisher.pub], now=NOW)
    assert (scene.victim.dest / SCORE.path).read_bytes() == SCORE.data


# ==== padding, trailing bytes, order (§2, §4) =============================================


def test_outer_padding_must_be_zero(scene: Scene) -> None:
    parts = craft.craft(scene.publisher.private)
    manifest = craft.member("manifest.json", parts.manifest_bytes)
    end = BLOCK + len(parts.manifest_bytes)
    manifest = manifest[:end] + b"#" + manifest[end + 1 :]
    blob = craft.tar(
        [
            craft.member("payload.tar.zst", parts.payload),
            manifest,
            craft.member("manifest.json.sig", parts.signature),
        ]
    )
    scene.refused(
        scene.write(blob), IntegrityError, "manifest.json", "non-zero padding after member data"
    )


def test_outer_tail_must_be_whole_zero_blocks(scene: Scene) -> None:
    good = craft.craft(scene.publisher.private).bundle
    scene.refused(
        scene.write(good + bytes(100)), IntegrityError, "bundle", "not whole 512-byte blocks"
    )


def test_outer_tail_is_bounded(scene: Scene) -> None:
    good = craft.craft(scene.publisher.private).bundle
    path = scene.write(good)
    with path.open("r+b") as f:  # sparse: a terabyte of "padding" would read as fast
        f.truncate(len(good) + MAX_TAIL)
    scene.refused(path, IntegrityError, "bundle", f"over the {MAX_TAIL} bytes an end marker")


def test_outer_record_padding_is_accepted(scene: Scene) -> None:
    good = craft.craft(scene.publisher.private).bundle
    padded = good + bytes(-len(good) % 10240)  # GNU tar's 10 KiB record
    path = scene.write(padded)
    assert verify(path, [scene.publisher.pub], now=NOW).manifest.name == "demo"
    path.write_bytes(good + bytes(MAX_TAIL - 2 * BLOCK))  # the largest tail allowed
    assert verify(path, [scene.publisher.pub], now=NOW).manifest.name == "demo"


def test_payload_order_must_be_the_manifests(scene: Scene) -> None:
    members = craft.members_of(DEFAULT_FILES)
    swapped = [members[1], members[0], *members[2:]]
    bundle = scene.bundle(payload_members=swapped)
    assert open_verified(bundle, [scene.publisher.pub], now=NOW).manifest.name == "demo"
    scene.refused(
        bundle,
        IntegrityError,
        DEFAULT_FILES[1].path,
        f"out of order: the manifest lists {SCORE.path!r} next",
    )


def test_a_member_skipped_in_the_middle_is_named(scene: Scene) -> None:
    members = craft.members_of(DEFAULT_FILES)
    bundle = scene.bundle(payload_members=[members[0], *members[2:]])
    scene.refused(
        bundle,
        IntegrityError,
        DEFAULT_FILES[2].path,
        f"the manifest lists {DEFAULT_FILES[1].path!r} next",
    )


# ==== zstd frames (§5): what a reader accepts =============================================


def _skippable(payload: bytes = b"ignored") -> bytes:
    return (0x184D2A50).to_bytes(4, "little") + len(payload).to_bytes(4, "little") + payload


def _frame(data: bytes, *, checksum: bool = True, content_size: bool = False) -> bytes:
    import zstandard

    params = zstandard.ZstdCompressionParameters.from_level(
        3, write_checksum=checksum, write_content_size=content_size
    )
    return zstandard.ZstdCompressor(compression_params=params).compress(data)


ZSTD_ACCEPTED: dict[str, Callable[[bytes], bytes]] = {
    "no-checksum": lambda t: _frame(t, checksum=False),
    "content-size": lambda t: _frame(t, content_size=True),
    "two-frames": lambda t: _frame(t[:BLOCK]) + _frame(t[BLOCK:]),
    "skippable-first": lambda t: _skippable() + _frame(t),
    "skippable-between": lambda t: _frame(t[:BLOCK]) + _skippable() + _frame(t[BLOCK:]),
    "skippable-last": lambda t: _frame(t) + _skippable(),
}


@pytest.mark.parametrize("variant", ZSTD_ACCEPTED)
def test_zstd_frame_variants_are_accepted(variant: str, scene: Scene) -> None:
    # The payload digest is signed and checked first, so these frame properties add or take
    # away nothing; §5 says a reader accepts them, as `zstd -d` does.
    bundle = scene.bundle(compress=ZSTD_ACCEPTED[variant])
    assert verify(bundle, [scene.publisher.pub], now=NOW).manifest.name == "demo"
    unpack(bundle, scene.victim.dest, [scene.publisher.pub], now=NOW)
    assert (scene.victim.dest / SCORE.path).read_bytes() == SCORE.data


def test_zstd_dictionary_frame_is_refused(scene: Scene) -> None:
    import zstandard

    samples = [bytes([i]) * 64 + b"sample %d" % i for i in range(200)]
    dictionary = zstandard.train_dictionary(2048, samples)
    bundle = scene.bundle(
        compress=lambda t: zstandard.ZstdCompressor(dict_data=dictionary).compress(t)
    )
    scene.refused(bundle, IntegrityError, "payload.tar.zst", "zstd stream is corrupt")


def test_zstd_trailing_garbage_is_refused(scene: Scene) -> None:
    bundle = scene.bundle(compress=lambda t: _frame(t) + b"garbage!")
    scene.refused(bundle, IntegrityError, "payload.tar.zst", "zstd stream is corrupt")


# ==== path characters (§3): C0, DEL, C1, line separators, bidi controls ==================

BAD_CHARACTERS = {
    "nel-c1": "\u0085",
    "csi-c1": "\u009b",
    "del": "\x7f",
    "line-separator": "\u2028",
    "paragraph-separator": "\u2029",
    "rlo-bidi-override": "\u202e",
    "rli-bidi-isolate": "\u2067",
    "pdi": "\u2069",
    "rlm": "\u200f",
    "alm": "\u061c",
}


@pytest.mark.parametrize("char", BAD_CHARACTERS.values(), ids=list(BAD_CHARACTERS))
def test_listed_path_with_control_or_bidi_character(char: str, scene: Scene) -> None:
    name = f"app/x{char}y.py"
    bundle = scene.bundle(files=[*DEFAULT_FILES, F(name, b"x")])
    shown = f"app/x{escape(char)}y.py"
    assert "\\" in shown  # the escaped form, never the raw character
    line = scene.refused(bundle, UnsafeMemberError, shown, f"(U+{ord(char):04X})")
    assert char not in line


@pytest.mark.parametrize("char", BAD_CHARACTERS.values(), ids=list(BAD_CHARACTERS))
def test_smuggled_member_with_control_or_bidi_character(char: str, scene: Scene) -> None:
    name = f"app/x{char}y.py"
    bundle = scene.bundle(payload_members=[*craft.members_of(DEFAULT_FILES), craft.member(name)])
    scene.refused(bundle, UnsafeMemberError, f"app/x{escape(char)}y.py", "character in name")


def test_pack_refuses_the_same_names(make_bundle: Callable[..., Path]) -> None:
    # Writer and reader share the rule (formats/manifest.py check_member_name).
    with pytest.raises(UnsafeMemberError, match=r"U\+202E"):
        make_bundle(files={**{f.path: (f.data, f.mode) for f in DEFAULT_FILES}, "app/\u202e": b""})


def test_printable_unicode_names_are_still_fine(scene: Scene) -> None:
    files = [*DEFAULT_FILES, F("model/\u05e9\u05dc\u05d5\u05dd-\u00e9t\u00e9.bin", b"hebrew")]
    bundle = scene.bundle(files=sorted(files, key=lambda f: f.path.encode()))
    assert verify(bundle, [scene.publisher.pub], now=NOW).manifest.payload.file_count == 5


# ==== escape(): the one function =========================================================


def test_escape() -> None:
    assert escape("app/score.py") == "app/score.py"
    assert escape("a\r\nb\x07\x1b[2J") == "a\\x0d\\x0ab\\x07\\x1b[2J"
    assert escape("\x85\u2028\u202e\u2066\udcff\U000e0001") == (
        "\\x85\\u2028\\u202e\\u2066\\udcff\\U000e0001"
    )
    assert escape("caf\u00e9 \u05e9") == "caf\u00e9 \u05e9"  # printable stays readable
    weird = "x\n\x1b\u202ey"
    assert escape(escape(weird)) == escape(weird)  # idempotent: safe to apply twice
    assert escape("log\nline", keep_newlines=True) == "log\nline"


# ==== messages through the CLI: one line, no raw control bytes, the escaped form ==========

RAW_CONTROLS = [chr(c) for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)] if c != 0x0A]
HOSTILE = "x\r\nOK: demo 1.0, 4 files\x07\x1b]0;pwned\x07\u202e"
HOSTILE_SHOWN = "x\\x0d\\x0aOK: demo 1.0, 4 files\\x07\\x1b]0;pwned\\x07\\u202e"


def _assert_clean(text: str, lines: int) -> None:
    assert text.count("\n") == lines, repr(text)
    assert text.endswith("\n")
    assert not any(c in text for c in RAW_CONTROLS), repr(text)
    assert "\u202e" not in text and "\u2028" not in text


def _cli(*args: str | Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_member_name_in_a_rejection_is_escaped(
    scene: Scene, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"app/{HOSTILE}"
    bundle = scene.bundle(payload_members=[*craft.members_of(DEFAULT_FILES), craft.member(name)])
    trust = ("--trust", scene.publisher.pub)
    for args in (("verify", bundle, *trust), ("unpack", bundle, scene.victim.dest, *trust, "-q")):
        code, out, err = _cli(*args, capsys=capsys)
        assert code == EXIT_REJECTED and out == ""
        _assert_clean(err, 1)
        assert err.startswith(f"bundle rejected: unsafe member: app/{HOSTILE_SHOWN}: control")
    code, out, _ = _cli("verify", bundle, *trust, "--json", capsys=capsys)
    assert json.loads(out)["error"].startswith(
        f"bundle rejected: unsafe member: app/{HOSTILE_SHOWN}"
    )


def test_outer_member_name_in_a_rejection_is_escaped(
    scene: Scene, capsys: pytest.CaptureFixture[str]
) -> None:
    parts = craft.craft(scene.publisher.private)
    blob = craft.tar(
        [
            craft.member(HOSTILE, b"x"),
            craft.member("payload.tar.zst", parts.payload),
            craft.member("manifest.json", parts.manifest_bytes),
            craft.member("manifest.json.sig", parts.signature),
        ]
    )
    bundle = scene.write(blob)
    for command in ("verify", "inspect"):
        extra = ("--trust", scene.publisher.pub) if command == "verify" else ()
        code, out, err = _cli(command, bundle, *extra, capsys=capsys)
        assert code == EXIT_REJECTED and out == ""
        _assert_clean(err, 1)
        assert f"integrity: {HOSTILE_SHOWN}: unexpected member" in err


def test_claimed_signer_in_a_rejection_is_escaped(
    scene: Scene, attacker: KeyPair, capsys: pytest.CaptureFixture[str]
) -> None:
    # Signed by a key nobody trusts; the manifest's signer field is the attacker's text.
    bundle = scene.write(
        craft.craft(attacker.private, edit_manifest=lambda m: m.update(signer=HOSTILE)).bundle
    )
    code, out, err = _cli("verify", bundle, "--trust", scene.publisher.pub, capsys=capsys)
    assert code == EXIT_REJECTED and out == ""
    _assert_clean(err, 1)
    assert f"signed by key {escape(HOSTILE[:16])}..., which is not trusted" in err


def test_name_and_version_are_escaped_on_success(
    scene: Scene, capsys: pytest.CaptureFixture[str]
) -> None:
    # A trusted publisher's manifest with a hostile name and version still prints one line.
    bundle = scene.bundle(name=f"demo{HOSTILE}", version=f"1.0{HOSTILE}")
    trust = ("--trust", scene.publisher.pub)
    code, out, err = _cli("verify", bundle, *trust, "-q", capsys=capsys)
    assert code == 0
    _assert_clean(out, 1)
    assert out.startswith(f"OK: demo{HOSTILE_SHOWN} 1.0{HOSTILE_SHOWN}, 4 files, signed by ")

    code, out, err = _cli(
        "unpack", bundle, scene.victim.dest, *trust, "-q", "--no-host-check", capsys=capsys
    )
    assert code == 0, err
    _assert_clean(out, 1)
    assert out.startswith(f"unpacked demo{HOSTILE_SHOWN} 1.0{HOSTILE_SHOWN} into ")

    code, out, err = _cli("inspect", bundle, capsys=capsys)
    assert code == 0
    assert not any(c in out for c in RAW_CONTROLS) and "\u202e" not in out
    assert f"name:      demo{HOSTILE_SHOWN}\n" in out
    assert f"version:   1.0{HOSTILE_SHOWN}\n" in out

    # JSON keeps the real value: JSON's own escaping makes it safe.
    code, out, err = _cli("inspect", bundle, "--json", capsys=capsys)
    assert json.loads(out)["name"] == f"demo{HOSTILE}"
    assert "\r" not in out and "\x1b" not in out


def test_dest_path_in_a_message_is_escaped(
    scene: Scene, good_unpack: GoodUnpack, capsys: pytest.CaptureFixture[str]
) -> None:
    # A DEST whose stored manifest is broken: the error names the path from DEST, escaped.
    dest = scene.victim.outer / "de\x1b[31mst\nx"
    good_unpack.copy_to(dest)
    (dest / ".airgap" / "manifest.json").write_bytes(b"{not json")
    code, out, err = _cli(
        "unpack", good_unpack.bundle, dest, "--trust", scene.publisher.pub, "-q", capsys=capsys
    )
    assert code == EXIT_ERROR and out == ""
    _assert_clean(err, 1)
    assert "de\\x1b[31mst\\x0ax/.airgap/manifest.json is not a valid manifest" in err


# ==== non-regular files as BUNDLE, --trust key, DEST state: refused at once ==============


def _airgap(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI in a fresh process with no network; a hang fails by the timeout."""
    require_netns()
    cmd = [sys.executable, "-m", "bundler", *map(str, args)]
    cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=cwd)


@pytest.fixture
def specials(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """A FIFO with no writer, two devices, a directory and a listening UNIX socket."""
    fifo = tmp_path / "bundle.fifo"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.airgap"
    folder.mkdir()
    sock_path = tmp_path / "bundle.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(sock_path))
    sock.listen(1)
    try:
        yield {
            "fifo": fifo,
            "dev-zero": Path("/dev/zero"),
            "dev-null": Path("/dev/null"),
            "directory": folder,
            "socket": sock_path,
        }
    finally:
        sock.close()


def within(seconds: float, fn: Callable[[], Any]) -> Any:
    """``fn()``, run in a daemon thread: a call that blocks (a FIFO opened for reading) fails
    the test after ``seconds`` instead of hanging the whole run."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(("ok", fn()))
        except BaseException as e:  # handed back to the test below
            outcome.append(("raised", e))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"blocked for {seconds} s"
    kind, value = outcome[0]
    if kind == "raised":
        raise value
    return value


KIND_WORDS = {
    "fifo": "a FIFO",
    "dev-zero": "a character device",
    "dev-null": "a character device",
    "directory": "a directory",
    "socket": "a socket",
}


@pytest.mark.netns
@pytest.mark.parametrize("kind", list(KIND_WORDS))
@pytest.mark.parametrize("command", ["verify", "unpack", "inspect"])
def test_non_regular_bundle_is_refused_at_once(
    command: str, kind: str, specials: dict[str, Path], publisher: KeyPair, tmp_path: Path
) -> None:
    bundle = specials[kind]
    args: list[str | Path] = [command, bundle]
    if command == "unpack":
        args.append(tmp_path / "dest")
    if command != "inspect":
        args += ["--trust", publisher.pub]
    result = _airgap(*args)
    assert result.returncode == EXIT_ERROR, result
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(
        f"error: bundle {bundle} is not a regular file ({KIND_WORDS[kind]}"
    )
    assert "save the bundle to a file first" in result.stderr
    assert not (tmp_path / "dest").exists()


def test_non_regular_bundle_through_the_library(specials: dict[str, Path]) -> None:
    for kind, path in specials.items():
        with pytest.raises(BundleError, match=r"is not a regular file \(") as info:
            within(10, lambda p=path: verify(p, []))
        assert not isinstance(info.value, BundleRejected), kind
        assert KIND_WORDS[kind] in str(info.value)


@pytest.mark.netns
@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_non_regular_trust_key_is_refused_at_once(
    kind: str, specials: dict[str, Path], good_unpack: GoodUnpack
) -> None:
    key = specials[kind]
    result = _airgap("verify", good_unpack.bundle, "--trust", key)
    assert result.returncode == EXIT_REJECTED, result
    assert result.stderr == (
        f"bundle rejected: trust: {key}: the key file is not a regular file ({KIND_WORDS[kind]})\n"
    )


def test_fifo_in_a_trusted_folder_is_skipped_not_read(
    tmp_path: Path, publisher: KeyPair, good_unpack: GoodUnpack
) -> None:
    folder = tmp_path / "trusted"
    folder.mkdir()
    (folder / "publisher.pub").write_bytes(publisher.pub.read_bytes())
    os.mkfifo(folder / "planted.pub")
    verified = within(10, lambda: verify(good_unpack.bundle, [folder], now=NOW))
    assert verified.manifest.name == "demo"


def test_fifo_as_trust_key_through_the_library(tmp_path: Path, good_unpack: GoodUnpack) -> None:
    fifo = tmp_path / "key.pub"
    os.mkfifo(fifo)
    with pytest.raises(TrustError, match=r"the key file is not a regular file \(a FIFO"):
        within(10, lambda: verify(good_unpack.bundle, [fifo], now=NOW))


@pytest.mark.netns
@pytest.mark.parametrize("state", ["manifest.json", "manifest.json.sig", "signer.pub"])
def test_fifo_as_dest_state_file_is_refused_at_once(
    state: str, tmp_path: Path, publisher: KeyPair, good_unpack: GoodUnpack
) -> None:
    dest = tmp_path / "dest"
    good_unpack.copy_to(dest)
    (dest / ".airgap" / state).unlink()
    os.mkfifo(dest / ".airgap" / state)
    if state == "manifest.json":  # unpack reads the installed manifest (rollback check)
        result = _airgap("unpack", good_unpack.bundle, dest, "--trust", publisher.pub, "-q")
        assert result.returncode == EXIT_ERROR, result
        assert result.stderr.count("\n") == 1
        assert f"{dest}/.airgap/manifest.json is not a regular file (a FIFO" in result.stderr
    # doctor re-checks DEST's stored manifest and signature (verify/tree.py)
    result = _airgap("doctor", dest, "--json")
    assert "is not a regular file (a FIFO" in result.stdout, result


@pytest.mark.netns
def test_fifo_as_auth_key_file_is_refused_at_once(tmp_path: Path, good_unpack: GoodUnpack) -> None:
    fifo = tmp_path / "keys"
    os.mkfifo(fifo, 0o600)
    result = _airgap("serve", good_unpack.dest, "--auth-key-file", fifo, "--port", "5999")
    assert result.returncode == 2, result
    assert "not a regular file" in result.stderr
    result = _airgap(
        "smoke", good_unpack.dest, "--url", "http://127.0.0.1:9", "--auth-key-file", fifo
    )
    assert result.returncode in (1, 2), result
    assert "not a regular file" in result.stderr or "carries no smoke test" in result.stderr


def test_fifo_as_project_file_is_refused_at_once(tmp_path: Path, publisher: KeyPair) -> None:
    fifo = tmp_path / "bundle.toml"
    os.mkfifo(fifo)
    out = tmp_path / "x.airgap"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bundler",
            "pack",
            str(fifo),
            "-o",
            str(out),
            "--key",
            str(publisher.key),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])),
    )
    assert result.returncode != 0, result
    assert "is not a regular file (a FIFO" in result.stderr, result.stderr


def test_fifo_as_tls_file_is_refused_before_openssl_opens_it(tmp_path: Path) -> None:
    from bundler.runtime.config import ConfigError
    from bundler.runtime.tls import server_context

    fifo = tmp_path / "cert.pem"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="is not a regular file"):
        within(10, lambda: server_context(fifo, fifo))


@pytest.mark.netns
def test_doctor_names_a_fifo_bundle_at_once(specials: dict[str, Path]) -> None:
    result = _airgap("doctor", specials["fifo"], "--json")
    report = json.loads(result.stdout)
    check = next(c for c in report["checks"] if c["name"] == "manifest")
    assert report["kind"] == "bundle" and check["status"] == "fail"
    assert "is not a regular file (a FIFO" in check["detail"]


def test_fifo_as_the_venv_marker_means_remake_not_hang(tmp_path: Path) -> None:
    from bundler.deploy import local

    venv = tmp_path / "venv"
    venv.mkdir()
    os.mkfifo(venv / local.VENV_MARKER)
    assert within(10, lambda: local._venv_usable(venv, {"python": "3.11"})) is False
