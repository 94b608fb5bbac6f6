"""Shared fixtures: key pairs, a tiny real bundle factory, a crafted-bundle factory, canaries."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import craft
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bundler.formats.manifest import Target
from bundler.formats.signing import (
    PRIVATE_KEY_NAME,
    PUBLIC_KEY_NAME,
    generate_keypair,
    load_private_key,
)
from bundler.pack.assemble import BundleMeta, SourceFile, write_bundle

# A fixed "now" for expiry checks, a little after craft.CREATED.
NOW = craft.CREATED + 3600


@dataclass(frozen=True)
class KeyPair:
    """A key pair made by the real `generate_keypair`, as files and as objects."""

    dir: Path
    private: Ed25519PrivateKey
    key_id: str

    @property
    def pub(self) -> Path:
        return self.dir / PUBLIC_KEY_NAME

    @property
    def key(self) -> Path:
        return self.dir / PRIVATE_KEY_NAME


def _keypair(root: Path) -> KeyPair:
    kid = generate_keypair(root, None)
    return KeyPair(dir=root, private=load_private_key(root / PRIVATE_KEY_NAME, None), key_id=kid)


@pytest.fixture(scope="session")
def publisher(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    """The key the victim trusts."""
    return _keypair(tmp_path_factory.mktemp("publisher"))


@pytest.fixture(scope="session")
def attacker(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    """Another valid key; trusted only in tests that say so."""
    return _keypair(tmp_path_factory.mktemp("attacker"))


TINY_FILES: Mapping[str, bytes | tuple[bytes, int]] = {
    f.path: (f.data, f.mode) for f in craft.DEFAULT_FILES
}
TARGET = Target(
    python="3.11", implementation="cp", abi="cp311", platforms=("manylinux_2_17_x86_64",)
)


def tiny_meta(**fields: Any) -> BundleMeta:
    values: dict[str, Any] = {
        "name": "demo",
        "version": "1.0",
        "created": craft.CREATED,
        "target": TARGET,
        "entry_script": "app/score.py",
        "mode": "mounted",
    }
    values.update(fields)
    return BundleMeta(**values)


MakeBundle = Callable[..., Path]


@pytest.fixture
def make_bundle(tmp_path: Path, publisher: KeyPair) -> MakeBundle:
    """Write a real bundle with the project's writer: ``make_bundle("b.airgap", version="2.0")``.

    ``files`` maps payload paths to bytes or (bytes, mode); ``key`` is a KeyPair (default the
    publisher); other keywords go to BundleMeta (version, created, expires, ...) or to
    ``write_bundle`` (level, threads).
    """
    counter = iter(range(1_000_000))

    def make(
        filename: str | None = None,
        *,
        files: Mapping[str, bytes | tuple[bytes, int]] = TINY_FILES,
        key: KeyPair | None = None,
        level: int = 3,
        threads: int = 1,
        **meta: Any,
    ) -> Path:
        out = tmp_path / (filename or f"bundle-{next(counter)}.airgap")
        sources = []
        for path, value in files.items():
            data, mode = value if isinstance(value, tuple) else (value, 0o644)
            sources.append(SourceFile(path, data, mode))
        signer = (key or publisher).private
        write_bundle(out, sources, tiny_meta(**meta), signer, level=level, threads=threads)
        return out

    return make


@dataclass(frozen=True)
class GoodUnpack:
    """A good bundle (demo 1.0, publisher-signed) and a DEST it was really unpacked into."""

    bundle: Path
    dest: Path

    def copy_to(self, dest: Path) -> None:
        """A faithful copy of the unpacked DEST (modes kept), without another unpack's fsync."""
        shutil.copytree(self.dest, dest, symlinks=True)


@pytest.fixture(scope="session")
def good_unpack(tmp_path_factory: pytest.TempPathFactory, publisher: KeyPair) -> GoodUnpack:
    from bundler.verify.unpack import unpack

    root = tmp_path_factory.mktemp("good")
    bundle = root / "good.airgap"
    sources = [SourceFile(f.path, f.data, f.mode) for f in craft.DEFAULT_FILES]
    write_bundle(bundle, sources, tiny_meta(), publisher.private, threads=1)
    unpack(bundle, root / "dest", [publisher.pub], now=NOW)
    return GoodUnpack(bundle, root / "dest")


CraftBundle = Callable[..., Path]


@pytest.fixture
def craft_bundle(tmp_path: Path, publisher: KeyPair) -> CraftBundle:
    """Write a crafted bundle to a file: ``craft_bundle(key=KeyPair, **craft.craft options)``."""
    counter = iter(range(1_000_000))

    def make(*, key: KeyPair | None = None, **options: Any) -> Path:
        parts = craft.craft((key or publisher).private, **options)
        out = tmp_path / f"crafted-{next(counter)}.airgap"
        out.write_bytes(parts.bundle)
        return out

    return make


def require_netns() -> None:
    """Skip where `unshare -n` is not permitted; in CI (CI set) fail instead, so an isolated-side
    test that cannot prove it ran with no network never passes silently."""
    if (
        shutil.which("unshare") is None
        or subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0
    ):
        if os.environ.get("CI"):
            pytest.fail("unshare -n is needed in CI")
        pytest.skip("unshare -n is not permitted here")


# ---- the CPython pattern: unpack into outer/dest, canaries in outer/ --------------------

Snapshot = dict[str, tuple[Any, ...]]


def snapshot(root: Path) -> Snapshot:
    """Every path under ``root`` with its type, permission bits and (for files) bytes."""
    seen: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = path.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                seen[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                seen[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                seen[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    return seen


@dataclass(frozen=True)
class Victim:
    """``outer/`` with canary files beside ``outer/dest``, where bundles get unpacked."""

    outer: Path

    @property
    def dest(self) -> Path:
        return self.outer / "dest"

    def snapshot(self) -> Snapshot:
        return snapshot(self.outer)


@pytest.fixture
def victim(tmp_path: Path) -> Victim:
    outer = tmp_path / "outer"
    outer.mkdir()
    (outer / "canary.txt").write_bytes(b"canary: must never change\n")
    (outer / "evil").write_bytes(b"a name hostile members like to use\n")
    (outer / "etc").mkdir()
    (outer / "etc" / "passwd").write_bytes(b"root:x:0:0::/root:/bin/sh\n")
    return Victim(outer)
