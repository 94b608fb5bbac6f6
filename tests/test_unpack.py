"""Unpacking: all or nothing, stale stages, rollback, upgrades, and re-checking the tree."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import craft
import pytest
from conftest import NOW, CraftBundle, KeyPair, MakeBundle, Victim, snapshot
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bundler.errors import (
    EXIT_ERROR,
    EXIT_REJECTED,
    BundleError,
    BundleRejected,
    ExpiredError,
    IntegrityError,
    RollbackError,
    SignatureError,
    TreeModifiedError,
)
from bundler.formats.manifest import Manifest, parse_manifest
from bundler.formats.signing import load_trusted_keys, public_key_pem
from bundler.verify import unpack as unpack_module
from bundler.verify.policy import check_rollback, verify_manifest
from bundler.verify.tree import check_unpacked
from bundler.verify.unpack import open_verified, read_installed, unpack, verify

_FIXED_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
V1 = {
    "app/score.py": b"def init():\n    pass\n\n\ndef run(raw_data):\n    return 1\n",
    "app/helpers/util.py": b"HELPER = 1\n",
    "model/model.bin": b"version one weights",
    "runtime/start.sh": (b"#!/bin/sh\nexit 0\n", 0o755),
    "site-packages/tiny/__init__.py": b"VALUE = 1\n",
}
V2 = {
    "app/score.py": b"def init():\n    pass\n\n\ndef run(raw_data):\n    return 2\n",
    "model/model.bin": b"version two weights, longer",
    "model/extra/vocab.txt": b"a\nb\n",
    "runtime/start.sh": (b"#!/bin/sh\nexit 0\n", 0o755),
    "site-packages/tiny/__init__.py": b"VALUE = 2\n",
}


def payload_tree(dest: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under DEST except the .airgap state: path -> (mode, bytes)."""
    tree = {}
    for rel, entry in snapshot(dest).items():
        if entry[0] == "file" and not rel.startswith(".airgap/"):
            tree[rel] = (entry[1], entry[2])
    return tree


def expected_tree(files: dict[str, bytes | tuple[bytes, int]]) -> dict[str, tuple[int, bytes]]:
    out = {}
    for path, value in files.items():
        data, mode = value if isinstance(value, tuple) else (value, 0o644)
        out[path] = (mode, data)
    return out


def stages(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".airgap-stage-" in p.name)


# ---- the happy path ----------------------------------------------------------------------


def test_unpack_writes_exactly_the_payload_and_the_state(
    make_bundle: MakeBundle, victim: Victim, publisher: KeyPair
) -> None:
    bundle = make_bundle(files=V1)
    verified = unpack(bundle, victim.dest, [publisher.pub], now=NOW)

    assert payload_tree(victim.dest) == expected_tree(V1)
    state = victim.dest / ".airgap"
    assert sorted(p.name for p in state.iterdir()) == [
        "manifest.json",
        "manifest.json.sig",
        "signer.pub",
    ]
    assert (state / "manifest.json").read_bytes() == verified.manifest_bytes
    assert (state / "manifest.json.sig").read_bytes() == verified.signature
    assert (state / "signer.pub").read_bytes() == public_key_pem(verified.key.public)
    assert verified.key.key_id == publisher.key_id
    # Folders are 0755 whatever the umask; nothing else appeared beside DEST.
    for path in [victim.dest, *[p for p in victim.dest.rglob("*") if p.is_dir()]]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o755
    assert sorted(p.name for p in victim.outer.iterdir()) == ["canary.txt", "dest", "etc", "evil"]


def test_unpack_into_an_existing_empty_folder(
    make_bundle: MakeBundle, victim: Victim, publisher: KeyPair
) -> None:
    victim.dest.mkdir()
    unpack(make_bundle(files=V1), victim.dest, [publisher.pub], now=NOW)
    assert payload_tree(victim.dest) == expected_tree(V1)


def test_unpack_umask_does_not_change_modes(
    make_bundle: MakeBundle, victim: Victim, publisher: KeyPair
) -> None:
    bundle = make_bundle(files=V1)
    old = os.umask(0o077)
    try:
        unpack(bundle, victim.dest, [publisher.pub], now=NOW)
    finally:
        os.umask(old)
    assert payload_tree(victim.dest) == expected_tree(V1)


def test_verify_writes_nothing(make_bundle: MakeBundle, victim: Victim, publisher: KeyPair) -> None:
    bundle = make_bundle(files=V1)
    before = snapshot(bundle.parent)
    verified = verify(bundle, [publisher.pub], now=NOW)
    assert verified.manifest.file_map().keys() == V1.keys()
    assert snapshot(bundle.parent) == before


class RecordingProgress:
    def __init__(self) -> None:
        self.steps: list[tuple[str, int | None, int]] = []

    def start(self, label: str, total: int | None = None, unit: str = "B") -> None:
        self.steps.append((label, total, 0))

    def advance(self, amount: int = 1) -> None:
        label, total, done = self.steps[-1]
        self.steps[-1] = (label, total, done + amount)

    def finish(self) -> None:
        pass


def test_unpack_reports_progress_in_bytes(
    make_bundle: MakeBundle, victim: Victim, publisher: KeyPair
) -> None:
    progress = RecordingProgress()
    verified = unpack(make_bundle(files=V1), victim.dest, [publisher.pub], progress=progress)
    total = verified.manifest.payload.unpacked_size
    assert ("unpacking", total, total) in progress.steps


# ---- verify before parsing ----------------------------------------------------------------


def test_nothing_is_decompressed_before_the_payload_hash_matches(
    craft_bundle: CraftBundle, victim: Victim, publisher: KeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bundler.formats.archive as archive

    def no_decompressor(*args: object, **kwargs: object) -> None:
        raise AssertionError("a decompressor was created before the payload hash matched")

    monkeypatch.setattr(archive.zstandard, "ZstdDecompressor", no_decompressor)
    bundle = craft_bundle(edit_payload=craft.flip)
    with pytest.raises(IntegrityError, match="sha256 differs"):
        unpack(bundle, victim.dest, [publisher.pub], now=NOW)
    with pytest.raises(IntegrityError, match="sha256 differs"):
        verify(bundle, [publisher.pub], now=NOW)


def test_open_verified_reads_no_payload_byte_as_zstd(
    craft_bundle: CraftBundle, publisher: KeyPair
) -> None:
    # The payload is not zstd at all, but its hash is signed: open_verified only hashes it.
    bundle = craft_bundle(compress=lambda t: b"not zstd " * 100)
    assert open_verified(bundle, [publisher.pub], now=NOW).manifest.name == "demo"
    with pytest.raises(IntegrityError, match="zstd stream is corrupt"):
        verify(bundle, [publisher.pub], now=NOW)


# ---- atomicity --------------------------------------------------------------------------


def test_write_failure_midway_leaves_dest_and_parent_untouched(
    make_bundle: MakeBundle, victim: Victim, publisher: KeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    unpack(make_bundle(files=V1), victim.dest, [publisher.pub], now=NOW)
    before = victim.snapshot()
    real_write = unpack_module.Stage.write
    written: list[str] = []

    def failing_write(self, entry, chunks, progress) -> None:  # type: ignore[no-untyped-def]
        if written:
            raise OSError(28, "No space left on device")
        real_write(self, entry, chunks, progress)
        written.append(entry.path)

    monkeypatch.setattr(unpack_module.Stage, "write", failing_write)
    with pytest.raises(BundleError) as info:
        unpack(make_bundle(files=V2), victim.dest, [publisher.pub], now=NOW)
    assert not isinstance(info.value, BundleRejected)
    assert info.value.exit_code == EXIT_ERROR
    assert "No space left on device" in str(info.value)
    assert written  # the stage really had content before the failure
    assert victim.snapshot() == before


def test_interrupt_midway_removes_the_stage(
    make_bundle: MakeBundle, victim: Victim, publisher: KeyPair
) -> None:
    class Interrupting(RecordingProgress):
        def advance(self, amount: int = 1) -> None:
            if self.steps and self.steps[-1][0] == "unpacking":
                raise KeyboardInterrupt
            super().advance(amount)

    before = victim.snapshot()
    with pytest.raises(KeyboardInterrupt):
        unpack(make_bundle(files=V1), victim.dest, [publisher.pub], progress=Interrupting())
    assert victim.snapshot() == before


def test_failed_check_on_last_member_removes_a_stage_with_content(
    craft_bundle: CraftBundle, victim: Victim, publisher: KeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The last member's bytes differ from the manifest: every earlier member was staged.
    last = craft.DEFAULT_FILES[-1]
    bundle = craft_bundle(
        payload_members=[
            *craft.members_of(craft.DEFAULT_FILES[:-1]),
            craft.member(last.path, craft.flip(last.data)),
        ]
    )
    staged: list[Path] = []
    real_mkdtemp = unpack_module.tempfile.mkdtemp

    def recording_mkdtemp(*args, **kwargs) -> str:  # type: ignore[no-untyped-def]
        staged.append(Path(real_mkdtemp(*args, **kwargs)))
        return str(staged[-1])

    monkeypatch.setattr(unpack_module.tempfile, "mkdtemp", recording_mkdtemp)
    # Files are created by the writer pool's threads, so what the stage held is counted
    # when it is removed (after the pool was joined), not when each member is handed over.
    real_remove = unpack_module._remove
    seen: list[int] = []

    def counting_remove(path: Path) -> None:
        seen.append(sum(1 for p in path.rglob("*") if p.is_file()))
        real_remove(path)

    monkeypatch.setattr(unpack_module, "_remove", counting_remove)
    before = victim.snapshot()
    with pytest.raises(IntegrityError, match=f"{last.path}: content differs"):
        unpack(bundle, victim.dest, [publisher.pub], now=NOW)
    # Every member was staged, the last one too (written, then its hash failed).
    assert seen == [len(craft.DEFAULT_FILES)]
    assert staged and staged[0].parent == victim.outer and not staged[0].exists()
    assert victim.snapshot() == before


# ---- stale stages -------------------------------------------------------------------------

_KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from bundler.verify import unpack as u

def killed(path):
    os.kill(os.getpid(), signal.SIGKILL)  # as if the power went out before the rename

u._syncfs = killed
u.unpack(Path(sys.argv[1]), Path(sys.argv[2]), [Path(sys.argv[3])], now=int(sys.argv[4]))
"""


def test_stage_left_by_a_killed_run_is_cleaned_up_by_the_next_run(
    make_bundle: MakeBundle, victim: Victim, publisher: KeyPair
) -> None:
    v1, v2 = make_bundle(files=V1), make_bundle(files=V2, version="2.0")
    unpack(v1, victim.dest, [publisher.pub], now=NOW)
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            _KILLED_RUN,
            str(v2),
            str(victim.dest),
            str(publisher.pub),
            str(NOW),
        ],
        capture_output=True,
        check=False,
    )
    assert run.returncode == -signal.SIGKILL, run.stderr
    left = stages(victim.outer)
    assert len(left) == 1 and left[0].startswith(".dest.airgap-stage-")
    # The killed run got as far as writing everything, yet DEST is still the old version.
    assert payload_tree(victim.outer / left[0]) == expected_tree(V2)
    assert payload_tree(victim.dest) == expected_tree(V1)

    unpack(v2, victim.dest, [publisher.pub], now=NOW)
    assert stages(victim.outer) == []
    assert payload_tree(victim.dest) == expected_tree(V2)


def test_stale_stage_cleanup_keeps_other_destinations_stages(
    make_bundle: MakeBundle, victim: Victim, publisher: KeyPair
) -> None:
    mine = victim.outer / ".dest.airgap-stage-abc123"
    (mine / "app").mkdir(parents=True)
    (mine / "app" / "half-written.py").write_bytes(b"x")
    other = victim.outer / ".dest2.airgap-stage-def456"
    other.mkdir()
    unpack(make_bundle(files=V1), victim.dest, [publisher.pub], now=NOW)
    assert stages(victim.outer) == [".dest2.airgap-stage-def456"]


def test_stale_stage_cleanup_reads_the_dest_name_literally(
    make_bundle: MakeBundle, victim: Victim, publisher: KeyPair
) -> None:
    # "m[12]" as a glob pattern would match the stages of "m1" and "m2".
    (victim.outer / ".m1.airgap-stage-abc123").mkdir()
    (victim.outer / ".m[12].airgap-stage-def456").mkdir()
    unpack(make_bundle(files=V1), victim.outer / "m[12]", [publisher.pub], now=NOW)
    assert stages(victim.outer) == [".m1.airgap-stage-abc123"]


def test_stale_stage_is_cleaned_even_when_the_bundle_is_rejected(
    craft_bundle: CraftBundle, victim: Victim, publisher: KeyPair
) -> None:
    (victim.outer / ".dest.airgap-stage-old").mkdir()
    with pytest.raises(IntegrityError):
        unpack(craft_bundle(edit_payload=craft.flip), victim.dest, [publisher.pub], now=NOW)
    assert stages(victim.outer) == []


# ---- rollback and upgrades -----------------------------------------------------------------


def test_rollback_is_refused_and_dest_is_kept(
    make_bundle: MakeBundle, victim: Victim, publisher: KeyPair
) -> None:
    unpack(make_bundle(files=V2, version="2.0"), victim.dest, [publisher.pub], now=NOW)
    before = victim.snapshot()
    with pytest.raises(RollbackError) as info:
        unpack(make_bundle(files=V1, version="1.0"), victim.dest, [publisher.pub], now=NOW)
    assert info.value.exit_code == EXIT_REJECTED
    assert "--allow-downgrade" in info.value.diagnostics()
    assert victim.snapshot() == before


def test_allow_downgrade_installs_the_older_bundle(
    make_bundle: MakeBundle, victim: Victim, publisher: KeyPair
) -> None:
    unpack(make_bundle(files=V2, version="2.0"), victim.dest, [publisher.pub], now=NOW)
    older = make_bundle(files=V1, version="1.0")
    verified = unpack(older, victim.dest, [publisher.pub], now=NOW, allow_downgrade=True)
    assert verified.manifest.version == "1.0"
    assert payload_tree(victim.dest) == expected_tree(V1)
    installed = read_installed(victim.dest)
    assert installed is not None and installed.version == "1.0"
    assert stages(victim.outer) == []


def test_same_version_can_be_unpacked_again(
    make_bundle: MakeBundle, victim: Victim, publisher: KeyPair
) -> None:
    bundle = make_bundle(files=V1)
    unpack(bundle, victim.dest, [publisher.pub], now=NOW)
    (victim.dest / "app" / "score.py").write_bytes(b"edited by hand")
    unpack(bundle, victim.dest, [publisher.pub], now=NOW)
    assert payload_tree(victim.dest) == expected_tree(V1)


@pytest.mark.parametrize("use_exchange", [True, False], ids=["renameat2", "rename-fallback"])
def test_upgrade_replaces_dest_entirely(
    make_bundle: MakeBundle,
    victim: Victim,
    publisher: KeyPair,
    monkeypatch: pytest.MonkeyPatch,
    use_exchange: bool,
) -> None:
    unpack(make_bundle(files=V1), victim.dest, [publisher.pub], now=NOW)
    # Files the old tree had that the new one does not, including the runner's cache.
    (victim.dest / ".airgap" / "venv").mkdir()
    (victim.dest / ".airgap" / "venv" / "pyvenv.cfg").write_bytes(b"home = /usr\n")
    if not use_exchange:
        monkeypatch.setattr(unpack_module, "_exchange", lambda a, b: False)
    inode = victim.dest.stat().st_ino

    unpack(make_bundle(files=V2, version="2.0"), victim.dest, [publisher.pub], now=NOW)

    assert payload_tree(victim.dest) == expected_tree(V2)
    assert not (victim.dest / "app" / "helpers").exists()
    assert sorted(p.name for p in (victim.dest / ".airgap").iterdir()) == [
        "manifest.json",
        "manifest.json.sig",
        "signer.pub",
    ]
    assert victim.dest.stat().st_ino != inode  # a new tree, swapped in by rename
    assert sorted(p.name for p in victim.outer.iterdir()) == ["canary.txt", "dest", "etc", "evil"]
    assert check_unpacked(victim.dest).version == "2.0"


def test_another_bundle_name_replaces_without_rollback_check(
    make_bundle: MakeBundle, victim: Victim, publisher: KeyPair
) -> None:
    unpack(make_bundle(files=V2, version="9.0"), victim.dest, [publisher.pub], now=NOW)
    unpack(make_bundle(files=V1, name="other", version="0.1"), victim.dest, [publisher.pub])
    installed = read_installed(victim.dest)
    assert installed is not None and (installed.name, installed.version) == ("other", "0.1")


def _manifest(version: str, created: int) -> Manifest:
    parts = craft.craft(_FIXED_KEY, version=version, created=created)
    return parse_manifest(parts.manifest_bytes)


@pytest.mark.parametrize(
    ("new", "old", "refused"),
    [
        (("1.9", 10), ("1.10", 5), True),  # PEP 440: 1.10 is newer than 1.9
        (("1.10", 5), ("1.9", 10), False),
        (("2.0rc1", 10), ("2.0", 5), True),
        (("2.0", 10), ("2.0", 20), False),  # same version: a reinstall
        (("nightly-b", 10), ("nightly-a", 20), True),  # not PEP 440: creation time decides
        (("nightly-b", 30), ("nightly-a", 20), False),
    ],
)
def test_check_rollback_ordering(new: tuple[str, int], old: tuple[str, int], refused: bool) -> None:
    newer, installed = _manifest(*new), _manifest(*old)
    if refused:
        with pytest.raises(RollbackError, match="is older than"):
            check_rollback(newer, installed, allow_downgrade=False)
    else:
        check_rollback(newer, installed, allow_downgrade=False)
    check_rollback(newer, installed, allow_downgrade=True)
    check_rollback(newer, None, allow_downgrade=False)


# ---- destinations airgap did not make -----------------------------------------------------


def test_unrelated_non_empty_dest_is_refused(
    make_bundle: MakeBundle, victim: Victim, publisher: KeyPair
) -> None:
    victim.dest.mkdir()
    (victim.dest / "thesis.tex").write_bytes(b"years of work")
    before = victim.snapshot()
    with pytest.raises(BundleError, match="is not empty and was not made by `airgap unpack`") as e:
        unpack(make_bundle(files=V1), victim.dest, [publisher.pub], now=NOW)
    assert e.value.exit_code == EXIT_ERROR
    assert victim.snapshot() == before


def test_dest_that_is_a_file_is_refused(
    make_bundle: MakeBundle, victim: Victim, publisher: KeyPair
) -> None:
    victim.dest.write_bytes(b"a file")
    before = victim.snapshot()
    with pytest.raises(BundleError, match="exists and is not a folder"):
        unpack(make_bundle(files=V1), victim.dest, [publisher.pub], now=NOW)
    assert victim.snapshot() == before


def test_dest_with_a_corrupt_state_manifest_is_refused(
    make_bundle: MakeBundle, victim: Victim, publisher: KeyPair
) -> None:
    unpack(make_bundle(files=V1), victim.dest, [publisher.pub], now=NOW)
    (victim.dest / ".airgap" / "manifest.json").write_bytes(b"{not json")
    before = victim.snapshot()
    with pytest.raises(BundleError, match="is not a valid manifest") as info:
        unpack(make_bundle(files=V2, version="2.0"), victim.dest, [publisher.pub], now=NOW)
    assert "remove" in info.value.diagnostics()
    assert victim.snapshot() == before


def test_missing_parent_is_refused(
    make_bundle: MakeBundle, tmp_path: Path, publisher: KeyPair
) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        unpack(make_bundle(files=V1), tmp_path / "no" / "dest", [publisher.pub], now=NOW)
    assert not (tmp_path / "no").exists()


def test_a_parent_that_takes_no_new_folder_is_an_error_not_a_crash(
    make_bundle: MakeBundle, publisher: KeyPair
) -> None:
    # /proc takes no new folders, even from root: the stage cannot be made.
    with pytest.raises(BundleError, match="cannot write under /proc: ") as info:
        unpack(make_bundle(files=V1), Path("/proc/airgap-dest"), [publisher.pub], now=NOW)
    assert not isinstance(info.value, BundleRejected)
    assert info.value.exit_code == EXIT_ERROR


def test_missing_bundle_is_an_error(tmp_path: Path, publisher: KeyPair) -> None:
    with pytest.raises(BundleError, match="cannot read bundle"):
        verify(tmp_path / "missing.airgap", [publisher.pub])


# ---- check_unpacked ------------------------------------------------------------------------


@pytest.fixture
def unpacked(make_bundle: MakeBundle, victim: Victim, publisher: KeyPair) -> Path:
    unpack(make_bundle(files=V1), victim.dest, [publisher.pub], now=NOW)
    return victim.dest


def test_check_unpacked_accepts_the_fresh_tree(unpacked: Path, publisher: KeyPair) -> None:
    manifest = check_unpacked(unpacked)
    assert manifest.file_map().keys() == V1.keys()
    assert check_unpacked(unpacked, trust=[publisher.pub]) == manifest
    # The local runner's cache lives in .airgap and is not part of the payload.
    (unpacked / ".airgap" / "venv" / "bin").mkdir(parents=True)
    (unpacked / ".airgap" / "venv" / "bin" / "python").write_bytes(b"")
    assert check_unpacked(unpacked) == manifest


def _expect_tree_error(dest: Path, member: str, text: str, **kwargs) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TreeModifiedError) as info:
        check_unpacked(dest, **kwargs)
    assert info.value.member == member
    assert str(info.value).startswith(f"tree: {member}: {text}")
    assert info.value.exit_code == EXIT_REJECTED


def test_check_unpacked_detects_an_edited_file(unpacked: Path) -> None:
    (unpacked / "app" / "score.py").write_bytes(b"import os; os.system('id')\n")
    _expect_tree_error(unpacked, "app/score.py", "file changed since unpack")


def test_check_unpacked_detects_a_same_size_edit(unpacked: Path) -> None:
    path = unpacked / "model" / "model.bin"
    path.write_bytes(craft.flip(path.read_bytes()))
    _expect_tree_error(unpacked, "model/model.bin", "file changed since unpack")


def test_check_unpacked_detects_an_added_file(unpacked: Path) -> None:
    (unpacked / "site-packages" / "evil.pth").write_bytes(b"import os\n")
    _expect_tree_error(unpacked, "site-packages/evil.pth", "file added since unpack")


def test_check_unpacked_detects_an_added_pycache(unpacked: Path) -> None:
    cache = unpacked / "site-packages" / "tiny" / "__pycache__"
    cache.mkdir()
    (cache / "__init__.cpython-311.pyc").write_bytes(b"\x00" * 16)
    _expect_tree_error(
        unpacked,
        "site-packages/tiny/__pycache__/__init__.cpython-311.pyc",
        "file added since unpack",
    )


def test_check_unpacked_detects_a_removed_file(unpacked: Path) -> None:
    (unpacked / "app" / "helpers" / "util.py").unlink()
    _expect_tree_error(unpacked, "app/helpers/util.py", "file missing since unpack")


def test_check_unpacked_detects_a_removed_folder(unpacked: Path) -> None:
    import shutil

    shutil.rmtree(unpacked / "model")
    _expect_tree_error(unpacked, "model/model.bin", "file missing since unpack")


def test_check_unpacked_detects_a_mode_change(unpacked: Path) -> None:
    (unpacked / "app" / "score.py").chmod(0o777)
    _expect_tree_error(unpacked, "app/score.py", "mode 777 differs from the manifest's 644")


def test_check_unpacked_detects_a_file_replaced_by_a_symlink(unpacked: Path) -> None:
    target = unpacked / "app" / "score.py"
    copy = unpacked.parent / "score-copy.py"
    copy.write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(copy)
    _expect_tree_error(unpacked, "app/score.py", "no longer a regular file")


def test_check_unpacked_refuses_a_fifo_without_blocking(unpacked: Path) -> None:
    # Nobody writes to this FIFO: a plain open() would wait forever.
    target = unpacked / "app" / "score.py"
    target.unlink()
    os.mkfifo(target, 0o644)
    _expect_tree_error(unpacked, "app/score.py", "no longer a regular file")


def test_open_regular_refuses_links_and_fifos_at_open_time(tmp_path: Path) -> None:
    from bundler.errors import TreeModifiedError
    from bundler.verify.tree import open_regular

    real = tmp_path / "real"
    real.write_bytes(b"data")
    (tmp_path / "link").symlink_to(real)
    os.mkfifo(tmp_path / "fifo")
    with open_regular(real, "real") as f:
        assert f.read() == b"data"
    with pytest.raises(TreeModifiedError, match="no longer a regular file"):
        open_regular(tmp_path / "link", "link")
    with pytest.raises(TreeModifiedError, match="no longer a regular file"):
        open_regular(tmp_path / "fifo", "fifo")


def test_check_unpacked_detects_an_added_symlinked_folder(unpacked: Path) -> None:
    (unpacked / "site-packages" / "linked").symlink_to(unpacked.parent / "etc")
    _expect_tree_error(unpacked, "site-packages/linked", "symbolic link added")


def test_check_unpacked_detects_a_top_folder_replaced_by_a_symlink(unpacked: Path) -> None:
    # An identical copy elsewhere, linked in place of site-packages: the files all match,
    # but the tree is no longer the one unpacked.
    import shutil

    elsewhere = unpacked.parent / "elsewhere"
    shutil.copytree(unpacked / "site-packages", elsewhere)
    shutil.rmtree(unpacked / "site-packages")
    (unpacked / "site-packages").symlink_to(elsewhere)
    _expect_tree_error(unpacked, "site-packages", "symbolic link added")


def test_check_unpacked_detects_the_state_folder_replaced_by_a_symlink(
    unpacked: Path, publisher: KeyPair
) -> None:
    # A faithful copy, signed state included: still refused, since the state and the local
    # runner's venv would then live wherever the link points.
    import shutil

    elsewhere = unpacked.parent / "state-elsewhere"
    shutil.copytree(unpacked / ".airgap", elsewhere)
    shutil.rmtree(unpacked / ".airgap")
    (unpacked / ".airgap").symlink_to(elsewhere)
    _expect_tree_error(unpacked, ".airgap", "symbolic link added", trust=[publisher.pub])


def test_check_unpacked_roots_limit_the_check(unpacked: Path) -> None:
    (unpacked / "app" / "score.py").write_bytes(b"edited")
    manifest = check_unpacked(unpacked, roots={"site-packages", "model"})
    assert manifest.name == "demo"
    _expect_tree_error(unpacked, "app/score.py", "file changed since unpack", roots={"app"})


def test_check_unpacked_refuses_an_edited_state_manifest(unpacked: Path) -> None:
    state = unpacked / ".airgap" / "manifest.json"
    state.write_bytes(state.read_bytes().replace(b'"version":"1.0"', b'"version":"1.1"'))
    with pytest.raises(SignatureError, match="does not verify"):
        check_unpacked(unpacked)


def test_check_unpacked_with_trust_refuses_another_signer(
    unpacked: Path, attacker: KeyPair
) -> None:
    with pytest.raises(SignatureError, match="not trusted here"):
        check_unpacked(unpacked, trust=[attacker.pub])


def test_check_unpacked_needs_an_unpacked_bundle(victim: Victim) -> None:
    victim.dest.mkdir()
    with pytest.raises(BundleError, match="has no unpacked bundle") as info:
        check_unpacked(victim.dest)
    assert not isinstance(info.value, BundleRejected)


def test_a_bundle_that_is_not_a_regular_file_is_an_error(
    tmp_path: Path, publisher: KeyPair
) -> None:
    # A pipe (`airgap verify <(curl ...)`) cannot be seeked; say so instead of crashing.
    fifo = tmp_path / "bundle.fifo"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)  # keeps open() from blocking on a reader-only FIFO
    try:
        with pytest.raises(BundleError, match="is not a regular file") as info:
            verify(fifo, [publisher.pub])
    finally:
        os.close(writer)
    assert not isinstance(info.value, BundleRejected)


def test_symlinked_dest_is_refused_and_nothing_changes(
    make_bundle: MakeBundle, victim: Victim, publisher: KeyPair
) -> None:
    real = victim.outer / "real"
    real.mkdir()
    victim.dest.symlink_to(real)
    bundle = make_bundle(files=V1)
    with pytest.raises(BundleError, match="is a symbolic link") as info:
        unpack(bundle, victim.dest, [publisher.pub], now=NOW)
    assert not isinstance(info.value, BundleRejected)
    assert "pass the real folder instead" in info.value.diagnostics()
    assert stages(victim.outer) == []
    assert victim.dest.is_symlink()
    assert list(real.iterdir()) == []


# ---- policy, without files ------------------------------------------------------------------


def test_expiry_is_inclusive_of_the_expiry_second(publisher: KeyPair) -> None:
    parts = craft.craft(publisher.private, expires=NOW)
    keys = load_trusted_keys([publisher.pub])
    verified = verify_manifest(parts.manifest_bytes, parts.signature, keys, now=NOW)
    assert verified.manifest.expires == NOW
    with pytest.raises(ExpiredError, match=f"expired at {NOW} "):
        verify_manifest(parts.manifest_bytes, parts.signature, keys, now=NOW + 1)


def test_signature_is_checked_before_the_manifest_is_parsed(publisher: KeyPair) -> None:
    # Garbage that is not even JSON, unsigned: the refusal is about the signature, not JSON.
    keys = load_trusted_keys([publisher.pub])
    with pytest.raises(SignatureError, match="does not verify"):
        verify_manifest(b"{not json", bytes(64), keys, now=NOW)
