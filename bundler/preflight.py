"""Free-space preflight: what an unpack or a build needs on a filesystem, and whether it fits.

The arithmetic is pure (:func:`unpack_need`, :func:`build_need`); :func:`free_space` is the
one ``statvfs`` call, and :func:`require` raises the one-line refusal. The rules are
documented in README.md ("Before unpacking") and docs/docker.md ("Build preflight").
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .errors import InsufficientSpaceError
from .formats.manifest import Manifest

# Metadata the per-file arithmetic cannot see (extent/indirect blocks of large files, the
# journal's share, a directory growing past one block): 1% of the data plus 256 KiB.
MARGIN_FRACTION: Final = 0.01
MARGIN_FIXED: Final = 256 * 1024  # bytes
# Per directory entry: ext4 stores 8 bytes plus the name rounded to 4; this is an upper bound.
_DIRENT_OVERHEAD: Final = 16  # bytes
# What the stage holds besides the payload: the signature (64 bytes) and the signer's key
# (a 113-byte PEM); the manifest itself is counted by its real length.
_STATE_SMALL_FILES: Final = ((".airgap/manifest.json.sig", 64), (".airgap/signer.pub", 113))


@dataclass(frozen=True)
class Need:
    """Bytes and inodes a job will allocate on one filesystem."""

    bytes: int
    inodes: int


@dataclass(frozen=True)
class Free:
    """What ``statvfs`` says an unprivileged writer may still allocate on a filesystem."""

    bytes: int  # f_bavail * f_frsize
    total: int  # f_blocks * f_frsize; 0 for a filesystem that keeps no count (/proc, some FUSE)
    inodes: int | None  # f_favail; None when the filesystem does not count inodes (btrfs)
    block_size: int  # f_frsize: the allocation unit files are rounded up to
    noexec: bool  # mounted noexec: nothing on it can be executed or mmap'ed PROT_EXEC


def _blocks(size: int, block: int) -> int:
    """``size`` rounded up to whole blocks (an empty file takes an inode, no block)."""
    return -(-size // block) * block


def _margin(data: int) -> int:
    return int(data * MARGIN_FRACTION) + MARGIN_FIXED


def tree_need(files: Iterable[tuple[str, int]], block: int, *, extra_dirs: int = 0) -> Need:
    """The allocation of a tree of ``(relative path, size)`` files, margin included.

    Each file is rounded up to whole blocks; each folder takes at least one block, more
    when its entries' names do not fit in one; ``extra_dirs`` folders (a stage root) one
    block each.
    """
    data = 0
    count = 0
    entries: dict[str, int] = {"": 0}  # folder -> bytes of its directory entries

    def enter(parent: str, name: str) -> None:
        entries[parent] = entries.get(parent, 0) + len(name.encode()) + _DIRENT_OVERHEAD

    folders: set[str] = {""}
    for path, size in files:
        data += _blocks(size, block)
        count += 1
        parent, _, name = path.rpartition("/")
        # Every ancestor folder exists once, and is an entry of its own parent.
        folder = parent
        while folder not in folders:
            folders.add(folder)
            grand, _, dname = folder.rpartition("/")
            enter(grand, dname)
            folder = grand
        enter(parent, name)
    dirs = sum(max(block, _blocks(entries.get(f, 0), block)) for f in folders)
    dirs += extra_dirs * block
    return Need(bytes=data + dirs + _margin(data + dirs), inodes=count + len(folders) + extra_dirs)


def unpack_need(manifest: Manifest, manifest_bytes: int, block: int) -> Need:
    """What `airgap unpack` allocates beside DEST before the swap.

    The new tree is written whole into a stage folder beside DEST (same filesystem), and
    the old DEST is only removed after the swap: so the full new tree must fit in the free
    space now, whatever the old tree occupies. That is every payload file, the ``.airgap``
    state files (the manifest, its signature, the signer's key) and their folders, plus the
    margin.
    """
    files = [(f.path, f.size) for f in manifest.files]
    files += [(".airgap/manifest.json", manifest_bytes), *_STATE_SMALL_FILES]
    return tree_need(files, block)


def delta_need(
    new: Manifest, carried: Collection[str], base: Manifest, manifest_bytes: int, block: int
) -> Need:
    """What applying a delta allocates beside DEST (docs/format.md §13.4).

    That is the carried files, copies of the reused files whose mode changes (never
    hardlinked), the state files, and an inode for every file and folder: a reflink or a
    hardlink needs no data blocks. ``base`` is DEST's manifest, shown to be the delta's base.
    """
    modes = {(e.sha256, e.size): e.mode for e in base.files}
    files = [
        (e.path, e.size if e.path in carried or modes.get((e.sha256, e.size)) != e.mode else 0)
        for e in new.files
    ]
    files += [(".airgap/manifest.json", manifest_bytes), *_STATE_SMALL_FILES]
    return tree_need(files, block)


def build_need(copied: Iterable[tuple[str, int]], base_tar: int, block: int) -> Need:
    """What `airgap build` needs in the Docker data root, roughly.

    The engine keeps the build context it receives and writes the layers the COPY steps
    make, each about the size of the files copied: twice the copied files, plus the base
    image tar when it has to be loaded (its layers land there too), plus the margin.
    """
    one = tree_need(copied, block)
    return Need(bytes=2 * one.bytes + base_tar, inodes=2 * one.inodes)


def free_space(path: Path) -> Free:
    """``statvfs`` of the filesystem holding ``path`` (which must exist).

    Raises:
        OSError: ``path`` cannot be reached.
    """
    st = os.statvfs(path)
    block = st.f_frsize or st.f_bsize
    return Free(
        bytes=st.f_bavail * block,
        total=st.f_blocks * block,
        inodes=st.f_favail if st.f_files else None,
        block_size=block,
        noexec=bool(st.f_flag & os.ST_NOEXEC),
    )


def human(n: int) -> str:
    """Bytes for a message: exact, then a rounded unit (``5242880 bytes (5.0 MiB)``)."""
    size = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            return f"{n} bytes ({size:.1f} {unit})"
    return f"{n} bytes"  # pragma: no cover - the loop always returns


def shortfall(need: Need, free: Free) -> str | None:
    """Why ``need`` does not fit in ``free`` (None: it fits, or the filesystem cannot say)."""
    if free.total == 0:
        # A filesystem reporting no size at all counts nothing; writing will tell.
        return None
    if need.bytes > free.bytes:
        return f"{human(need.bytes)} needed, {human(free.bytes)} free"
    if free.inodes is not None and need.inodes > free.inodes:
        return f"{need.inodes} inodes needed, {free.inodes} free"
    return None


def require(path: Path, need: Need, *, doing: str, remedy: str) -> Free:
    """Raise unless ``need`` fits on the filesystem holding ``path``; return what is free.

    Raises:
        InsufficientSpaceError: one line naming the bytes (or inodes) needed and free.
    """
    try:
        free = free_space(path)
    except OSError as e:
        raise InsufficientSpaceError(
            f"cannot ask {path} for its free space ({e.strerror})", remedy="check the path"
        ) from e
    short = shortfall(need, free)
    if short is not None:
        raise InsufficientSpaceError(
            f"not enough space to {doing} on {path}: {short}", remedy=remedy
        )
    return free
