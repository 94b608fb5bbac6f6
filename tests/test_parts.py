"""Split bundles through the real CLI: `airgap split` writes parts and a signed index that
standard tools check; `airgap verify` and `airgap unpack` read the parts in place (under
`unshare -n`), naming a missing, reordered, truncated, foreign, duplicated, extra or damaged
part, an untrusted index, and skipping checked parts with --resume but never trusting that
for the bytes they read."""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import KeyPair, MakeBundle, Victim, require_netns, snapshot

from bundler.errors import EXIT_REJECTED, EXIT_USAGE, PartError, UsageError
from bundler.formats.parts import PartsFile, parse_size
from bundler.formats.source import read_index

AIRGAP = [sys.executable, "-m", "bundler"]
MODEL_FILE = 1_200_000  # three of them: a bundle of ~3.6 MB, four parts of 1M
SIZE = "1M"


def airgap(
    *args: str | Path,
    netns: bool = False,
    max_file: int | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """The real CLI; ``netns``: inside `unshare -n` (loopback only); ``max_file``: with
    RLIMIT_FSIZE at that many bytes, so writing any larger file fails (Python ignores
    SIGXFSZ, so the write raises EFBIG and the command fails)."""
    cmd = [*AIRGAP, *map(str, args)]
    if netns:
        require_netns()
        cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]

    def limit() -> None:
        if max_file is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file, max_file))

    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, preexec_fn=limit
    )


def model_files(seed: int) -> dict[str, bytes]:
    rnd = random.Random(seed)  # incompressible, so the bundle is as large as its files
    return {
        "app/score.py": b"def init():\n    pass\n\n\ndef run(raw_data):\n    return raw_data\n",
        "model/a.bin": rnd.randbytes(MODEL_FILE),
        "model/b.bin": rnd.randbytes(MODEL_FILE),
        "model/c.bin": rnd.randbytes(MODEL_FILE),
    }


@dataclass(frozen=True)
class Split:
    bundle: Path  # the original, only on the online side
    folder: Path  # the isolated side's copy: parts, index, signature, sums; no bundle

    @property
    def index(self) -> Path:
        return self.folder / "m.airgap.split.json"

    def part(self, n: int) -> Path:
        return self.folder / f"m.airgap.part{n:03d}"

    @property
    def parts(self) -> list[Path]:
        return sorted(self.folder.glob("m.airgap.part*"))


def split_bundle(bundle: Path, out: Path, key: KeyPair, size: str = SIZE) -> None:
    out.mkdir(parents=True, exist_ok=True)
    proc = airgap("split", bundle, "--size", size, "--key", key.key, "-o", out, "-q")
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def split(tmp_path: Path, make_bundle: MakeBundle, publisher: KeyPair) -> Split:
    (tmp_path / "online").mkdir()
    bundle = make_bundle("online/m.airgap", files=model_files(1))
    split_bundle(bundle, tmp_path / "online", publisher)
    # Only what travels: the parts, the index, its signature and the sums file.
    folder = tmp_path / "isolated"
    folder.mkdir()
    for p in sorted((tmp_path / "online").iterdir()):
        if p.name != "m.airgap":
            shutil.copy2(p, folder / p.name)
    return Split(bundle=bundle, folder=folder)


def rejected(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == EXIT_REJECTED, (proc.returncode, proc.stdout, proc.stderr)
    line = proc.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in line, line
    return line


# ---- what split writes --------------------------------------------------------------------


def test_parts_are_numbered_the_last_shorter_and_cat_gives_the_bundle(split: Split) -> None:
    data = split.bundle.read_bytes()
    sizes = [p.stat().st_size for p in split.parts]
    assert [p.name for p in split.parts] == [f"m.airgap.part{n:03d}" for n in range(1, 5)]
    assert sizes[:-1] == [1_000_000] * 3
    assert 0 < sizes[-1] < 1_000_000
    # `cat` of the parts (a shell glob matches only them) is the bundle, byte for byte.
    joined = subprocess.run(
        "cat m.airgap.part*", shell=True, cwd=split.folder, capture_output=True, check=True
    ).stdout
    assert joined == data
    index = json.loads(split.index.read_text())
    assert index["format"] == "airgap-parts/1"
    assert index["bundle"]["size"] == len(data)
    assert index["bundle"]["name"] == "demo"
    assert [p["size"] for p in index["parts"]] == sizes


def test_sha256sum_checks_the_parts_and_openssl_the_index(split: Split, publisher: KeyPair) -> None:
    ok = subprocess.run(
        ["sha256sum", "-c", "m.airgap.sha256"], cwd=split.folder, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count(": OK") == 4
    # The signed index carries the same sums: openssl checks the signature, jq-free.
    sig = subprocess.run(
        [
            "openssl",
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            publisher.pub,
            "-rawin",
            "-in",
            split.index,
            "-sigfile",
            f"{split.index}.sig",
        ],
        capture_output=True,
        text=True,
    )
    assert sig.returncode == 0 and "Signature Verified Successfully" in sig.stdout, sig.stderr
    index = json.loads(split.index.read_text())
    sums = "".join(f"{p['sha256']}  {p['file']}\n" for p in index["parts"])
    assert (split.folder / "m.airgap.sha256").read_text() == sums
    if shutil.which("jq"):  # the README's check of the signed sums themselves
        signed = subprocess.run(
            """jq -r '.parts[] | "\\(.sha256)  \\(.file)"' m.airgap.split.json | sha256sum -c""",
            shell=True,
            cwd=split.folder,
            capture_output=True,
            text=True,
        )
        assert signed.returncode == 0 and signed.stdout.count(": OK") == 4, signed.stderr
    # A damaged part fails sha256sum too.
    with split.part(2).open("r+b") as f:
        f.seek(500)
        f.write(b"\xff")
    bad = subprocess.run(
        ["sha256sum", "-c", "m.airgap.sha256"], cwd=split.folder, capture_output=True, text=True
    )
    assert bad.returncode != 0 and "m.airgap.part002: FAILED" in bad.stdout


def test_split_output_is_byte_identical_for_the_same_bundle_and_key(
    split: Split, tmp_path: Path, publisher: KeyPair
) -> None:
    again = tmp_path / "again"
    split_bundle(split.bundle, again, publisher)
    first = {p.name: p.read_bytes() for p in split.folder.iterdir()}
    second = {p.name: p.read_bytes() for p in again.iterdir()}
    assert first == second
    assert len(first) == 4 + 3  # parts, index, signature, sums


def test_size_forms_and_refusals(split: Split, publisher: KeyPair) -> None:
    assert parse_size("4G") == 4_000_000_000
    assert parse_size("4GB") == 4_000_000_000
    assert parse_size("4GiB") == 4 * 2**30
    assert parse_size("700M") == 700_000_000
    assert parse_size("4.7G") == 4_700_000_000
    assert parse_size("4000000000") == 4_000_000_000
    for bad in ("0", "100K", "12X", "", "-1G"):
        with pytest.raises(UsageError):
            parse_size(bad)
        proc = airgap("split", split.bundle, "--size", bad, "--key", publisher.key)
        assert proc.returncode == EXIT_USAGE, proc.stderr
        assert "--size" in proc.stderr
    # One part when the size is larger than the bundle.
    one = split.folder.parent / "one"
    split_bundle(split.bundle, one, publisher, size="4G")
    assert [p.name for p in one.glob("m.airgap.part*")] == ["m.airgap.part001"]
    assert (one / "m.airgap.part001").read_bytes() == split.bundle.read_bytes()


def test_a_bundle_changing_while_it_is_split_leaves_nothing(
    split: Split, publisher: KeyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bundler.pack.split as splitting
    from bundler.errors import BundleError

    real = splitting.split_stream

    def and_touch(*args: Any, **kwargs: Any) -> Any:
        written = real(*args, **kwargs)
        with split.bundle.open("r+b") as f:  # rewritten in place: the same bytes, new ctime
            first = f.read(1)
            f.seek(0)
            f.write(first)
        return written

    monkeypatch.setattr(splitting, "split_stream", and_touch)
    out = tmp_path / "changing"
    out.mkdir()
    with pytest.raises(BundleError, match="changed while it was split"):
        splitting.split_bundle(split.bundle, 1_000_000, publisher.private, out_dir=out)
    assert list(out.iterdir()) == []


def test_a_second_split_removes_the_first_ones_extra_parts(
    split: Split, publisher: KeyPair
) -> None:
    online = split.bundle.parent
    split_bundle(split.bundle, online, publisher, size="2M")
    assert sorted(p.name for p in online.glob("m.airgap.part*")) == [
        "m.airgap.part001",
        "m.airgap.part002",
    ]


def test_split_help_shows_an_example_and_the_size_forms() -> None:
    proc = airgap("split", "--help")
    assert proc.returncode == 0
    assert "Example:" in proc.stdout and "airgap split iris.airgap --size 4G" in proc.stdout
    assert "4GiB" in proc.stdout
    assert "split" in airgap("--help").stdout


def test_split_refuses_a_part_index_and_a_missing_key(split: Split, publisher: KeyPair) -> None:
    proc = airgap("split", split.index, "--size", "1M", "--key", publisher.key)
    assert proc.returncode == 1
    assert "is a split bundle's part index" in proc.stderr
    nokey = airgap("split", split.bundle, "--size", "1M", "--key", split.folder / "nope.key")
    assert nokey.returncode == 1
    assert "cannot read signing key" in nokey.stderr


# ---- the isolated side: verify and unpack from the parts ----------------------------------


def test_verify_and_unpack_from_parts_with_no_network_and_no_joined_copy(
    split: Split, publisher: KeyPair, tmp_path: Path
) -> None:
    size = split.bundle.stat().st_size
    verify = airgap("verify", split.index, "--trust", publisher.pub, netns=True)
    assert verify.returncode == 0, verify.stderr
    assert "OK: demo 1.0, 4 parts, 4 files" in verify.stdout
    assert [line.split(":")[0] for line in verify.stderr.splitlines()] == [
        p.name for p in split.parts
    ]
    # RLIMIT_FSIZE below the bundle's size (but above each payload file): writing a joined
    # copy anywhere would fail the command.
    limit = MODEL_FILE + 400_000
    assert limit < size
    dest = tmp_path / "dest"
    unpack = airgap(
        "unpack",
        split.index,
        dest,
        "--trust",
        publisher.pub,
        "-q",
        "--no-host-check",
        netns=True,
        max_file=limit,
    )
    assert unpack.returncode == 0, unpack.stderr
    # The same tree as from the bundle itself.
    from_bundle = tmp_path / "from-bundle"
    whole = airgap(
        "unpack", split.bundle, from_bundle, "--trust", publisher.pub, "-q", "--no-host-check"
    )
    assert whole.returncode == 0, whole.stderr
    assert snapshot(dest) == snapshot(from_bundle)
    # No file of the bundle's size appeared beside the parts or anywhere under the test.
    joined = [p for p in tmp_path.rglob("*") if p.is_file() and p.stat().st_size == size]
    assert joined == [split.bundle]
    # The limit does bite: the same shell cannot write a joined copy.
    cat = subprocess.run(
        f"cat m.airgap.part* > {tmp_path}/joined",
        shell=True,
        cwd=split.folder,
        capture_output=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )
    assert cat.returncode != 0


def _damage(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def _refused_everywhere(split: Split, victim: Victim, publisher: KeyPair, *needles: str) -> str:
    """verify and unpack both reject the parts (exit 3, the same check and part named), and
    unpack leaves DEST's folder exactly as it was."""
    before = victim.snapshot()
    line = rejected(airgap("verify", split.index, "--trust", publisher.pub, netns=True), *needles)
    unpack = airgap(
        "unpack",
        split.index,
        victim.dest,
        "--trust",
        publisher.pub,
        "-q",
        "--no-host-check",
        netns=True,
    )
    rejected(unpack, *needles[:2])
    assert victim.snapshot() == before
    return line


def test_a_missing_part_is_named(split: Split, victim: Victim, publisher: KeyPair) -> None:
    split.part(2).unlink()
    line = _refused_everywhere(split, victim, publisher, "part: m.airgap.part002: missing")
    assert "part 2 of 4" in line


def test_reordered_parts_are_named(split: Split, victim: Victim, publisher: KeyPair) -> None:
    two, three = split.part(2), split.part(3)
    tmp = split.folder / "swap"
    two.rename(tmp)
    three.rename(two)
    tmp.rename(three)
    line = _refused_everywhere(split, victim, publisher, "part: m.airgap.part002: reordered")
    assert "holds the bytes of part 3" in line
    assert "m.airgap.part003: reordered" in line  # every bad part, in one line


def test_a_truncated_part_is_named(split: Split, victim: Victim, publisher: KeyPair) -> None:
    os.truncate(split.part(3), 400_000)
    line = _refused_everywhere(split, victim, publisher, "part: m.airgap.part003: truncated")
    assert "400000 of 1000000 bytes" in line


def test_a_damaged_part_is_named(split: Split, victim: Victim, publisher: KeyPair) -> None:
    _damage(split.part(2), 300_000)
    _refused_everywhere(
        split, victim, publisher, "part: m.airgap.part002: damaged", "sha256 differs"
    )


def test_a_part_of_another_bundle_is_foreign(
    split: Split, victim: Victim, publisher: KeyPair, make_bundle: MakeBundle, tmp_path: Path
) -> None:
    (tmp_path / "other").mkdir()
    other = make_bundle("other/m.airgap", files=model_files(2), version="2.0")
    split_bundle(other, tmp_path / "other", publisher)
    # Same file names (same bundle file name), another bundle's bytes.
    shutil.copy2(tmp_path / "other" / "m.airgap.part002", split.part(2))
    _refused_everywhere(
        split, victim, publisher, "part: m.airgap.part002: foreign", "not a part of this bundle"
    )


def test_a_duplicated_part_is_named(split: Split, victim: Victim, publisher: KeyPair) -> None:
    shutil.copy2(split.part(2), split.part(3))
    line = rejected(
        airgap("verify", split.index, "--trust", publisher.pub, netns=True),
        "part: m.airgap.part003: duplicate",
    )
    assert "a copy of part 2" in line
    before = victim.snapshot()
    unpack = airgap(
        "unpack",
        split.index,
        victim.dest,
        "--trust",
        publisher.pub,
        "-q",
        "--no-host-check",
        netns=True,
    )
    rejected(unpack, "part: m.airgap.part003:")
    assert victim.snapshot() == before


def test_an_extra_part_is_named(split: Split, publisher: KeyPair) -> None:
    shutil.copy2(split.part(1), split.folder / "m.airgap.part005")
    rejected(
        airgap("verify", split.index, "--trust", publisher.pub, netns=True),
        "part: m.airgap.part005: extra",
    )


def test_an_index_signed_by_an_untrusted_key_is_rejected(
    split: Split, victim: Victim, publisher: KeyPair, attacker: KeyPair, tmp_path: Path
) -> None:
    # The attacker splits the publisher's own bundle with their key: good parts, bad index.
    evil = tmp_path / "evil"
    split_bundle(split.bundle, evil, attacker)
    for name in ("m.airgap.split.json", "m.airgap.split.json.sig"):
        shutil.copy2(evil / name, split.folder / name)
    line = _refused_everywhere(
        split, victim, publisher, "signature: m.airgap.split.json.sig: signed by key"
    )
    assert attacker.key_id[:16] in line and "not trusted here" in line


def test_a_policy_holds_for_the_bundle_the_parts_join_into(
    split: Split, publisher: KeyPair, attacker: KeyPair, tmp_path: Path
) -> None:
    # The index is verified with the policy's keys (one packer signs it), but the joined
    # bundle must meet the policy's threshold as a whole bundle must: 2 of 2 here.
    policy = tmp_path / "policy.toml"
    policy.write_text(
        f'format = "airgap-trust-policy/1"\n[keys]\npub = "{publisher.pub}"\n'
        f'other = "{attacker.pub}"\n[[rules]]\nthreshold = 2\n'
    )
    for command in (("verify", split.index), ("unpack", split.index, tmp_path / "dest")):
        proc = airgap(*command, "--policy", policy)
        assert proc.returncode == EXIT_REJECTED, proc.stdout + proc.stderr
        assert proc.stderr.splitlines()[-1].startswith(
            "bundle rejected: trust: manifest.json.sig: 1 of 2 required signatures; missing 1 "
            f"more from: other ({attacker.key_id[:16]}...)"
        ), proc.stderr
    assert not (tmp_path / "dest").exists()
    # The co-signature in a detached file (for the joined bundle's manifest) meets it.
    sig = tmp_path / "m.airgap.sig"
    done = airgap("sign", split.bundle, "--key", attacker.key, "--detached", "--out", sig)
    assert done.returncode == 0, done.stderr
    proc = airgap("verify", split.index, "--policy", policy, "--signatures", sig)
    assert proc.returncode == 0, proc.stderr
    assert "trust: 2 of 2 required signatures" in proc.stdout


def test_a_fifo_planted_as_a_part_is_refused_not_waited_on(
    split: Split, publisher: KeyPair
) -> None:
    split.part(2).unlink()
    os.mkfifo(split.part(2))
    rejected(
        airgap("verify", split.index, "--trust", publisher.pub, timeout=60),
        "part: m.airgap.part002: unreadable: not a regular file",
    )


def _resign(split: Split, key: KeyPair, edit: Callable[[dict[str, Any]], None]) -> None:
    index = json.loads(split.index.read_text())
    edit(index)
    data = (json.dumps(index, sort_keys=True, separators=(",", ":")) + "\n").encode()
    split.index.write_bytes(data)
    Path(f"{split.index}.sig").write_bytes(key.private.sign(data))


def _set(path: tuple[str | int, ...], value: object) -> Callable[[dict[str, Any]], None]:
    def edit(index: dict[str, Any]) -> None:
        target: Any = index
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (_set(("format",), "airgap-parts/2"), "is not 'airgap-parts/1'"),
        (_set(("bundle", "file"), "../m.airgap"), "is not a plain file name"),
        (_set(("parts", 1, "file"), "../../etc/passwd"), "is not the name of part 2"),
        (_set(("parts", 1, "offset"), 0), "offset is 0, expected 1000000"),
        (_set(("parts", 1, "size"), 999_999), "does not fit part_size"),
        (_set(("bundle", "size"), 10), "the parts add up to"),
        (_set(("parts", 0, "index"), True), "must be a non-negative integer"),
        (_set(("signer",), "ab" * 32), "names signer abababab"),
    ],
)
def test_a_signed_but_malformed_index_is_rejected(
    split: Split, publisher: KeyPair, edit: Callable[[dict[str, Any]], None], needle: str
) -> None:
    # Even an index the trusted key signed is held to every rule before a part is opened.
    _resign(split, publisher, edit)
    rejected(
        airgap("verify", split.index, "--trust", publisher.pub),
        "parts index: m.airgap.split.json:",
        needle,
    )


def test_an_index_naming_another_bundle_is_rejected(split: Split, publisher: KeyPair) -> None:
    _resign(split, publisher, _set(("bundle", "version"), "9.9"))
    rejected(
        airgap("verify", split.index, "--trust", publisher.pub),
        "parts index: m.airgap.split.json: the index names demo 9.9, the parts hold demo 1.0",
    )


def test_an_edited_index_is_rejected(split: Split, publisher: KeyPair) -> None:
    index = json.loads(split.index.read_text())
    index["parts"][1]["sha256"] = "0" * 64
    split.index.write_text(json.dumps(index, sort_keys=True, separators=(",", ":")) + "\n")
    rejected(
        airgap("verify", split.index, "--trust", publisher.pub),
        "signature: m.airgap.split.json.sig:",
        "does not verify",
    )


# ---- --resume and the state file ----------------------------------------------------------


def _statuses(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 0, proc.stderr
    return [p["status"] for p in json.loads(proc.stdout)["parts"]]


def test_resume_skips_checked_parts_and_rechecks_a_changed_one(
    split: Split, publisher: KeyPair
) -> None:
    args = ("verify", split.index, "--trust", publisher.pub, "--json")
    assert _statuses(airgap(*args)) == ["ok"] * 4
    assert (split.folder / "m.airgap.split-state").is_file()
    assert _statuses(airgap(*args, "--resume")) == ["resumed"] * 4
    # Without --resume every part is hashed again.
    assert _statuses(airgap(*args)) == ["ok"] * 4
    # Rewriting a part with the same bytes changes its ctime: it is checked again.
    data = split.part(3).read_bytes()
    split.part(3).write_bytes(data)
    assert _statuses(airgap(*args, "--resume")) == ["resumed", "resumed", "ok", "resumed"]


def test_an_unwritable_state_is_a_warning_and_state_can_live_elsewhere(
    split: Split, publisher: KeyPair, tmp_path: Path
) -> None:
    args = ("verify", split.index, "--trust", publisher.pub)
    nowhere = airgap(*args, "--state", tmp_path / "no" / "such" / "folder" / "state")
    assert nowhere.returncode == 0, nowhere.stderr
    assert nowhere.stderr.count("warning: cannot record the check state") == 1
    elsewhere = tmp_path / "state.json"
    assert airgap(*args, "--state", elsewhere).returncode == 0
    assert not (split.folder / "m.airgap.split-state").exists()
    resumed = airgap(*args, "--state", elsewhere, "--resume", "--json")
    assert _statuses(resumed) == ["resumed"] * 4


@pytest.mark.parametrize(
    "junk", [b"[" * 100_000, b"{}", b'{"format": 1}', b"\xff\xfe", b'{"parts": []}']
)
def test_a_malformed_state_is_ignored(split: Split, publisher: KeyPair, junk: bytes) -> None:
    (split.folder / "m.airgap.split-state").write_bytes(junk)
    proc = airgap("verify", split.index, "--trust", publisher.pub, "--resume", "--json")
    assert _statuses(proc) == ["ok"] * 4


def test_a_forged_state_never_lets_a_damaged_part_through(
    split: Split, victim: Victim, publisher: KeyPair
) -> None:
    assert airgap("verify", split.index, "--trust", publisher.pub, "-q").returncode == 0
    _damage(split.part(2), 123_456)
    # Forge the state: record the damaged part's current identity as checked.
    state_path = split.folder / "m.airgap.split-state"
    state = json.loads(state_path.read_text())
    st = split.part(2).stat()
    state["parts"]["2"].update(
        dev=st.st_dev,
        ino=st.st_ino,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
    )
    state_path.write_text(json.dumps(state))
    proc = airgap("verify", split.index, "--trust", publisher.pub, "--resume", netns=True)
    # The arrival check skipped it; reading the bundle through the parts hashes it again.
    assert "m.airgap.part002: resumed" in proc.stderr
    rejected(proc, "part: m.airgap.part002: damaged")
    before = victim.snapshot()
    unpack = airgap(
        "unpack",
        split.index,
        victim.dest,
        "--trust",
        publisher.pub,
        "-q",
        "--no-host-check",
        netns=True,
    )
    rejected(unpack, "part: m.airgap.part002: damaged")
    assert victim.snapshot() == before


def test_wait_checks_each_part_as_it_arrives(
    split: Split, publisher: KeyPair, tmp_path: Path
) -> None:
    carried = tmp_path / "medium"
    carried.mkdir()
    for p in split.parts:
        p.rename(carried / p.name)
    proc = subprocess.Popen(
        [*AIRGAP, "verify", split.index, "--trust", publisher.pub, "--wait", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def arrive() -> None:
        # Out of order, and each written in two halves, as a slow copy would.
        for n in (3, 1, 4, 2):
            data = (carried / f"m.airgap.part{n:03d}").read_bytes()
            target = split.part(n)
            with target.open("wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                time.sleep(0.7)
                f.write(data[len(data) // 2 :])
            time.sleep(0.7)

    copier = threading.Thread(target=arrive)
    copier.start()
    out, err = proc.communicate(timeout=120)
    copier.join()
    assert proc.returncode == 0, err
    assert [line.split(":")[0] for line in err.splitlines()] == [
        f"m.airgap.part{n:03d}" for n in (3, 1, 4, 2)
    ]
    assert "OK: demo 1.0, 4 parts" in out


def test_wait_gives_up_naming_the_part_that_never_came(split: Split, publisher: KeyPair) -> None:
    split.part(4).unlink()
    start = time.monotonic()
    line = rejected(
        airgap("verify", split.index, "--trust", publisher.pub, "--wait", "2"),
        "part: m.airgap.part004: missing",
    )
    assert "after waiting 2 s" in line
    assert time.monotonic() - start >= 2


def test_resume_options_refused_for_a_plain_bundle(split: Split, publisher: KeyPair) -> None:
    proc = airgap("verify", split.bundle, "--trust", publisher.pub, "--resume")
    assert proc.returncode == EXIT_USAGE
    assert "part index" in proc.stderr


# ---- the parts file itself ----------------------------------------------------------------


def test_a_part_rewritten_after_its_check_is_refused(split: Split, publisher: KeyPair) -> None:
    index, _ = read_index(split.index, [publisher.pub])
    with PartsFile(index, split.folder) as f:
        assert f.read(512)[:15] == b"payload.tar.zst"
        f.seek(0)
        head = f.read(10)
        good = split.part(1).read_bytes()
        split.part(1).write_bytes(good)  # the same bytes; a new ctime
        f.seek(5)
        with pytest.raises(PartError, match="changed after it was checked"):
            f.read(10)
    assert head == good[:10]


def test_the_parts_file_reads_across_part_boundaries(split: Split, publisher: KeyPair) -> None:
    data = split.bundle.read_bytes()
    index, _ = read_index(split.index, [publisher.pub])
    with PartsFile(index, split.folder) as f:
        for offset, n in ((999_990, 20), (0, len(data)), (len(data) - 5, 50), (2_999_999, 2)):
            f.seek(offset)
            assert f.read(n) == data[offset : offset + n]
        assert f.seek(0, os.SEEK_END) == len(data)
        assert f.read(10) == b""
        f.seek(1_000_000)
        assert f.read() == data[1_000_000:]
        buffer = bytearray(30)
        f.seek(1_999_985)
        assert f.readinto(buffer) == 30 and bytes(buffer) == data[1_999_985:2_000_015]


def test_judge_names_each_failure_from_sizes_digests_and_probes() -> None:
    import hashlib

    from bundler.formats.parts import (
        PROBE,
        BundleIdentity,
        Observed,
        WrittenPart,
        build_index,
        judge,
    )

    rnd = random.Random(5)
    parts = [rnd.randbytes(200_000), rnd.randbytes(200_000), rnd.randbytes(50_000)]

    def sha(b: bytes) -> str:
        return hashlib.sha256(b).hexdigest()

    def seen(b: bytes) -> Observed:
        return Observed(len(b), sha(b), sha(b[:PROBE]), sha(b[-min(len(b), PROBE) :]))

    written = [WrittenPart(len(b), sha(b), sha(b[:PROBE]), sha(b[-PROBE:])) for b in parts]
    joined = b"".join(parts)
    ident = BundleIdentity("m.airgap", "demo", "1.0", "0" * 64, sha(joined), len(joined))
    index = build_index(ident, "1" * 64, 200_000, written)
    first, second, last = index.parts
    assert judge(index, first, seen(parts[0])) is None
    assert judge(index, first, seen(parts[1]))[0] == "reordered"
    assert judge(index, second, seen(parts[2]))[0] == "reordered"  # the last part, misplaced
    assert judge(index, first, seen(parts[0][:150_000]))[0] == "truncated"
    assert judge(index, first, seen(parts[0][:1000]))[0] == "truncated"
    assert judge(index, first, seen(parts[0] + b"x"))[0] == "too long"
    damaged = bytearray(parts[0])
    damaged[100_000] ^= 1
    assert judge(index, first, seen(bytes(damaged)))[0] == "damaged"
    stranger = rnd.randbytes(200_000)
    assert judge(index, first, seen(stranger))[0] == "foreign"
    assert judge(index, first, seen(stranger[:150_000]))[0] == "foreign"  # another's last part
    assert judge(index, last, seen(stranger[:120_000]))[0] == "foreign"


@pytest.mark.network
def test_pack_split_size_packs_then_splits(tmp_path: Path, publisher: KeyPair) -> None:
    proj = tmp_path / "proj"
    (proj / "model").mkdir(parents=True)
    (proj / "score.py").write_text("def init():\n    pass\n\n\ndef run(raw_data):\n    return 1\n")
    (proj / "model" / "m.bin").write_bytes(random.Random(3).randbytes(2_500_000))
    (proj / "requirements.lock").write_text("")
    (proj / "bundle.toml").write_text(
        'name = "tiny"\nversion = "1.0.0"\nentry_script = "score.py"\nmodel = "model"\n'
        'lock = "requirements.lock"\n\n[target]\npython = "3.11"\n'
        'platforms = ["manylinux_2_28_x86_64"]\n'
    )
    out = tmp_path / "tiny.airgap"
    proc = airgap(
        "pack",
        proj,
        "-o",
        out,
        "--key",
        publisher.key,
        "--split-size",
        "1M",
        "--bytecode",
        "none",
        "--json",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["split"]["bundle_size"] == out.stat().st_size
    assert len(info["split"]["parts"]) == 3
    assert (
        b"".join((tmp_path / p["file"]).read_bytes() for p in info["split"]["parts"])
        == out.read_bytes()
    )
    verify = airgap(
        "verify", tmp_path / "tiny.airgap.split.json", "--trust", publisher.pub, netns=True
    )
    assert verify.returncode == 0, verify.stderr
