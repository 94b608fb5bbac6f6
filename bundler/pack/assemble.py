"""Assemble payload files into a signed bundle: sorted, normalised, streamed, atomic."""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NoReturn, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..errors import BundleError, IntegrityError, ProjectError
from ..formats.archive import (
    BundleWriter,
    MemberSource,
    frame_params,
    frame_plan,
    member_bytes,
)
from ..formats.manifest import (
    BaseImage,
    FileEntry,
    Manifest,
    Package,
    PayloadInfo,
    Target,
    check_member_name,
    check_name_set,
)
from ..formats.signing import key_id, sign
from ..formats.smoke import SmokeSpec
from ..layout import PackageMode
from ..progress import NullProgress, Progress


@dataclass(frozen=True)
class SourceFile:
    """One payload file: where it goes in the payload, and where its bytes come from."""

    path: str
    source: Path | bytes
    mode: int  # already normalised to 0o644 or 0o755
    # Files of one group share zstd frames (a new frame starts where the group changes), so
    # a later pack can reuse the group's compressed frames (see FrameReuse).
    group: str | None = None
    # The size a listing just saw (no second stat); a file whose bytes are read must still
    # have it (the writer checks), and a reused frame is checked member by member.
    known_size: int | None = None

    def open(self) -> BinaryIO:
        if isinstance(self.source, bytes):
            return io.BytesIO(self.source)
        return self.source.open("rb", buffering=0)  # raw reads: one syscall per piece

    def size(self) -> int:
        if isinstance(self.source, bytes):
            return len(self.source)
        if self.known_size is not None:
            return self.known_size
        return self.source.stat().st_size


@dataclass(frozen=True)
class CachedFrame:
    """A reusable frame: the file with its compressed bytes, what each member's sha256 must
    be (the cache's own record), and the check of that file (:func:`check_frame_file`,
    started early on another thread): the sha256 of its bytes and its members' digests."""

    path: Path
    sha256: tuple[str, ...]
    check: Future[tuple[str, list[str]]]


class FrameReuse(Protocol):
    """Where write_bundle may take already-compressed frames from, and tells what it wrote.

    A frame is named by its group, the compression parameters (:func:`frame_params`: level,
    mtime, zstd version) and its exact member names. A reused frame is never trusted: its
    file is decompressed and every member's header and sha256 checked (on other threads,
    while the rest is written), and the bytes copied into the bundle must have the sha256
    of the bytes checked, before anything is signed.
    """

    def lookup(
        self, group: str, params: str, names: tuple[str, ...], mtime: int
    ) -> CachedFrame | None:
        """This frame's file, its members' recorded digests and its check (for headers of
        ``mtime``), or None to compress it."""

    def rejected(self, group: str, error: IntegrityError) -> NoReturn:
        """A reused frame failed its check: raise the error to report."""

    def written(
        self, group: str, params: str, names: tuple[str, ...], offset: int, size: int
    ) -> None:
        """A frame of ``group`` was compressed at ``offset`` (``size`` bytes) of the output."""


@dataclass(frozen=True)
class BundleMeta:
    """What the manifest says besides the file list and the payload digest."""

    name: str
    version: str
    created: int
    target: Target
    entry_script: str
    mode: PackageMode
    env: Mapping[str, str] = field(default_factory=dict)
    packages: tuple[Package, ...] = ()
    base_image: BaseImage | None = None
    expires: int | None = None
    smoke: SmokeSpec | None = None


def normal_mode(st_mode: int) -> int:
    """0o755 when any execute bit is set, else 0o644: owners, umask and extra bits dropped."""
    return 0o755 if st_mode & 0o111 else 0o644


def collect_tree(root: Path, prefix: str, *, skip_pycache: bool = True) -> list[SourceFile]:
    """Every regular file under ``root`` as payload files under ``prefix``.

    Symbolic links are refused rather than followed: a bundle holds plain files only, and a
    link could pull in files from outside the project.

    Raises:
        ProjectError: a symbolic link, device or other special file is found.
    """
    files: list[SourceFile] = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        if skip_pycache:
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in dirnames:
            _refuse_link(base / name, (base / name).lstat())
        for name in filenames:
            path = base / name
            st = path.lstat()  # one stat per file: its kind and its mode
            _refuse_link(path, st)
            if not stat.S_ISREG(st.st_mode):
                raise ProjectError(f"{path} is not a regular file")
            if skip_pycache and name.endswith((".pyc", ".pyo")):
                continue
            rel = path.relative_to(root).as_posix()
            files.append(SourceFile(f"{prefix}/{rel}", path, normal_mode(st.st_mode)))
    return files


def _refuse_link(path: Path, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise ProjectError(
            f"{path} is a symbolic link; bundles hold plain files only",
            remedy="replace the link with the file it points to",
        )


def _sort_key(f: SourceFile) -> bytes:
    # Byte order of the UTF-8 name: the same on every machine and locale.
    return f.path.encode("utf-8")


@contextlib.contextmanager
def _atomic_output(out: Path) -> Iterator[BinaryIO]:
    """A temp file beside ``out``, renamed over it only when the body succeeds."""
    out = Path(os.path.abspath(out))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as e:
        raise BundleError(f"cannot write {out}: {e.strerror}") from e
    try:
        with os.fdopen(fd, "w+b") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bundle(
    out: Path,
    files: Sequence[SourceFile],
    meta: BundleMeta,
    private_key: Ed25519PrivateKey,
    *,
    level: int = 3,
    threads: int = 0,
    progress: Progress | None = None,
    check: Callable[[Manifest], None] | None = None,
    frames: FrameReuse | None = None,
) -> Manifest:
    """Write a signed bundle of ``files`` to ``out``; return its manifest.

    ``threads`` 0 means one per core; the output is the same for any thread count.
    ``check`` sees the manifest (every file's hash, as written) before it is signed; if it
    raises, nothing is signed and ``out`` is left as it was. ``frames`` offers compressed
    frames to reuse for grouped files; the bundle is byte-identical either way.

    Raises:
        UnsafeMemberError: a payload path is unsafe or two collide.
        BundleError: ``out`` cannot be written.
    """
    progress = progress or NullProgress()
    ordered = sorted(files, key=_sort_key)
    for f in ordered:
        check_member_name(f.path)
    check_name_set(f.path for f in ordered)
    sizes = [f.size() for f in ordered]
    threads = threads or (os.cpu_count() or 1)
    with _atomic_output(out) as fh:
        writer = BundleWriter(fh, mtime=meta.created, level=level, threads=threads)
        progress.start("compressing", sum(sizes))
        members = [
            MemberSource(name=f.path, mode=f.mode, size=size, open=f.open)
            for f, size in zip(ordered, sizes, strict=True)
        ]
        groups = [f.group for f in ordered]
        digests = _write_frames(
            writer, members, groups, frames, frame_params(level, meta.created), progress
        )
        entries = [
            FileEntry(path=m.name, size=m.size, mode=m.mode, sha256=d)
            for m, d in zip(members, digests, strict=True)
        ]
        stats = writer.finish_payload()
        progress.finish()
        manifest = Manifest(
            name=meta.name,
            version=meta.version,
            created=meta.created,
            expires=meta.expires,
            signer=key_id(private_key.public_key()),
            target=meta.target,
            entry_script=meta.entry_script,
            mode=meta.mode,
            env=dict(meta.env),
            packages=meta.packages,
            base_image=meta.base_image,
            smoke=meta.smoke,
            payload=PayloadInfo(
                sha256=stats.sha256,
                size=stats.size,
                unpacked_size=sum(sizes),
                file_count=len(entries),
            ),
            files=tuple(entries),
        )
        if check is not None:
            check(manifest)
        data = manifest.to_bytes()
        writer.finish(data, sign(private_key, data))
    return manifest


def _write_frames(
    writer: BundleWriter,
    members: Sequence[MemberSource],
    groups: Sequence[str | None],
    frames: FrameReuse | None,
    params: str,
    progress: Progress,
) -> list[str]:
    """Write every member, frame by frame (:func:`frame_plan`); return their sha256 digests.

    A grouped frame that ``frames`` holds is copied as it is; its check (started earlier on
    another thread) must pass, with the sha256 of the bytes copied equal to that of the bytes
    checked, and every member's digest equal to the record. Any other frame is compressed.
    """
    digests: list[str] = [""] * len(members)
    for start, end in frame_plan([m.size for m in members], groups):
        span = members[start:end]
        group = groups[start]
        names = tuple(m.name for m in span)
        writer.end_frame()
        offset = writer.payload_offset + writer.compressed
        if frames is None or group is None:
            digests[start:end] = writer.tar.add_all(span, on_written=progress.advance)
            continue
        cached = frames.lookup(group, params, names, writer.mtime)
        if cached is None:
            digests[start:end] = writer.tar.add_all(span, on_written=progress.advance)
            writer.end_frame()
            size = writer.payload_offset + writer.compressed - offset
            frames.written(group, params, names, offset, size)
            continue
        digests[start:end] = _copy_checked(writer, frames, group, span, cached)
        progress.advance(sum(m.size for m in span))
    return digests


def _copy_checked(
    writer: BundleWriter,
    frames: FrameReuse,
    group: str,
    span: Sequence[MemberSource],
    cached: CachedFrame,
) -> list[str]:
    try:
        src = cached.path.open("rb")
    except OSError as e:
        frames.rejected(group, IntegrityError(f"cannot read it: {e.strerror}", member=span[0].name))
    with src:
        copied = writer.copy_frame(src, sum(member_bytes(m.size) for m in span))
    try:
        checked, found = cached.check.result()
    except IntegrityError as e:
        frames.rejected(group, e)
    if copied != checked:
        frames.rejected(
            group, IntegrityError("it changed while it was being packed", member=span[0].name)
        )
    for m, got, recorded in zip(span, found, cached.sha256, strict=True):
        if got != recorded:
            frames.rejected(
                group,
                IntegrityError(
                    "a cached frame's content differs from the cache's record", member=m.name
                ),
            )
    return found
