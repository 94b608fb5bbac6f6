"""The free-space preflight: the arithmetic, and unpack/build refused on a real small tmpfs
with nothing written there (not even a stage), and passing when room exists."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import NOW, KeyPair, MakeBundle, require_netns, snapshot

from bundler.deploy.docker import require_build_space
from bundler.errors import EXIT_ERROR, InsufficientSpaceError
from bundler.formats.manifest import BaseImage
from bundler.preflight import MARGIN_FIXED, Free, Need, free_space, shortfall, tree_need
from bundler.verify.unpack import open_verified, unpack

MiB = 1024 * 1024
Mount = Callable[..., Path]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Mount]:
    """``tmpfs("size=2m")``: a real size-limited tmpfs, unmounted after the test."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("mounting a tmpfs needs root in CI")
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def mount(options: str = "size=2m") -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"{options},mode=0755", "tmpfs", str(where)], check=True
        )
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _files(model: bytes) -> dict[str, bytes]:
    return {"app/score.py": b"def init(): pass\ndef run(d): return d\n", "model/m.bin": model}


def _airgap(*args: str | Path, netns: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "bundler", *map(str, args)]
    if netns:
        require_netns()
        cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


# ---- the arithmetic -----------------------------------------------------------------------


def test_tree_need_rounds_files_to_blocks_and_counts_each_folder() -> None:
    need = tree_need([("a/b/c.txt", 10), ("a/d.txt", 5000), ("e", 0)], 4096)
    data = 4096 + 8192 + 0  # an empty file takes an inode but no block
    folders = 3 * 4096  # the root, a, a/b
    assert need.inodes == 3 + 3
    assert need.bytes == data + folders + int((data + folders) * 0.01) + MARGIN_FIXED


def test_every_ancestor_folder_of_a_deep_file_is_counted() -> None:
    need = tree_need([("a/b/c/d/e.txt", 1)], 1024)
    assert need.inodes == 1 + 5  # the file; the root, a, a/b, a/b/c, a/b/c/d
    assert need.bytes == 1024 + 5 * 1024 + int(6 * 1024 * 0.01) + MARGIN_FIXED


def test_a_folder_with_many_entries_takes_more_than_one_block() -> None:
    small = tree_need([(f"d/{i:04d}", 0) for i in range(10)], 4096)
    large = tree_need([(f"d/{i:04d}", 0) for i in range(1000)], 4096)
    # 1000 entries of 4 + 16 bytes: 20000 bytes, 5 blocks for d/ (4 more, and their 1%).
    assert 4 * 4096 <= large.bytes - small.bytes <= 4 * 4096 + 200


def test_shortfall_names_bytes_then_inodes_and_skips_an_uncounted_filesystem() -> None:
    free = Free(bytes=1000, total=10_000, inodes=5, block_size=4096, noexec=False)
    assert shortfall(Need(999, 5), free) is None
    assert shortfall(Need(1001, 1), free) == (
        "1001 bytes (1.0 KiB) needed, 1000 bytes (1.0 KiB) free"
    )
    assert shortfall(Need(10, 6), free) == "6 inodes needed, 5 free"
    assert shortfall(Need(10**12, 10**9), Free(0, 0, None, 4096, False)) is None


def test_the_need_bounds_what_a_real_unpack_uses(
    tmpfs: Mount, make_bundle: MakeBundle, publisher: KeyPair
) -> None:
    fs = tmpfs("size=8m")
    files = {**_files(os.urandom(MiB + 1)), **{f"app/pkg/m{i}.py": b"x = 1\n" for i in range(40)}}
    files["site-packages/deep/er/still/m.py"] = b"y = 2\n"
    bundle = make_bundle(files=files)
    v = open_verified(bundle, [publisher.pub], now=NOW)
    from bundler.preflight import unpack_need

    need = unpack_need(v.manifest, len(v.manifest_bytes), free_space(fs).block_size)
    st0 = os.statvfs(fs)
    unpack(bundle, fs / "dest", [publisher.pub], now=NOW)
    st1 = os.statvfs(fs)
    used = (st0.f_bfree - st1.f_bfree) * st1.f_frsize
    inodes = st0.f_ffree - st1.f_ffree
    assert 0 < used <= need.bytes
    assert need.bytes - used < MARGIN_FIXED + 0.1 * used  # an upper bound, not a wild guess
    assert inodes == need.inodes  # every file and folder, exactly


# ---- unpack on a small filesystem -----------------------------------------------------------


@pytest.mark.netns
def test_unpack_is_refused_on_a_small_filesystem_with_nothing_written(
    tmpfs: Mount, make_bundle: MakeBundle, publisher: KeyPair
) -> None:
    fs = tmpfs("size=2m")
    bundle = make_bundle(files=_files(os.urandom(3 * MiB)))
    proc = _airgap("unpack", bundle, fs / "dest", "--trust", publisher.pub)
    assert proc.returncode == EXIT_ERROR, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line
    assert line.startswith(f"preflight: not enough space to unpack demo 1.0 on {fs}: ")
    free = free_space(fs).bytes
    assert f"needed, {free} bytes" in line
    needed = int(line.split(": ")[2].split(" bytes")[0])
    assert needed > 3 * MiB
    assert os.listdir(fs) == []  # no DEST, no stage


@pytest.mark.netns
def test_unpack_passes_on_the_same_filesystem_when_room_exists(
    tmpfs: Mount, make_bundle: MakeBundle, publisher: KeyPair
) -> None:
    fs = tmpfs("size=2m")
    bundle = make_bundle(files=_files(os.urandom(512 * 1024)))
    proc = _airgap("unpack", bundle, fs / "dest", "--trust", publisher.pub)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(fs)) == ["dest"]
    assert (fs / "dest" / "model" / "m.bin").stat().st_size == 512 * 1024


def test_an_update_needs_room_for_the_old_and_the_new_tree_at_once(
    tmpfs: Mount, make_bundle: MakeBundle, publisher: KeyPair
) -> None:
    fs = tmpfs("size=2m")
    unpack(make_bundle(files=_files(os.urandom(900 * 1024))), fs / "dest", [publisher.pub], now=NOW)
    before = snapshot(fs)
    v2 = make_bundle(files=_files(os.urandom(900 * 1024)), version="2.0")
    # 900 KiB fits on its own; beside the old tree (kept until the swap) it does not.
    with pytest.raises(InsufficientSpaceError, match=r"unpack demo 2\.0 .* needed, .* free"):
        unpack(v2, fs / "dest", [publisher.pub], now=NOW)
    assert snapshot(fs) == before


def test_too_few_inodes_is_refused_too(
    tmpfs: Mount, make_bundle: MakeBundle, publisher: KeyPair
) -> None:
    fs = tmpfs("size=8m,nr_inodes=24")
    files = {**_files(b"w"), **{f"app/m{i}.py": b"x = 1\n" for i in range(30)}}
    with pytest.raises(InsufficientSpaceError, match="inodes needed"):
        unpack(make_bundle(files=files), fs / "dest", [publisher.pub], now=NOW)
    assert os.listdir(fs) == []


# ---- build: the Docker data root ------------------------------------------------------------


class _FakeEngine:
    """Only what the build preflight asks: the data root and whether the base is loaded."""

    def __init__(self, root: Path | None, has_base: bool = False) -> None:
        self.root = root
        self.has_base = has_base

    def data_root(self) -> str | None:
        return None if self.root is None else str(self.root)

    def image_id(self, ref: str) -> str | None:
        return ref if self.has_base else None


def _docker_bundle(make_bundle: MakeBundle, model: bytes, *, tar: bytes | None = None) -> Path:
    files = {**_files(model), "docker/Dockerfile": b"FROM scratch\n"}
    if tar is not None:
        files["docker/base-image.tar"] = tar
    base = BaseImage("airgap-test/none:1", "sha256:" + "0" * 64, included=tar is not None)
    return make_bundle(files=files, base_image=base)


def test_build_is_refused_when_the_data_root_cannot_hold_context_and_layers(
    tmpfs: Mount, make_bundle: MakeBundle, publisher: KeyPair
) -> None:
    root = tmpfs("size=2m")
    # 800 KiB copied: the context and the layers take twice that, over 1.6 MiB.
    m = open_verified(_docker_bundle(make_bundle, os.urandom(800 * 1024)), [publisher.pub], now=NOW)
    with pytest.raises(InsufficientSpaceError, match=r"\(the Docker data root\)") as info:
        require_build_space(_FakeEngine(root), m.manifest, ["normal"])  # type: ignore[arg-type]
    assert f"on {root}: " in info.value.message
    small = open_verified(_docker_bundle(make_bundle, b"w" * 1000), [publisher.pub], now=NOW)
    require_build_space(_FakeEngine(root), small.manifest, ["normal"])  # type: ignore[arg-type]
    # A remote engine's root cannot be measured here: only the temporary folder is checked.
    require_build_space(_FakeEngine(None), m.manifest, ["normal"])  # type: ignore[arg-type]


def test_a_base_image_to_load_counts_only_when_the_engine_lacks_it(
    tmpfs: Mount, make_bundle: MakeBundle, publisher: KeyPair
) -> None:
    root = tmpfs("size=2m")
    bundle = _docker_bundle(make_bundle, b"w" * 1000, tar=os.urandom(1600 * 1024))
    m = open_verified(bundle, [publisher.pub], now=NOW).manifest
    with pytest.raises(InsufficientSpaceError):
        require_build_space(_FakeEngine(root), m, ["normal"])  # type: ignore[arg-type]
    require_build_space(_FakeEngine(root, has_base=True), m, ["normal"])  # type: ignore[arg-type]


@pytest.mark.docker
def test_build_with_the_real_engine_checks_its_data_root_before_loading_anything(
    tmpfs: Mount, tmp_path: Path, make_bundle: MakeBundle, publisher: KeyPair
) -> None:
    from bundler.deploy.docker import build
    from bundler.deploy.engine import DockerEngine
    from bundler.errors import EngineUnavailableError

    try:
        real = DockerEngine.connect(timeout=10)
    except EngineUnavailableError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the Docker engine is required in CI: {e}")
        pytest.skip(str(e))
    info = subprocess.run(
        ["docker", "info", "--format", "{{.DockerRootDir}}"], capture_output=True, text=True
    )
    assert real.data_root() == info.stdout.strip()
    small = tmpfs("size=2m")

    class SmallRoot(DockerEngine):
        def data_root(self) -> str | None:
            return str(small)

    bundle = _docker_bundle(make_bundle, os.urandom(MiB), tar=os.urandom(1024))
    dest = tmp_path / "dest"
    unpack(bundle, dest, [publisher.pub], now=NOW)
    engine = SmallRoot.connect(timeout=10)
    with pytest.raises(InsufficientSpaceError, match="the Docker data root"):
        build(dest, engine=engine)
    # Refused before the (missing) base image was looked for or loaded.
    assert engine.image_id("sha256:" + "0" * 64) is None
