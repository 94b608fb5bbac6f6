"""The parallel write path: the writer pool's failures, ordering, streaming and clean-up.

Members are created by the main thread in payload order and written, chmodded and hashed by
the pool (bundler/verify/writer.py). A failure in a worker must come back as the same
one-line rejection a sequential unpack gives, naming the earliest failing member in payload
order, with nothing left behind: no DEST, no stage, no thread.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import craft
import pytest
from conftest import NOW, CraftBundle, KeyPair, MakeBundle, Victim, require_netns, snapshot

from bundler.errors import EXIT_ERROR, EXIT_REJECTED, BundleError, IntegrityError
from bundler.formats.archive import CHUNK
from bundler.verify import writer as writer_module
from bundler.verify.unpack import unpack, verify

MiB = 1 << 20


def many_files(n: int, seed: int = 1) -> list[craft.F]:
    """``n`` small files in a few folders (sorted, as our writer emits them), and the entry."""
    rng = random.Random(seed)
    files = [craft.F("app/score.py", b"def init():\n    pass\n\n\ndef run(d):\n    return d\n")]
    for i in range(n):
        data = rng.randbytes(rng.randrange(0, 3000))
        mode = 0o755 if i % 7 == 0 else 0o644
        files.append(craft.F(f"site-packages/pkg{i % 9}/sub{i % 4}/m{i:05d}.py", data, mode))
    return sorted(files, key=lambda f: f.path)


def tampered(files: list[craft.F], *bad: int) -> list[bytes]:
    """The payload members of ``files`` with one bit flipped in each of the ``bad`` ones."""
    members = []
    for i, f in enumerate(files):
        data = craft.flip(f.data) if i in bad else f.data
        members.append(craft.member(f.path, data, mode=f.mode))
    return members


def no_stage_and_no_dest(victim: Victim, before: dict[str, tuple[object, ...]]) -> None:
    assert victim.snapshot() == before  # canaries intact, no DEST, no stage beside it


def airgap_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("airgap-")]


# ---- failures in worker threads --------------------------------------------------------


def test_a_hash_failure_on_a_late_member_is_the_rejection_and_nothing_is_left(
    craft_bundle: CraftBundle, victim: Victim, publisher: KeyPair
) -> None:
    files = many_files(600)
    files = [f for f in files if f.data] + [f for f in files if not f.data]  # bad one has bytes
    files.sort(key=lambda f: f.path)
    late = max(i for i, f in enumerate(files) if f.data and i < len(files) - 3)
    bundle = craft_bundle(files=files, payload_members=tampered(files, late))
    before = victim.snapshot()
    with pytest.raises(IntegrityError) as info:
        unpack(bundle, victim.dest, [publisher.pub], now=NOW)
    assert info.value.member == files[late].path
    assert "content differs from the manifest's sha256" in str(info.value)
    no_stage_and_no_dest(victim, before)
    assert airgap_threads() == []


def test_the_earliest_failing_member_in_payload_order_is_reported_every_time(
    craft_bundle: CraftBundle, victim: Victim, publisher: KeyPair
) -> None:
    files = [f for f in many_files(400) if f.data]
    # Small members go to the writers in batches: bad ones in many batches, so that two
    # writers often find one each and the later one may be found first.
    bad = (150, 151, *range(190, 400, 37))
    bundle = craft_bundle(files=files, payload_members=tampered(files, *bad))
    for _ in range(5):
        with pytest.raises(IntegrityError) as info:
            unpack(bundle, victim.dest, [publisher.pub], now=NOW)
        assert info.value.member == files[150].path
        with pytest.raises(IntegrityError) as info:
            verify(bundle, [publisher.pub], now=NOW)
        assert info.value.member == files[150].path
    assert not victim.dest.exists()


def test_a_worker_hash_failure_before_a_main_thread_failure_wins(
    craft_bundle: CraftBundle, victim: Victim, publisher: KeyPair
) -> None:
    # Member 100's bytes are wrong (found by a writer); member 300 is not in the manifest
    # (found by the main thread while the writers may still be busy). A sequential unpack
    # reports 100, so must this.
    files = [f for f in many_files(400) if f.data]
    members = tampered(files, 100)
    members.insert(300, craft.member("site-packages/pkg0/extra.py", b"not listed"))
    bundle = craft_bundle(files=files, payload_members=members)
    with pytest.raises(IntegrityError) as info:
        unpack(bundle, victim.dest, [publisher.pub], now=NOW)
    assert info.value.member == files[100].path


def test_a_main_thread_failure_before_a_worker_failure_wins(
    craft_bundle: CraftBundle, victim: Victim, publisher: KeyPair
) -> None:
    files = [f for f in many_files(400) if f.data]
    members = tampered(files, 300)
    members.insert(100, craft.member("site-packages/pkg0/extra.py", b"not listed"))
    bundle = craft_bundle(files=files, payload_members=members)
    before = victim.snapshot()
    with pytest.raises(IntegrityError, match="extra member not listed") as info:
        unpack(bundle, victim.dest, [publisher.pub], now=NOW)
    assert info.value.member == "site-packages/pkg0/extra.py"
    no_stage_and_no_dest(victim, before)


def test_a_large_member_that_fails_while_small_ones_are_written(
    craft_bundle: CraftBundle, victim: Victim, publisher: KeyPair
) -> None:
    # A 5 MiB member (streamed through the pool in chunks) whose last chunk is wrong, with
    # hundreds of small members queued after it.
    big = craft.F("model/a-weights.bin", random.Random(3).randbytes(5 * MiB + 123))
    files = sorted([big, *[f for f in many_files(300) if f.data]], key=lambda f: f.path)
    index = files.index(big)
    members = craft.members_of(files)
    members[index] = craft.member(big.path, craft.flip(big.data, at=len(big.data) - 7))
    bundle = craft_bundle(files=files, payload_members=members)
    before = victim.snapshot()
    with pytest.raises(IntegrityError) as info:
        unpack(bundle, victim.dest, [publisher.pub], now=NOW)
    assert info.value.member == big.path
    no_stage_and_no_dest(victim, before)
    assert airgap_threads() == []


def test_a_write_error_in_a_worker_is_an_error_not_a_rejection(
    make_bundle: MakeBundle, victim: Victim, publisher: KeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {f.path: (f.data, f.mode) for f in many_files(200)}
    target = sorted(files)[150]
    real = writer_module._write_all
    threads: list[str] = []

    def failing(fd: int, data: bytes | memoryview) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(target):
            threads.append(threading.current_thread().name)
            raise OSError(28, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(writer_module, "_write_all", failing)
    before = victim.snapshot()
    with pytest.raises(BundleError) as info:
        unpack(make_bundle(files=files), victim.dest, [publisher.pub], now=NOW)
    assert info.value.exit_code == EXIT_ERROR
    assert "No space left on device" in str(info.value)
    assert threads and threads[0].startswith("airgap-writer-")  # it really was a worker
    no_stage_and_no_dest(victim, before)


def test_interrupt_while_a_large_member_streams_leaves_nothing(
    make_bundle: MakeBundle, victim: Victim, publisher: KeyPair
) -> None:
    class Interrupting:
        done = 0

        def start(self, label: str, total: int | None = None, unit: str = "B") -> None:
            self.label = label

        def advance(self, amount: int = 1) -> None:
            self.done += amount
            if self.label == "unpacking" and self.done > 3 * MiB:
                raise KeyboardInterrupt

        def finish(self) -> None:
            pass

    files = {"app/score.py": b"x = 1\n", "model/big.bin": os.urandom(8 * MiB)}
    bundle = make_bundle(files=files)
    before = victim.snapshot()
    with pytest.raises(KeyboardInterrupt):
        unpack(bundle, victim.dest, [publisher.pub], now=NOW, progress=Interrupting())
    no_stage_and_no_dest(victim, before)
    assert airgap_threads() == []


# ---- what a good unpack writes -----------------------------------------------------------


def test_many_small_files_and_large_ones_are_written_exactly(
    make_bundle: MakeBundle, victim: Victim, publisher: KeyPair
) -> None:
    rng = random.Random(5)
    files: dict[str, bytes | tuple[bytes, int]] = {
        f.path: (f.data, f.mode) for f in many_files(1500)
    }
    # Large members: random, all zeros (holes), zeros with data between, and sizes that end
    # exactly on, just before and just after a chunk boundary.
    zeros_then_data = bytes(3 * CHUNK) + rng.randbytes(1000) + bytes(CHUNK)
    files["model/random.bin"] = rng.randbytes(3 * CHUNK + 17)
    files["model/zeros.bin"] = bytes(4 * CHUNK)
    files["model/mixed.bin"] = zeros_then_data
    files["model/exact.bin"] = rng.randbytes(2 * CHUNK)
    files["model/under.bin"] = rng.randbytes(CHUNK - 1)
    files["model/over.bin"] = (rng.randbytes(CHUNK + 1), 0o755)
    unpack(make_bundle(files=files), victim.dest, [publisher.pub], now=NOW)
    tree = snapshot(victim.dest)
    for path, value in files.items():
        data, mode = value if isinstance(value, tuple) else (value, 0o644)
        assert tree[path] == ("file", mode, data), path
    # Chunks of zeros are holes: the file reads back the same but takes fewer blocks.
    st = (victim.dest / "model" / "zeros.bin").stat()
    assert st.st_size == 4 * CHUNK
    assert st.st_blocks * 512 < CHUNK
    # The whole tree, re-hashed from disk, matches the signed manifest.
    assert len(verify(make_bundle(files=files), [publisher.pub], now=NOW).manifest.files) > 1500
    got = hashlib.sha256((victim.dest / "model" / "mixed.bin").read_bytes()).hexdigest()
    assert got == hashlib.sha256(zeros_then_data).hexdigest()


def test_unpack_through_the_cli_without_network(
    make_bundle: MakeBundle, craft_bundle: CraftBundle, tmp_path: Path, publisher: KeyPair
) -> None:
    require_netns()
    files: dict[str, bytes | tuple[bytes, int]] = {
        f.path: (f.data, f.mode) for f in many_files(800)
    }
    files["model/weights.bin"] = random.Random(7).randbytes(6 * MiB + 5)
    good = make_bundle("good.airgap", files=files)
    listed = [f for f in many_files(800) if f.data]
    bad = craft_bundle(files=listed, payload_members=tampered(listed, 700))

    def airgap(*args: str | Path) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "bundler", *map(str, args)]
        netns = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        return subprocess.run([*netns, *cmd], capture_output=True, text=True, timeout=120, env=env)

    dest = tmp_path / "srv" / "demo"
    dest.parent.mkdir()
    proc = airgap("verify", good, "--trust", publisher.pub)
    assert proc.returncode == 0, proc.stderr
    proc = airgap("unpack", good, dest, "--trust", publisher.pub, "-q")
    assert proc.returncode == 0, proc.stderr
    tree = snapshot(dest)
    for path, value in files.items():
        data, mode = value if isinstance(value, tuple) else (value, 0o644)
        assert tree[path] == ("file", mode, data), path

    proc = airgap("unpack", bad, tmp_path / "srv" / "other", "--trust", publisher.pub)
    assert proc.returncode == EXIT_REJECTED
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        f"bundle rejected: integrity: {listed[700].path}: content differs from the manifest's "
        "sha256"
    ], proc.stderr
    assert sorted(p.name for p in (tmp_path / "srv").iterdir()) == ["demo"]
