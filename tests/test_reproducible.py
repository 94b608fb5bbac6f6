"""Same inputs and creation time give the same bytes; standard tools open the result."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard
from conftest import KeyPair, tiny_meta

from bundler.pack.assemble import SourceFile, collect_tree, write_bundle

LONG_PATH = "site-packages/" + "/".join(["pkg" + "x" * 30] * 3) + "/module_with_a_long_name.py"
UNICODE_PATH = "model/mod\u00e8le-\u00e9t\u00e9.bin"


def _make_tree(root: Path, *, reverse: bool, modes: tuple[int, int], mtime: int) -> None:
    """The same content, created in another order with other permissions and times."""
    files: list[tuple[str, bytes, bool]] = [
        (
            "score.py",
            b"def init():\n    pass\n\n\ndef run(raw_data):\n    return raw_data\n",
            False,
        ),
        ("lib/helper.py", b"X = 1\n", False),
        ("lib/tool.sh", b"#!/bin/sh\necho hi\n", True),
        ("lib/data/table.csv", b"a,b\n1,2\n" * 100, False),
        ("\u00e9t\u00e9/notes.txt", b"summer\n", False),
        ("lib/__pycache__/helper.cpython-311.pyc", b"stale bytecode", False),
    ]
    for rel, data, executable in reversed(files) if reverse else files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(modes[0] if executable else modes[1])
        os.utime(path, (mtime, mtime))


def _bundle_from_tree(root: Path, out: Path, key: KeyPair, threads: int = 1) -> bytes:
    files = collect_tree(root, "app")
    write_bundle(out, files, tiny_meta(), key.private, threads=threads)
    return out.read_bytes()


def test_file_order_owners_times_and_modes_do_not_matter(
    tmp_path: Path, publisher: KeyPair
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _make_tree(a, reverse=False, modes=(0o775, 0o664), mtime=1_000_000_000)
    _make_tree(b, reverse=True, modes=(0o700, 0o600), mtime=1_600_000_000)
    first = _bundle_from_tree(a, tmp_path / "a.airgap", publisher)
    second = _bundle_from_tree(b, tmp_path / "b.airgap", publisher)
    assert first == second
    # And __pycache__ was left out of both.
    assert b"__pycache__" not in first


def _big_sources(seed: int) -> list[SourceFile]:
    """About 20 MiB, more than two zstd worker jobs (8 MiB each at level 3)."""
    rng = random.Random(seed)
    text = b"".join(b"weights %d %f\n" % (i, rng.random()) for i in range(200_000))
    return [
        SourceFile("app/score.py", b"def init():\n    pass\n\ndef run(d):\n    return d\n", 0o644),
        SourceFile("model/noise.bin", rng.randbytes(3 * 2**20), 0o644),
        SourceFile("model/weights.txt", text * 3, 0o644),
        SourceFile("runtime/start.sh", b"#!/bin/sh\n", 0o755),
        SourceFile(LONG_PATH, b"# long\n", 0o644),
        SourceFile(UNICODE_PATH, b"\x00" * 1000, 0o644),
    ]


def test_same_bytes_for_any_thread_count(tmp_path: Path, publisher: KeyPair) -> None:
    sources = _big_sources(seed=1)
    assert sum(s.size() for s in sources) > 2 * 8 * 2**20
    digests = {}
    for threads in (1, 2, 4):
        out = tmp_path / f"t{threads}.airgap"
        # Reverse the given order for one run: the writer sorts.
        given = sources if threads != 2 else list(reversed(sources))
        write_bundle(out, given, tiny_meta(), publisher.private, level=3, threads=threads)
        digests[threads] = hashlib.sha256(out.read_bytes()).hexdigest()
    assert len(set(digests.values())) == 1, digests


def test_created_time_is_what_changes_the_bytes(tmp_path: Path, publisher: KeyPair) -> None:
    sources = [SourceFile("app/score.py", b"x", 0o644)]
    one = tmp_path / "one.airgap"
    two = tmp_path / "two.airgap"
    again = tmp_path / "again.airgap"
    write_bundle(one, sources, tiny_meta(created=100), publisher.private, threads=1)
    write_bundle(two, sources, tiny_meta(created=200), publisher.private, threads=1)
    write_bundle(again, sources, tiny_meta(created=100), publisher.private, threads=1)
    assert one.read_bytes() == again.read_bytes()
    assert one.read_bytes() != two.read_bytes()


def test_headers_are_normalised_and_sorted(tmp_path: Path, publisher: KeyPair) -> None:
    out = tmp_path / "b.airgap"
    sources = [
        SourceFile("runtime/start.sh", b"#!/bin/sh\n", 0o755),
        SourceFile("app/Z.py", b"z", 0o644),
        SourceFile("app/a.py", b"a", 0o644),
        SourceFile(UNICODE_PATH, b"u", 0o644),
        SourceFile(LONG_PATH, b"l", 0o644),
    ]
    write_bundle(out, sources, tiny_meta(created=1234), publisher.private, threads=1)
    with tarfile.open(out, mode="r:") as outer:
        for member in outer.getmembers():
            assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")
            assert member.mtime == 1234 and member.mode == 0o644
        payload = outer.extractfile("payload.tar.zst").read()  # type: ignore[union-attr]
    tar = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(payload)).read()
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as inner:
        members = inner.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names, key=lambda n: n.encode("utf-8"))
    assert set(names) == {s.path for s in sources}
    for m in members:
        assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", 1234)
        assert m.isreg() and m.mode in (0o644, 0o755)
        assert not m.pax_headers


# ---- the bundle opens with standard tools -------------------------------------------------


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, check=False
    )


@pytest.fixture
def opened_with_tools(tmp_path: Path, publisher: KeyPair) -> Path:
    """A bundle taken apart with tar and zstd only, as the README's procedure does."""
    bundle = tmp_path / "demo.airgap"
    sources = [
        SourceFile("app/score.py", b"def run(d):\n    return d\n", 0o644),
        SourceFile("runtime/start.sh", b"#!/bin/sh\n", 0o755),
        SourceFile(LONG_PATH, b"# long\n", 0o644),
        SourceFile(UNICODE_PATH, b"\x00" * 1000, 0o644),
        SourceFile("model/empty.bin", b"", 0o644),
    ]
    write_bundle(bundle, sources, tiny_meta(), publisher.private, threads=2)
    work = tmp_path / "work"
    work.mkdir()
    listing = _run("tar", "-tf", bundle)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines() == ["payload.tar.zst", "manifest.json", "manifest.json.sig"]
    done = _run("tar", "-xf", bundle, "-C", work)
    assert done.returncode == 0, done.stderr
    return work


def test_sha256sum_matches_the_signed_manifest(opened_with_tools: Path) -> None:
    manifest = json.loads((opened_with_tools / "manifest.json").read_bytes())
    done = _run("sha256sum", "payload.tar.zst", cwd=opened_with_tools)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == manifest["payload"]["sha256"]
    assert (opened_with_tools / "payload.tar.zst").stat().st_size == manifest["payload"]["size"]


def test_openssl_verifies_the_signature(opened_with_tools: Path, publisher: KeyPair) -> None:
    args = [
        "openssl",
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        str(publisher.pub),
        "-rawin",
        "-in",
        "manifest.json",
        "-sigfile",
        "manifest.json.sig",
    ]
    done = _run(*args, cwd=opened_with_tools)
    assert done.returncode == 0, done.stderr
    assert "Signature Verified Successfully" in done.stdout
    # The same command refuses an edited manifest, so the step above really checks something.
    manifest = opened_with_tools / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"version":"1.0"', b'"version":"1.1"'))
    refused = _run(*args, cwd=opened_with_tools)
    assert refused.returncode != 0
    assert "Signature Verified Successfully" not in refused.stdout


def test_zstd_and_tar_unpack_the_payload_and_sha256sum_checks_every_file(
    opened_with_tools: Path,
) -> None:
    work = opened_with_tools
    manifest = json.loads((work / "manifest.json").read_bytes())
    done = _run("zstd", "-q", "-d", "payload.tar.zst", "-o", "payload.tar", cwd=work)
    assert done.returncode == 0, done.stderr
    (work / "files").mkdir()
    done = _run("tar", "-xf", "payload.tar", "-C", "files", cwd=work)
    assert done.returncode == 0, done.stderr

    checklist = "".join(f"{f['sha256']}  {f['path']}\n" for f in manifest["files"])
    (work / "SHA256SUMS").write_text(checklist, encoding="utf-8")
    done = _run("sha256sum", "--strict", "-c", "../SHA256SUMS", cwd=work / "files")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(": OK") == len(manifest["files"])

    on_disk = sorted(
        p.relative_to(work / "files").as_posix() for p in (work / "files").rglob("*") if p.is_file()
    )
    assert on_disk == sorted(f["path"] for f in manifest["files"])
    assert LONG_PATH in on_disk and UNICODE_PATH in on_disk
    for f in manifest["files"]:
        assert (work / "files" / f["path"]).stat().st_mode & 0o777 == f["mode"]
