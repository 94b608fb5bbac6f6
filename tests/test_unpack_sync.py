"""Unpack's durability work and its file creation: the early writeback, `--no-sync`, files
created by the writer threads (not in payload order), and the write loop delta apply shares."""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import craft
import pytest
from conftest import NOW, CraftBundle, KeyPair, MakeBundle, Victim, snapshot

from bundler.errors import EXIT_OK, IntegrityError
from bundler.verify import unpack as unpack_module
from bundler.verify import writer as writer_module
from bundler.verify.unpack import unpack

MiB = 1 << 20


def files_with_a_large_one(n: int = 300) -> dict[str, bytes | tuple[bytes, int]]:
    rng = random.Random(3)
    files: dict[str, bytes | tuple[bytes, int]] = {
        "app/score.py": b"def init():\n    pass\n\n\ndef run(d):\n    return d\n"
    }
    for i in range(n):
        files[f"site-packages/p{i % 7}/q{i % 3}/m{i:04d}.py"] = rng.randbytes(rng.randrange(1, 900))
    files["model/weights.bin"] = (rng.randbytes(20 * MiB + 5), 0o755)
    return files


def written_as(files: dict[str, bytes | tuple[bytes, int]], dest: Path) -> None:
    tree = snapshot(dest)
    for path, value in files.items():
        data, mode = value if isinstance(value, tuple) else (value, 0o644)
        assert tree[path] == ("file", mode, data), path


def test_files_are_created_by_the_writer_threads_exactly_once_each(
    make_bundle: MakeBundle, victim: Victim, publisher: KeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = files_with_a_large_one()
    bundle = make_bundle(files=files)
    created: list[tuple[str, str, int]] = []
    real_open = os.open

    def recording_open(path, flags, mode=0o777, *, dir_fd=None):  # type: ignore[no-untyped-def]
        if flags & os.O_CREAT:
            created.append((threading.current_thread().name, os.fsdecode(path), flags))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(writer_module.os, "open", recording_open)
    unpack(bundle, victim.dest, [publisher.pub], now=NOW)
    members = [(name, path, flags) for name, path, flags in created if ".airgap-stage-" in path]
    rel = sorted(path.split(".airgap-stage-", 1)[1].split("/", 1)[1] for _, path, _ in members)
    assert rel == sorted(files)  # every member created once, nothing else
    assert {name.rsplit("-", 1)[0] for name, _, _ in members} == {"airgap-writer"}
    for _, _, flags in members:
        assert flags & os.O_EXCL and flags & os.O_NOFOLLOW
    written_as(files, victim.dest)


def test_a_large_member_is_handed_to_the_disk_in_steps_covering_all_of_it(
    make_bundle: MakeBundle, victim: Victim, publisher: KeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = files_with_a_large_one(20)
    ranges: list[tuple[int, int]] = []
    real_range = writer_module.Writeback.range

    def recording_range(self, fd: int, offset: int, length: int) -> None:  # type: ignore[no-untyped-def]
        if os.readlink(f"/proc/self/fd/{fd}").endswith("model/weights.bin"):
            ranges.append((offset, length))
        real_range(self, fd, offset, length)

    monkeypatch.setattr(writer_module.Writeback, "range", recording_range)
    unpack(make_bundle(files=files), victim.dest, [publisher.pub], now=NOW)
    size = 20 * MiB + 5
    assert ranges[0][0] == 0
    for (a, n), (b, _) in itertools.pairwise(ranges):
        assert a + n == b  # contiguous, no byte left out
    assert sum(n for _, n in ranges) == size
    assert all(n >= writer_module._WRITEBACK_STEP for _, n in ranges[:-1])
    assert not [t for t in threading.enumerate() if t.name == "airgap-writeback"]
    written_as(files, victim.dest)


def test_small_members_trigger_a_background_syncfs_of_the_stage(
    make_bundle: MakeBundle, victim: Victim, publisher: KeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "_SYNCFS_STEP", 64 << 10)  # every 64 KiB here
    kicks: list[int] = []
    real_small = writer_module.Writeback.small

    def recording_small(self, length: int) -> None:  # type: ignore[no-untyped-def]
        kicks.append(length)
        real_small(self, length)

    monkeypatch.setattr(writer_module.Writeback, "small", recording_small)
    synced: list[str] = []
    real_init = writer_module.Writeback.__init__

    def recording_init(self, root: str) -> None:  # type: ignore[no-untyped-def]
        real_init(self, root)
        real_syncfs = self._syncfs
        assert real_syncfs is not None

        def syncfs(fd: int) -> int:
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
            return real_syncfs(fd)

        self._syncfs = syncfs

    monkeypatch.setattr(writer_module.Writeback, "__init__", recording_init)
    files = files_with_a_large_one()
    unpack(make_bundle(files=files), victim.dest, [publisher.pub], now=NOW)
    small = [v for p, v in files.items() if p != "model/weights.bin"]
    assert sorted(kicks) == sorted(len(v) for v in small if isinstance(v, bytes))
    # About 130 KiB of small members: at least one background syncfs, of the stage only.
    assert synced and all(".airgap-stage-" in p for p in synced)
    written_as(files, victim.dest)


def test_no_sync_skips_every_sync_and_writes_the_same_tree(
    make_bundle: MakeBundle, victim: Victim, publisher: KeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = files_with_a_large_one()
    bundle = make_bundle(files=files)
    unpack(bundle, victim.outer / "durable", [publisher.pub], now=NOW)

    def forbidden(*args: object) -> None:
        raise AssertionError("synced although sync=False")

    monkeypatch.setattr(unpack_module, "_syncfs", forbidden)
    monkeypatch.setattr(unpack_module.os, "fsync", forbidden)
    monkeypatch.setattr(writer_module.Writeback, "__init__", forbidden)
    unpack(bundle, victim.dest, [publisher.pub], now=NOW, sync=False)
    assert snapshot(victim.dest) == snapshot(victim.outer / "durable")


def test_no_sync_is_still_all_or_nothing(
    craft_bundle: CraftBundle, victim: Victim, publisher: KeyPair
) -> None:
    last = craft.DEFAULT_FILES[-1]
    bundle = craft_bundle(
        payload_members=[
            *craft.members_of(craft.DEFAULT_FILES[:-1]),
            craft.member(last.path, craft.flip(last.data)),
        ]
    )
    before = victim.snapshot()
    with pytest.raises(IntegrityError, match=f"{last.path}: content differs"):
        unpack(bundle, victim.dest, [publisher.pub], now=NOW, sync=False)
    assert victim.snapshot() == before


_KILLED_NO_SYNC = """
import os, signal, sys
from pathlib import Path
from bundler.verify import unpack as u

real_install = u._install
def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)  # every file written, just before the rename
u._install = killed
u.unpack(Path(sys.argv[1]), Path(sys.argv[2]), [Path(sys.argv[3])], now=int(sys.argv[4]),
         sync=False)
"""


def test_kill_9_before_the_swap_with_no_sync_leaves_dest_as_it_was(
    make_bundle: MakeBundle, victim: Victim, publisher: KeyPair
) -> None:
    v1 = make_bundle(files={"app/score.py": b"v = 1\n"})
    v2 = make_bundle(files=files_with_a_large_one(50), version="2.0")
    unpack(v1, victim.dest, [publisher.pub], now=NOW)
    before = snapshot(victim.dest)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    args = [sys.executable, "-c", _KILLED_NO_SYNC, v2, victim.dest, publisher.pub, str(NOW)]
    run = subprocess.run(list(map(str, args)), env=env, capture_output=True, timeout=120)
    assert run.returncode == -9, run.stderr
    assert snapshot(victim.dest) == before
    unpack(v2, victim.dest, [publisher.pub], now=NOW, sync=False)  # and it cleans the stage
    assert sorted(p.name for p in victim.dest.parent.iterdir() if ".airgap-stage-" in p.name) == []


def test_no_sync_through_the_cli(
    make_bundle: MakeBundle, tmp_path: Path, publisher: KeyPair
) -> None:
    files = files_with_a_large_one(50)
    bundle = make_bundle(files=files)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    dest = tmp_path / "scratch" / "demo"
    dest.parent.mkdir()
    cmd = [sys.executable, "-m", "bundler", "unpack", bundle, dest, "--trust", publisher.pub]
    proc = subprocess.run(
        [*map(str, cmd), "--no-sync", "--no-host-check", "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == EXIT_OK, proc.stderr
    written_as(files, dest)
    helped = subprocess.run(
        [sys.executable, "-m", "bundler", "unpack", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "--no-sync" in helped.stdout and "power loss" in helped.stdout
