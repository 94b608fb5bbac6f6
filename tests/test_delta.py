"""Delta bundles through the real CLI, on small real bundles packed by `airgap pack`: made
with `airgap delta` and `pack --base`, applied by `airgap unpack`, shown by `inspect`,
checked by `verify`; every refusal, a kill -9 mid-apply, reproducibility, and no network."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import KeyPair, require_netns, snapshot

from bundler.errors import EXIT_ERROR, EXIT_OK, EXIT_REJECTED, DeltaError
from bundler.formats.archive import BundleWriter
from bundler.formats.delta import parse_descriptor, read_delta_outer, write_delta_outer
from bundler.formats.signing import load_private_key, sign
from bundler.verify.unpack import open_verified

pytestmark = [pytest.mark.network]  # `airgap pack` takes the runtime's wheels from PyPI

AIRGAP = [sys.executable, "-m", "bundler"]
EPOCH = 1_700_000_000
SCORE_V1 = b"def init():\n    pass\n\n\ndef run(data):\n    return data\n"
SCORE_V2 = b"def init():\n    pass\n\n\ndef run(data):\n    return [data]\n"


def airgap(
    *args: str | Path, netns: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [*AIRGAP, *map(str, args)]
    if netns:
        require_netns()
        cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})}
    )


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == EXIT_OK, proc.stdout + proc.stderr
    return proc


def rejected(proc: subprocess.CompletedProcess[str], prefix: str) -> str:
    """The one error line of a rejection (exit 3), which must start with ``prefix``."""
    assert proc.returncode == EXIT_REJECTED, proc.stdout + proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line, line
    assert line.startswith(prefix), line
    return line


class Packer:
    """Packs a tiny project with the real `airgap pack`; each call may change its files."""

    def __init__(self, root: Path, keys: Path, cache: Path) -> None:
        self.root, self.keys, self.cache = root, keys, cache

    def pack(
        self,
        out: str,
        *,
        name: str = "tiny",
        version: str = "1.0.0",
        score: bytes = SCORE_V1,
        model: dict[str, tuple[bytes, int]] | None = None,
        key: Path | None = None,
        extra: tuple[str | Path, ...] = (),
        toml: str = "",
    ) -> Path:
        project = self.root / f"proj-{out}"
        shutil.rmtree(project, ignore_errors=True)
        (project / "model").mkdir(parents=True)
        (project / "score.py").write_bytes(score)
        (project / "requirements.lock").write_bytes(b"")
        model = model or {"weights.bin": (b"w" * 5000, 0o644), "labels.txt": (b"a\nb\n", 0o644)}
        for rel, (data, mode) in model.items():
            (project / "model" / rel).write_bytes(data)
            os.chmod(project / "model" / rel, mode)
        (project / "bundle.toml").write_text(
            f'name = "{name}"\nversion = "{version}"\nentry_script = "score.py"\n'
            f'model = "model"\nlock = "requirements.lock"\n{toml}\n[target]\npython = "3.11"\n'
            'platforms = ["manylinux_2_28_x86_64"]\n'
        )
        bundle = self.root / out
        ok(
            airgap(
                "pack", project, "-o", bundle, "--key", key or self.keys / "airgap.key",
                "--bytecode", "none", "-q", *extra,
                env={"SOURCE_DATE_EPOCH": str(EPOCH), "AIRGAP_CACHE_DIR": str(self.cache)},
            )
        )  # fmt: skip
        return bundle


V2_MODEL = {
    "weights.bin": (b"w" * 5000, 0o755),  # same bytes, mode changed
    "added.txt": (b"new file\n", 0o644),  # added; labels.txt removed
}


@dataclasses.dataclass(frozen=True)
class Made:
    root: Path
    pub: Path
    key: Path
    v1: Path
    v2: Path
    delta: Path  # v1 -> v2 by `airgap delta`
    packer: Packer


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    root = tmp_path_factory.mktemp("delta")
    ok(airgap("keygen", "--out", root / "keys", "--no-passphrase"))
    packer = Packer(root, root / "keys", root / "cache")
    v1 = packer.pack("v1.airgap")
    v2 = packer.pack("v2.airgap", version="1.1.0", score=SCORE_V2, model=V2_MODEL)
    delta = root / "v2.delta.airgap"
    ok(airgap("delta", v1, v2, "-o", delta, "--key", root / "keys" / "airgap.key", "-q"))
    return Made(root, root / "keys/airgap.pub", root / "keys/airgap.key", v1, v2, delta, packer)


def unpacked(made: Made, bundle: Path, dest: Path) -> Path:
    ok(airgap("unpack", bundle, dest, "--trust", made.pub, "-q"))
    return dest


# ---- applying -------------------------------------------------------------------------------


def test_apply_gives_exactly_the_tree_a_full_unpack_of_new_gives(
    made: Made, tmp_path: Path
) -> None:
    dest = unpacked(made, made.v1, tmp_path / "dest")
    inodes = {p: (dest / p).stat().st_ino for p in ("app/score.py", "model/model/weights.bin")}
    inodes["runtime"] = (dest / "runtime/airgap_runtime/__init__.py").stat().st_ino
    proc = ok(airgap("unpack", made.delta, dest, "--trust", made.pub, "--json", "-q"))
    out = json.loads(proc.stdout)
    # An unchanged file is shared with the old tree where the filesystem links (this one
    # cannot reflink); the file whose mode changed never is: it is a copy (or a reflink).
    # Not linked: the carried files (the changed ones, the Dockerfiles and the SBOM, which
    # name the version) and the mode-changed copy.
    linked = out["reused"].get("hardlink", 0)
    assert linked + out["reused"].get("reflink", 0) >= out["file_count"] - 4
    assert out["reused"].get("copy", 0) + out["reused"].get("reflink", 0) >= 1
    shared = (dest / "runtime/airgap_runtime/__init__.py").stat().st_ino == inodes["runtime"]
    assert shared == (linked > 0)
    assert (dest / "model/model/weights.bin").stat().st_ino != inodes["model/model/weights.bin"]
    assert (dest / "app/score.py").stat().st_ino != inodes["app/score.py"]
    assert (out["name"], out["version"]) == ("tiny", "1.1.0")
    assert out["delta"]["base"]["version"] == "1.0.0"
    # Carried: the changed score.py and the added file; the mode change and the unchanged
    # files come from the base (hardlink or reflink, or copied where modes differ).
    assert out["delta"]["carried_files"] == 3  # the changed files, and the SBOM
    assert sum(out["reused"].values()) == out["file_count"] - 3  # 3 carried files
    full = unpacked(made, made.v2, tmp_path / "full")
    assert snapshot(dest) == snapshot(full)
    assert (dest / "app/score.py").read_bytes() == SCORE_V2
    assert not (dest / "model/model/labels.txt").exists()
    assert (dest / "model/model/weights.bin").stat().st_mode & 0o777 == 0o755
    assert sorted(os.listdir(tmp_path)) == ["dest", "full"]  # no stage left behind
    # The result is an ordinary unpacked tree: `serve`'s re-check passes on it.
    from bundler.verify.tree import check_unpacked

    assert check_unpacked(dest, trust=[made.pub]).version == "1.1.0"


def test_pack_base_writes_the_same_delta_as_airgap_delta_and_is_reproducible(
    made: Made, tmp_path: Path
) -> None:
    again = made.packer.pack(
        "v2-again.airgap", version="1.1.0", score=SCORE_V2, model=V2_MODEL,
        extra=("--base", made.v1, "--delta-output", tmp_path / "via-pack.airgap"),
    )  # fmt: skip
    assert again.read_bytes() == made.v2.read_bytes()
    other = tmp_path / "other-threads.airgap"
    ok(airgap("delta", made.v1, made.v2, "-o", other, "--key", made.key, "--threads", "1", "-q"))
    assert (tmp_path / "via-pack.airgap").read_bytes() == made.delta.read_bytes()
    assert other.read_bytes() == made.delta.read_bytes()


def test_a_score_only_change_carries_one_file(made: Made, tmp_path: Path) -> None:
    v1b = made.packer.pack("v1b.airgap", version="1.0.1", score=SCORE_V1 + b"# fix\n")
    delta = tmp_path / "d.airgap"
    ok(airgap("delta", made.v1, v1b, "-o", delta, "--key", made.key, "-q"))
    info = json.loads(ok(airgap("inspect", delta, "--json")).stdout)
    # score.py, and the SBOM (it names the bundle's version, so it changes with it).
    from bundler.inspecting import read_manifest_unverified

    sbom = read_manifest_unverified(v1b).file_map()["sbom/bom.cdx.json"]
    assert info["delta"]["carried_files"] == 2
    assert info["delta"]["carried_size"] == len(SCORE_V1) + 6 + sbom.size
    assert delta.stat().st_size < made.v1.stat().st_size / 4


@pytest.mark.netns
def test_apply_works_with_no_network(made: Made, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    ok(airgap("unpack", made.v1, dest, "--trust", made.pub, netns=True))
    proc = ok(airgap("unpack", made.delta, dest, "--trust", made.pub, netns=True))
    assert proc.stdout.startswith(f"applied delta tiny 1.0.0 -> 1.1.0 to {dest} (")
    assert (dest / "app/score.py").read_bytes() == SCORE_V2


def test_the_preflight_counts_only_what_a_delta_writes(made: Made, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("mounting a tmpfs needs root in CI")
        pytest.skip("mounting a tmpfs needs root")
    fs = tmp_path / "fs"
    fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m,mode=0755", "tmpfs", fs], check=True)
    try:
        dest = unpacked(made, made.v1, fs / "dest")
        st = os.statvfs(fs)
        (fs / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - (1 << 20)))
        # 1 MiB free: too little for the whole new tree beside the old one ...
        proc = airgap("unpack", made.v2, fs / "dest", "--trust", made.pub)
        assert proc.returncode == EXIT_ERROR and proc.stderr.startswith("preflight: "), proc.stderr
        # ... but room for what the delta writes: its carried files, a copy of the file whose
        # mode changed, folders and state; everything else is linked from the old tree.
        ok(airgap("unpack", made.delta, dest, "--trust", made.pub, "-q"))
        assert snapshot(dest) == snapshot(unpacked(made, made.v2, tmp_path / "full"))
    finally:
        subprocess.run(["umount", "-l", fs], check=False)


# ---- inspect, verify, and readers of full bundles ------------------------------------------


def test_inspect_shows_a_delta_and_what_it_needs(made: Made) -> None:
    text = ok(airgap("inspect", made.delta)).stdout
    base_sha = json.loads(ok(airgap("inspect", made.delta, "--json")).stdout)["delta"]["base"]
    assert "delta:     airgap-delta/1: updates tiny 1.0.0 to 1.1.0" in text
    assert (
        f"needs:     DEST holding tiny 1.0.0 (manifest sha256 {base_sha['manifest_sha256']})"
        in text
    )
    assert "carries:   3 files" in text
    # The manifest sha256 named is the base bundle's real manifest.
    tar = subprocess.run(["tar", "-xOf", made.v1, "manifest.json"], capture_output=True, check=True)
    import hashlib

    assert base_sha["manifest_sha256"] == hashlib.sha256(tar.stdout).hexdigest()
    full = json.loads(ok(airgap("inspect", made.v2, "--json")).stdout)
    assert full["delta"] is None


def test_verify_checks_signatures_descriptor_and_carried_files(made: Made) -> None:
    proc = ok(airgap("verify", made.delta, "--trust", made.pub))
    assert proc.stdout.startswith("OK: delta tiny 1.0.0 -> 1.1.0, 3 carried files, signed by ")


def test_a_full_bundle_reader_refuses_a_delta_by_name(made: Made) -> None:
    with pytest.raises(DeltaError) as e:
        open_verified(made.delta, [made.pub])
    assert e.value.diagnostics().startswith(
        "bundle rejected: delta: delta.json: this is a delta bundle (airgap-delta/1)"
    )
    # doctor knows a delta when it sees one (see the doctor test below), never a full bundle.
    proc = airgap("doctor", made.delta, "--trust", made.pub, "--port", "1")
    assert proc.stdout.startswith(f"delta {made.delta} (tiny 1.0.0 -> 1.1.0)\n"), proc.stdout


def test_standard_tools_check_a_delta(made: Made, tmp_path: Path) -> None:
    run = subprocess.run
    names = run(["tar", "-tf", made.delta], capture_output=True, text=True, check=True).stdout
    assert names.split() == [
        "delta.json", "delta.json.sig", "payload.tar.zst", "manifest.json.zst", "manifest.json.sig"
    ]  # fmt: skip
    run(["tar", "-xf", made.delta, "-C", tmp_path], check=True)
    run(["zstd", "-q", "-d", "manifest.json.zst"], cwd=tmp_path, check=True)
    # The very manifest bytes of the full bundle, so its signature file is the same too.
    full = run(["tar", "-xOf", made.v2, "manifest.json"], capture_output=True, check=True).stdout
    assert (tmp_path / "manifest.json").read_bytes() == full
    for name in ("delta.json", "manifest.json"):
        done = run(
            ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", made.pub, "-rawin",
             "-in", name, "-sigfile", f"{name}.sig"],
            cwd=tmp_path, capture_output=True, text=True,
        )  # fmt: skip
        assert "Signature Verified Successfully" in done.stdout, done.stderr
    descriptor = json.loads((tmp_path / "delta.json").read_bytes())
    sums = run(["sha256sum", "payload.tar.zst", "manifest.json"], cwd=tmp_path, capture_output=True,
               text=True, check=True).stdout.split()  # fmt: skip
    assert sums[0] == descriptor["payload"]["sha256"]
    assert sums[2] == descriptor["manifest_sha256"]
    (tmp_path / "tree").mkdir()
    run(["sh", "-c", "zstd -dc payload.tar.zst | tar -x -C tree"], cwd=tmp_path, check=True)
    manifest = json.loads((tmp_path / "manifest.json").read_bytes())
    wanted = {f["path"]: f["sha256"] for f in manifest["files"]}
    checklist = "".join(f"{wanted[p]}  {p}\n" for p in descriptor["carried"])
    (tmp_path / "SUMS").write_text(checklist)
    done = run(
        ["sha256sum", "-c", "../SUMS"], cwd=tmp_path / "tree", capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.count(": OK") == 3, done.stdout


# ---- refusals: DEST -------------------------------------------------------------------------


def test_dest_at_another_version_is_refused_and_untouched(made: Made, tmp_path: Path) -> None:
    dest = unpacked(made, made.v2, tmp_path / "dest")
    before = snapshot(tmp_path)
    line = rejected(
        airgap("unpack", made.delta, dest, "--trust", made.pub),
        "bundle rejected: delta: .airgap/manifest.json: ",
    )
    assert "holds tiny 1.1.0" in line and "this delta needs tiny 1.0.0" in line
    assert snapshot(tmp_path) == before


def test_empty_or_missing_dest_is_refused(made: Made, tmp_path: Path) -> None:
    line = rejected(
        airgap("unpack", made.delta, tmp_path / "nothing", "--trust", made.pub),
        "bundle rejected: delta: .airgap/manifest.json: ",
    )
    assert "holds no unpacked bundle" in line
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("edit", ["changed", "added", "removed"])
def test_dest_edited_since_unpack_is_refused_naming_the_file(
    made: Made, tmp_path: Path, edit: str
) -> None:
    dest = unpacked(made, made.v1, tmp_path / "dest")
    target = dest / "model/model/labels.txt"
    if edit == "changed":
        target.write_bytes(b"a\nc\n")
    elif edit == "added":
        target = dest / "model/model/zz-extra.bin"
        target.write_bytes(b"x")
    else:
        target.unlink()
    before = snapshot(tmp_path)
    line = rejected(
        airgap("unpack", made.delta, dest, "--trust", made.pub),
        "bundle rejected: delta: model/model/",
    )
    assert line.startswith(f"bundle rejected: delta: {target.relative_to(dest).as_posix()}: ")
    assert "no longer holds exactly tiny 1.0.0" in line
    assert snapshot(tmp_path) == before


def test_a_delta_for_another_bundle_is_refused(made: Made, tmp_path: Path) -> None:
    o1 = made.packer.pack("other1.airgap", name="other")
    o2 = made.packer.pack("other2.airgap", name="other", version="1.1.0", score=SCORE_V2)
    delta = tmp_path / "other.delta.airgap"
    ok(airgap("delta", o1, o2, "-o", delta, "--key", made.key, "-q"))
    dest = unpacked(made, made.v1, tmp_path / "dest")
    before = snapshot(dest)
    line = rejected(
        airgap("unpack", delta, dest, "--trust", made.pub),
        "bundle rejected: delta: .airgap/manifest.json: ",
    )
    assert "holds tiny 1.0.0, another bundle; this delta needs other 1.0.0" in line
    assert snapshot(dest) == before
    # And joining two different bundles is refused when making one.
    proc = airgap("delta", made.v1, o2, "-o", tmp_path / "x.airgap", "--key", made.key)
    assert proc.returncode == EXIT_REJECTED and "two versions of one bundle" in proc.stderr


def test_rollback_is_refused_unless_allowed(made: Made, tmp_path: Path) -> None:
    back = tmp_path / "back.airgap"
    ok(airgap("delta", made.v2, made.v1, "-o", back, "--key", made.key, "-q"))
    dest = unpacked(made, made.v2, tmp_path / "dest")
    before = snapshot(dest)
    line = rejected(
        airgap("unpack", back, dest, "--trust", made.pub),
        "bundle rejected: rollback: manifest.json: bundle tiny 1.0.0 is older than tiny 1.1.0",
    )
    assert "--allow-downgrade" in line
    assert snapshot(dest) == before
    ok(airgap("unpack", back, dest, "--trust", made.pub, "--allow-downgrade"))
    assert snapshot(dest) == snapshot(unpacked(made, made.v1, tmp_path / "full1"))


# ---- refusals: the delta itself -------------------------------------------------------------


def _recraft(
    delta: Path,
    out: Path,
    key: Path,
    change: Callable[[str, bytes], bytes] | None = None,
    rename: Callable[[str], str] | None = None,
) -> None:
    """Rebuild ``delta`` with its carried files passed through ``change`` (and their names
    through ``rename``) and a descriptor re-signed by ``key``: a well-formed delta whose
    payload the publisher never made."""
    from bundler.formats.archive import PayloadReader

    with delta.open("rb") as f:
        outer = read_delta_outer(f)
        d = parse_descriptor(outer.descriptor)
        reader = PayloadReader(f, outer.payload_offset, outer.payload_size, 1 << 30)
        files = [(h, b"".join(chunks)) for h, chunks in reader.members()]
    spool = io.BytesIO()
    writer = BundleWriter(spool, mtime=d.created, level=3, threads=1)
    for h, data in files:
        new = change(h.name, data) if change else data
        writer.tar.add(rename(h.name) if rename else h.name, h.mode, len(new), io.BytesIO(new))
    stats = writer.finish_payload()
    d = dataclasses.replace(d, payload=dataclasses.replace(d.payload, sha256=stats.sha256,
                                                           size=stats.size))  # fmt: skip
    data = d.to_bytes()
    with out.open("wb") as fh:
        write_delta_outer(
            fh, mtime=d.created, descriptor=data,
            descriptor_signature=sign(load_private_key(key, None), data), payload_member=spool,
            manifest=outer.manifest, signature=outer.signature,
        )  # fmt: skip


def test_carried_files_that_differ_from_the_new_manifest_are_refused(
    made: Made, tmp_path: Path
) -> None:
    crafted = tmp_path / "crafted.airgap"
    # Same size, other bytes: only the content hash can tell.
    _recraft(made.delta, crafted, made.key, lambda n, b: b.replace(b"[data]", b"(0, 1)"))
    want = "bundle rejected: integrity: app/score.py: content differs from the manifest's sha256"
    rejected(airgap("verify", crafted, "--trust", made.pub), want)
    dest = unpacked(made, made.v1, tmp_path / "dest")
    before = snapshot(tmp_path)
    rejected(airgap("unpack", crafted, dest, "--trust", made.pub), want)
    assert snapshot(tmp_path) == before  # DEST as it was, and no stage left


def test_a_carried_member_that_would_escape_dest_is_refused_before_any_write(
    made: Made, tmp_path: Path
) -> None:
    crafted = tmp_path / "escape.airgap"
    _recraft(made.delta, crafted, made.key, rename=lambda n: n.replace("app/", "app/../../../"))
    dest = unpacked(made, made.v1, tmp_path / "dest")
    before = snapshot(tmp_path)
    for command in (("verify", crafted), ("unpack", crafted, dest)):
        rejected(
            airgap(*command, "--trust", made.pub),
            "bundle rejected: unsafe member: app/../../../score.py: '..' in path",
        )
    assert snapshot(tmp_path) == before  # nothing written anywhere, no stage left


def attackers_delta(made: Made, attacker: KeyPair, where: Path, name: str) -> Path:
    """``where/evil.delta.airgap``: v1 -> a NEW packed and signed by ``attacker``, whole."""
    evil = made.packer.pack(f"{name}.airgap", version="1.1.0", score=SCORE_V2, key=attacker.key)
    delta = where / "evil.delta.airgap"
    ok(airgap("delta", made.v1, evil, "-o", delta, "--key", attacker.key, "-q"))
    return delta


def test_a_delta_signed_by_an_untrusted_key_is_refused(
    made: Made, tmp_path: Path, attacker: KeyPair
) -> None:
    dest = unpacked(made, made.v1, tmp_path / "dest")
    before = snapshot(tmp_path)
    # A whole delta by another key (its NEW packed and signed by that key) ...
    delta = attackers_delta(made, attacker, tmp_path, "evil2")
    line = rejected(
        airgap("unpack", delta, dest, "--trust", made.pub),
        "bundle rejected: signature: manifest.json.sig: signed by key ",
    )
    assert attacker.key_id[:16] in line
    # ... and the publisher's manifest with a descriptor re-signed by it (payload swapped).
    crafted = tmp_path / "resigned.airgap"
    _recraft(made.delta, crafted, attacker.key)
    rejected(
        airgap("unpack", crafted, dest, "--trust", made.pub),
        "bundle rejected: signature: delta.json.sig: does not verify with the key that signed",
    )
    rejected(airgap("verify", crafted, "--trust", made.pub), "bundle rejected: signature: delta")
    # Making a delta of the publisher's NEW with another key is refused (it re-uses NEW's
    # signature, so only NEW's own key may sign it).
    proc = airgap("delta", made.v1, made.v2, "-o", tmp_path / "x.airgap", "--key", attacker.key)
    assert proc.returncode == EXIT_ERROR and "is not signed by --key" in proc.stderr
    assert not (tmp_path / "x.airgap").exists()
    before.pop("evil.delta.airgap", None)
    before.pop("resigned.airgap", None)
    after = snapshot(tmp_path)
    after.pop("evil.delta.airgap")
    after.pop("resigned.airgap")
    assert after == before


# ---- trust: the rules of a full bundle (keys, --policy, co-signatures, expiry) --------------


@dataclasses.dataclass(frozen=True)
class Reviewed:
    """``made`` plus a reviewer's key pair and a policy needing both the packer and him."""

    made: Made
    bob: KeyPair
    policy: Path


@pytest.fixture(scope="module")
def reviewed(made: Made, tmp_path_factory: pytest.TempPathFactory) -> Reviewed:
    from conftest import _keypair

    root = tmp_path_factory.mktemp("review")
    bob = _keypair(root / "bob")
    policy = root / "policy.toml"
    policy.write_text(
        'format = "airgap-trust-policy/1"\n\n[keys]\n'
        f'alice = "{made.pub}"\nbob = "{bob.pub}"\n\n'
        '[[rules]]\nbundles = ["tiny"]\nkeys = ["alice", "bob"]\nthreshold = 2\n'
    )
    return Reviewed(made, bob, policy)


def test_a_delta_needs_the_policys_signers_as_a_full_bundle_does(
    reviewed: Reviewed, tmp_path: Path
) -> None:
    made, bob, policy = reviewed.made, reviewed.bob, reviewed.policy
    dest = unpacked(made, made.v1, tmp_path / "dest")
    before = snapshot(dest)
    delta = tmp_path / "d.airgap"
    shutil.copy(made.delta, delta)
    # One signer of two: refused by verify and unpack, naming the rule and the missing key,
    # with the very line a full bundle gets.
    want = (
        "bundle rejected: trust: manifest.json.sig: 1 of 2 required signatures; missing 1 "
        f"more from: bob ({bob.key_id[:16]}...)"
    )
    full = rejected(airgap("verify", made.v2, "--policy", policy), want)
    assert rejected(airgap("verify", delta, "--policy", policy), want) == full
    assert rejected(airgap("unpack", delta, dest, "--policy", policy), want) == full
    assert snapshot(dest) == before
    # Co-signed in the delta itself (`airgap sign` works on a delta): accepted.
    signed = ok(airgap("sign", delta, "--key", bob.key))
    assert "now holds 1 co-signature(s)" in signed.stdout
    out = ok(airgap("verify", delta, "--policy", policy)).stdout.splitlines()
    assert out[0].startswith("OK: delta tiny 1.0.0 -> 1.1.0, 3 carried files")
    assert out[1].startswith("trust: 2 of 2 required signatures (2 of 2 keys of ")
    proc = ok(airgap("unpack", delta, dest, "--policy", policy, "--json", "-q"))
    report = json.loads(proc.stdout)
    assert report["trust"]["met"] and report["trust"]["counted"] == [made_key_id(made), bob.key_id]
    # The tree, state and co-signature a full unpack of the co-signed NEW gives.
    v2 = cosigned(made.v2, tmp_path / "v2.airgap", bob)
    ok(airgap("unpack", v2, tmp_path / "full", "--policy", policy, "-q"))
    assert snapshot(dest) == snapshot(tmp_path / "full")
    assert (dest / ".airgap/cosignatures.json").is_file()
    # The co-signature is kept in DEST, so serve/run --policy can count it again.
    from bundler.verify.tree import check_unpacked

    assert check_unpacked(dest, policy=policy).version == "1.1.0"


def cosigned(bundle: Path, out: Path, kp: KeyPair) -> Path:
    """A copy of ``bundle`` at ``out``, co-signed in it by ``kp`` with `airgap sign`."""
    shutil.copy(bundle, out)
    assert "now holds" in ok(airgap("sign", out, "--key", kp.key)).stdout
    return out


def made_key_id(made: Made) -> str:
    from bundler.formats.signing import load_trusted_keys

    return load_trusted_keys([made.pub])[0].key_id


def test_co_signatures_of_the_full_bundle_hold_for_its_delta(
    reviewed: Reviewed, tmp_path: Path
) -> None:
    made, bob, policy = reviewed.made, reviewed.bob, reviewed.policy
    # A detached signature file made for the full NEW: same manifest bytes, so it holds.
    v2 = tmp_path / "v2.airgap"
    shutil.copy(made.v2, v2)
    ok(airgap("sign", v2, "--key", bob.key, "--detached"))
    sig = tmp_path / "v2.airgap.sig"
    ok(airgap("verify", made.delta, "--policy", policy, "--signatures", sig))
    dest = unpacked(made, made.v1, tmp_path / "dest")
    ok(airgap("unpack", made.delta, dest, "--policy", policy, "--signatures", sig, "-q"))
    # A delta made from a co-signed NEW carries its co-signatures, and is byte for byte the
    # delta co-signed afterwards: the output stays reproducible.
    ok(airgap("sign", v2, "--key", bob.key))
    from_signed = tmp_path / "from-signed.airgap"
    ok(airgap("delta", made.v1, v2, "-o", from_signed, "--key", made.key, "-q"))
    signed_after = cosigned(made.delta, tmp_path / "signed-after.airgap", bob)
    assert from_signed.read_bytes() == signed_after.read_bytes()
    assert from_signed.read_bytes().startswith(made.delta.read_bytes()[:512])
    ok(airgap("verify", from_signed, "--policy", policy))
    again = ok(airgap("sign", from_signed, "--key", bob.key)).stdout
    assert again.startswith("unchanged: ")
    # A delta with no co-signature keeps the bytes it had before co-signatures existed.
    tar = subprocess.run(["tar", "-tf", made.delta], capture_output=True, text=True, check=True)
    assert tar.stdout.split() == [
        "delta.json", "delta.json.sig", "payload.tar.zst", "manifest.json.zst",
        "manifest.json.sig",
    ]  # fmt: skip
    tar = subprocess.run(["tar", "-tf", from_signed], capture_output=True, text=True, check=True)
    assert tar.stdout.split()[5:] == [f"manifest.json.sig.{bob.key_id}"]


def test_a_delta_by_a_key_the_policy_lacks_is_refused(
    reviewed: Reviewed, tmp_path: Path, attacker: KeyPair
) -> None:
    made, policy = reviewed.made, reviewed.policy
    dest = unpacked(made, made.v1, tmp_path / "dest")
    before = snapshot(dest)
    delta = attackers_delta(made, attacker, tmp_path, "evil3")
    line = rejected(
        airgap("unpack", delta, dest, "--policy", policy),
        f"bundle rejected: signature: manifest.json.sig: no signature verifies with a key of "
        f"{policy} (manifest.json.sig unknown)",
    )
    assert "\x1b" not in line
    # The trusted keys co-sign the attacker's manifest, but the descriptor is still his
    # alone: a delta's descriptor must verify with its packer's key, which must be trusted.
    ok(airgap("sign", delta, "--key", reviewed.bob.key))
    ok(airgap("sign", delta, "--key", made.key))
    rejected(
        airgap("unpack", delta, dest, "--policy", policy),
        f"bundle rejected: signature: delta.json.sig: signed by the packer's key "
        f"{attacker.key_id[:16]}..., which is not a key of {policy}",
    )
    assert snapshot(dest) == before


def test_an_expired_delta_is_refused_as_a_full_bundle_is(made: Made, tmp_path: Path) -> None:
    # Packed with SOURCE_DATE_EPOCH in 2023 and expiring a day later: long expired.
    v3 = made.packer.pack("v3.airgap", version="1.2.0", score=SCORE_V2, toml="expires = 1\n")
    delta = tmp_path / "v3.delta.airgap"
    ok(airgap("delta", made.v1, v3, "-o", delta, "--key", made.key, "-q"))
    dest = unpacked(made, made.v1, tmp_path / "dest")
    before = snapshot(dest)
    want = f"bundle rejected: expiry: manifest.json: expired at {EPOCH + 86400} (now "
    full = rejected(airgap("verify", v3, "--trust", made.pub), want)
    for command in (("verify", delta), ("unpack", delta, dest)):
        line = rejected(airgap(*command, "--trust", made.pub), want)
        assert line.split(" epoch seconds)")[1] == full.split(" epoch seconds)")[1]
    assert snapshot(dest) == before


def test_a_rollback_by_delta_is_refused_under_a_policy_too(
    reviewed: Reviewed, tmp_path: Path
) -> None:
    made, bob, policy = reviewed.made, reviewed.bob, reviewed.policy
    v1 = cosigned(made.v1, tmp_path / "v1.airgap", bob)
    back = tmp_path / "back.airgap"
    ok(airgap("delta", made.v2, v1, "-o", back, "--key", made.key, "-q"))
    dest = unpacked(made, made.v2, tmp_path / "dest")
    before = snapshot(dest)
    rejected(
        airgap("unpack", back, dest, "--policy", policy),
        "bundle rejected: rollback: manifest.json: bundle tiny 1.0.0 is older than tiny 1.1.0",
    )
    assert snapshot(dest) == before
    ok(airgap("unpack", back, dest, "--policy", policy, "--allow-downgrade", "-q"))


# ---- doctor ---------------------------------------------------------------------------------


def test_doctor_names_the_base_a_delta_needs_and_whether_dest_holds_it(
    made: Made, tmp_path: Path
) -> None:
    def doctor(*args: str | Path) -> dict[str, dict[str, object]]:
        proc = airgap("doctor", made.delta, "--port", "1", "--json", *args)
        report = json.loads(proc.stdout)
        assert report["kind"] == "delta" and report["version"] == "1.1.0", report
        assert report["base"]["version"] == "1.0.0"
        assert report["base"]["manifest_sha256"] == base_sha
        return {c["name"]: c for c in report["checks"]}

    base_sha = json.loads(ok(airgap("inspect", made.delta, "--json")).stdout)["delta"]["base"][
        "manifest_sha256"
    ]
    # No DEST given: what it needs, and how to check one.
    c = doctor("--trust", made.pub)
    assert c["manifest"]["status"] == "ok" and c["manifest"]["detail"].startswith(
        "delta tiny 1.0.0 -> 1.1.0: signatures, descriptor and 3 carried files verify with "
    )
    assert c["base"]["status"] == "warn"
    assert c["base"]["detail"] == (
        f"needs tiny 1.0.0 (manifest sha256 {base_sha}); pass --dest DIR to check a DEST"
    )
    # A DEST holding the base: ok, and the space check counts what applying writes.
    base = unpacked(made, made.v1, tmp_path / "base")
    c = doctor("--dest", base)
    assert c["manifest"]["status"] == "warn"  # no --trust: read, not verified
    assert c["base"]["status"] == "ok" and c["base"]["holds"] is True
    assert c["base"]["detail"].startswith(f"{base} holds the base tiny 1.0.0 (manifest sha256 ")
    assert c["space"]["status"] == "ok" and "needed to apply the delta" in c["space"]["detail"]
    full_need = json.loads(airgap("doctor", made.v2, "--dest", base, "--json").stdout)
    full = {x["name"]: x for x in full_need["checks"]}["space"]["needed_bytes"]
    assert c["space"]["needed_bytes"] < full
    # A DEST at another version, an empty one: fail, with the line unpack would print.
    other = unpacked(made, made.v2, tmp_path / "other")
    c = doctor("--dest", other, "--trust", made.pub)
    assert c["base"]["status"] == "fail" and c["base"]["holds"] is False
    assert c["base"]["detail"].startswith(
        f"bundle rejected: delta: .airgap/manifest.json: {other} holds tiny 1.1.0 "
    )
    line = rejected(airgap("unpack", made.delta, other, "--trust", made.pub), "bundle rejected")
    assert c["base"]["detail"] == line
    (tmp_path / "empty").mkdir()
    c = doctor("--dest", tmp_path / "empty")
    assert c["base"]["status"] == "fail" and "holds no unpacked bundle" in c["base"]["detail"]
    # The human output: one line naming the delta, one per check.
    text = airgap("doctor", made.delta, "--dest", base, "--port", "1").stdout.splitlines()
    assert text[0] == f"delta {made.delta} (tiny 1.0.0 -> 1.1.0)"
    assert any(t.startswith("  ok    base      ") for t in text), text


# ---- kill -9 mid-apply ----------------------------------------------------------------------


@pytest.mark.slow
def test_kill_during_apply_leaves_the_base_and_the_next_run_cleans_the_stage(
    made: Made, tmp_path: Path
) -> None:
    big = {**V2_MODEL, "big.bin": (os.urandom(96 << 20), 0o644)}  # a wide window to kill in
    vbig = made.packer.pack("vbig.airgap", version="1.2.0", model=big)
    delta = tmp_path / "big.delta.airgap"
    ok(airgap("delta", made.v1, vbig, "-o", delta, "--key", made.key, "-q"))
    dest = unpacked(made, made.v1, tmp_path / "dest")
    before = snapshot(dest)
    proc = subprocess.Popen(
        [*AIRGAP, "unpack", str(delta), str(dest), "--trust", str(made.pub), "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    stage: list[Path] = []
    deadline = time.monotonic() + 120
    # Kill once the big carried file is being written into the stage.
    while proc.poll() is None and time.monotonic() < deadline and not stage:
        stage = [
            p for p in tmp_path.glob(".dest.airgap-stage-*") if (p / "model/model/big.bin").exists()
        ]
    proc.kill()
    proc.wait()
    assert stage, "the apply finished before it could be killed"
    assert stage[0].exists()  # the killed run's stage is left over ...
    assert snapshot(dest) == before  # ... and DEST is still exactly the base
    ok(airgap("unpack", delta, dest, "--trust", made.pub, "-q"))
    assert not list(tmp_path.glob(".dest.airgap-stage-*"))  # the next run removed it
    assert snapshot(dest) == snapshot(unpacked(made, vbig, tmp_path / "full"))


# ---- the descriptor's strict rules (pure) ---------------------------------------------------


def test_the_descriptor_parser_and_binding_refuse_what_the_writer_never_emits(made: Made) -> None:
    from bundler.formats.delta import check_binding
    from bundler.formats.manifest import parse_manifest

    with made.delta.open("rb") as f:
        outer = read_delta_outer(f)
    d = parse_descriptor(outer.descriptor)
    manifest = parse_manifest(outer.manifest)
    assert [e.path for e in check_binding(d, outer.manifest, manifest)] == list(d.carried)
    raw = json.loads(outer.descriptor)
    for bad, why in (
        ({**raw, "extra": 1}, "unknown field 'extra'"),
        ({**raw, "format": "airgap-delta/2"}, "unknown delta format"),
        ({k: v for k, v in raw.items() if k != "base"}, "missing field base"),
        ({**raw, "created": True}, "'created' must be a non-negative integer"),
    ):
        with pytest.raises(DeltaError, match=why):
            parse_descriptor(json.dumps(bad).encode())
    with pytest.raises(DeltaError, match="duplicate key"):
        parse_descriptor(b'{"format": "airgap-delta/1", "format": "airgap-delta/1"}')
    for carried, why in (
        ((*d.carried, "model/model/not-listed"), "carried but not listed"),
        (tuple(reversed(d.carried)), "not in manifest order"),
    ):
        with pytest.raises(DeltaError, match=why):
            check_binding(dataclasses.replace(d, carried=carried), outer.manifest, manifest)
    with pytest.raises(DeltaError, match="not the manifest this delta was made for"):
        check_binding(d, outer.manifest + b" ", manifest)


def test_the_compressed_manifest_is_bounded_before_its_signature_is_checked() -> None:
    import zstandard

    from bundler.errors import IntegrityError, ResourceLimitError
    from bundler.formats.delta import compress_manifest, decompress_manifest
    from bundler.formats.limits import Limits

    small = Limits(max_manifest_bytes=1000)
    assert decompress_manifest(compress_manifest(b"{}" * 500), small) == b"{}" * 500
    bomb = zstandard.ZstdCompressor().compress(b" " * 10_000_000)  # 10 MB from ~300 bytes
    with pytest.raises(ResourceLimitError, match=r"limit: manifest\.json\.zst: "):
        decompress_manifest(bomb, small)
    with pytest.raises(IntegrityError, match=r"manifest\.json\.zst: not a valid zstd stream"):
        decompress_manifest(b"not zstd at all", small)
