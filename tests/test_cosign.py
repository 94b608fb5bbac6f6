"""Co-signing (format revision 1.4) and N-of-M trust policies, through the real CLI on small
real bundles: `airgap sign` in the bundle and detached, `--policy` on verify / unpack / serve
(isolated-side commands under `unshare -n`), hostile co-signature members, openssl per
signature, reproducible bytes."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import KeyPair, MakeBundle, _keypair, require_netns, tiny_meta
from entry_scripts.harness import HERE, MODEL_DIR, free_port

from bundler.errors import EXIT_REJECTED, EXIT_USAGE
from bundler.formats.archive import BLOCK, ustar_header
from bundler.layout import STATE_COSIGNATURES
from bundler.pack import runtime_sources
from bundler.pack.assemble import SourceFile, collect_tree, write_bundle

AIRGAP = [sys.executable, "-m", "bundler"]
PY = "{}.{}".format(*sys.version_info[:2])
COSIG = "manifest.json.sig."


def airgap(
    *args: str | Path, netns: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [*AIRGAP, *map(str, args)]
    if netns:
        require_netns()
        cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    """alice packs; bob and carol review; mallory is trusted by nobody."""
    return {n: _keypair(tmp_path_factory.mktemp(n)) for n in ("alice", "bob", "carol", "mallory")}


def write_policy(path: Path, keys: dict[str, KeyPair], body: str) -> Path:
    """A policy file whose [keys] name each key pair's public key file."""
    lines = ['format = "airgap-trust-policy/1"', "", "[keys]"]
    lines += [f'{name} = "{kp.pub}"' for name, kp in keys.items() if name != "mallory"]
    path.write_text("\n".join(lines) + "\n\n" + body)
    return path


TWO_OF_THREE = """
[[rules]]
bundles = ["*"]
keys = ["alice", "bob", "carol"]
threshold = 2
"""


@pytest.fixture
def policy(tmp_path: Path, keys: dict[str, KeyPair]) -> Path:
    return write_policy(tmp_path / "policy.toml", keys, TWO_OF_THREE)


@pytest.fixture
def bundle(make_bundle: MakeBundle, keys: dict[str, KeyPair]) -> Path:
    return make_bundle("demo.airgap", key=keys["alice"])


def members(path: Path) -> dict[str, str]:
    """sha256 of every outer member, read with the standard library's tar reader."""
    with tarfile.open(path) as tar:
        out = {}
        for m in tar.getmembers():
            f = tar.extractfile(m)
            assert f is not None
            out[m.name] = hashlib.sha256(f.read()).hexdigest()
        return out


def sign(bundle: Path, kp: KeyPair, *extra: str) -> subprocess.CompletedProcess[str]:
    done = airgap("sign", bundle, "--key", kp.key, *extra)
    assert done.returncode == 0, done.stderr
    return done


def label(kp: KeyPair, name: str) -> str:
    return f"{name} ({kp.key_id[:16]}...)"


# ---- N of M ---------------------------------------------------------------------------------


def test_two_of_three_fails_with_one_naming_the_missing_keys_and_passes_with_two(
    bundle: Path, policy: Path, keys: dict[str, KeyPair]
) -> None:
    one = airgap("verify", bundle, "--policy", policy, netns=True)
    assert one.returncode == EXIT_REJECTED
    assert one.stderr.count("\n") == 1
    assert one.stderr.startswith(
        "bundle rejected: trust: manifest.json.sig: 1 of 2 required signatures; missing 1 more "
        f"from: {label(keys['bob'], 'bob')}, {label(keys['carol'], 'carol')}; "
    )
    assert "airgap sign BUNDLE --key KEY" in one.stderr

    signed = sign(bundle, keys["bob"])
    assert "now holds 1 co-signature(s); payload and manifest unchanged" in signed.stdout
    two = airgap("verify", bundle, "--policy", policy, netns=True)
    assert two.returncode == 0, two.stderr
    assert two.stdout.splitlines()[1] == (
        f"trust: 2 of 2 required signatures (2 of 3 keys of {policy} for '*'); signed by "
        f"{label(keys['alice'], 'alice')}, {label(keys['bob'], 'bob')}; not signed by: "
        f"{label(keys['carol'], 'carol')}"
    )
    doc = json.loads(airgap("verify", bundle, "--policy", policy, "--json", netns=True).stdout)
    assert doc["trust"] == {
        "policy": str(policy),
        "bundles": ["*"],
        "threshold": 2,
        "keys": 3,
        "counted": [keys["alice"].key_id, keys["bob"].key_id],
        "missing": [keys["carol"].key_id],
        "met": True,
    }
    assert [(s["source"], s["key"], s["status"]) for s in doc["signatures"]] == [
        ("manifest.json.sig", "alice", "valid"),
        (COSIG + keys["bob"].key_id, "bob", "valid"),
    ]


def test_co_signers_alone_can_meet_a_policy_without_the_packer(
    bundle: Path, tmp_path: Path, keys: dict[str, KeyPair]
) -> None:
    reviewers = {n: keys[n] for n in ("bob", "carol")}
    policy = write_policy(tmp_path / "p.toml", reviewers, "[[rules]]\nthreshold = 2\n")
    assert airgap("verify", bundle, "--policy", policy).returncode == EXIT_REJECTED
    sign(bundle, keys["bob"])
    sign(bundle, keys["carol"])
    doc = json.loads(airgap("verify", bundle, "--policy", policy, "--json").stdout)
    assert doc["ok"] is True
    # The packer's key is not in this policy: its signature is unknown, and does not count.
    assert [s["status"] for s in doc["signatures"]] == ["unknown", "valid", "valid"]


def test_a_signature_by_an_untrusted_key_does_not_count(
    bundle: Path, policy: Path, keys: dict[str, KeyPair]
) -> None:
    sign(bundle, keys["mallory"])
    refused = airgap("verify", bundle, "--policy", policy)
    assert refused.returncode == EXIT_REJECTED
    assert "1 of 2 required signatures" in refused.stderr
    sign(bundle, keys["carol"])
    doc = json.loads(airgap("verify", bundle, "--policy", policy, "--json").stdout)
    statuses = {s["key_id"]: s["status"] for s in doc["signatures"]}
    assert statuses[keys["mallory"].key_id] == "unknown"
    assert statuses[keys["carol"].key_id] == "valid"
    assert doc["trust"]["counted"] == [keys["alice"].key_id, keys["carol"].key_id]


def _flip_cosignature(bundle: Path, kid: str) -> None:
    data = bytearray(bundle.read_bytes())
    header = data.index((COSIG + kid).encode())
    data[header + BLOCK + 10] ^= 0x01  # one bit of the signature's bytes
    bundle.write_bytes(bytes(data))


def test_a_bit_flipped_co_signature_does_not_count_and_is_reported(
    bundle: Path, policy: Path, keys: dict[str, KeyPair]
) -> None:
    sign(bundle, keys["bob"])
    _flip_cosignature(bundle, keys["bob"].key_id)
    refused = airgap("verify", bundle, "--policy", policy)
    assert refused.returncode == EXIT_REJECTED
    assert "1 of 2 required signatures" in refused.stderr
    assert f"invalid, not counted: {COSIG}{keys['bob'].key_id}" in refused.stderr
    # 1 of 1 with --trust still passes on the good first signature, and reports the bad one.
    doc = json.loads(airgap("verify", bundle, "--trust", keys["alice"].pub, "--json").stdout)
    assert doc["ok"] is True
    assert [s["status"] for s in doc["signatures"]] == ["valid", "unknown"]
    doc = json.loads(
        airgap(
            "verify", bundle, "--trust", keys["alice"].pub, "--trust", keys["bob"].pub, "--json"
        ).stdout
    )
    assert [s["status"] for s in doc["signatures"]] == ["valid", "invalid"]
    # Signing again with bob's key replaces the bad signature with a good one.
    sign(bundle, keys["bob"])
    assert airgap("verify", bundle, "--policy", policy).returncode == 0


def test_a_duplicated_signature_or_key_never_counts_twice(
    bundle: Path, tmp_path: Path, keys: dict[str, KeyPair]
) -> None:
    # Two names (and two files) for bob's one public key, and carol: bob counts once.
    copy = tmp_path / "bob-copy.pub"
    shutil.copy(keys["bob"].pub, copy)
    policy = tmp_path / "dup.toml"
    policy.write_text(
        'format = "airgap-trust-policy/1"\n[keys]\n'
        f'bob = "{keys["bob"].pub}"\nbob2 = "{copy}"\ncarol = "{keys["carol"].pub}"\n'
        "[[rules]]\nthreshold = 2\n"
    )
    sign(bundle, keys["bob"])
    sign(bundle, keys["bob"], "--detached")  # the same signature again, beside the bundle
    refused = airgap("verify", bundle, "--policy", policy)
    assert refused.returncode == EXIT_REJECTED, refused.stderr
    assert "1 of 2 required signatures; missing 1 more from: carol" in refused.stderr
    with_trust = airgap("verify", bundle, "--trust", keys["bob"].pub, "--json")
    statuses = [s["status"] for s in json.loads(with_trust.stdout)["signatures"]]
    assert statuses == ["unknown", "valid", "duplicate"]

    # Two members with the same name: the bundle is refused outright.
    data = bundle.read_bytes()
    start = data.index((COSIG + keys["bob"].key_id).encode())
    twice = tmp_path / "twice.airgap"
    twice.write_bytes(data[: start + 2 * BLOCK] + data[start:])
    dup = airgap("verify", twice, "--trust", keys["alice"].pub)
    assert dup.returncode == EXIT_REJECTED
    assert dup.stderr.startswith(
        f"bundle rejected: unsafe member: {COSIG}{keys['bob'].key_id}: duplicate member"
    )


def test_trust_alone_stays_one_of_one(bundle: Path, keys: dict[str, KeyPair]) -> None:
    plain = airgap("verify", bundle, "--trust", keys["alice"].pub)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.count("\n") == 1  # the one OK line, as before co-signing existed
    sign(bundle, keys["bob"])
    # Any one trusted key suffices, a co-signer's too; an untrusted one is refused as before.
    assert airgap("verify", bundle, "--trust", keys["alice"].pub).returncode == 0
    assert airgap("verify", bundle, "--trust", keys["bob"].pub).returncode == 0
    refused = airgap("verify", bundle, "--trust", keys["mallory"].pub)
    assert refused.returncode == EXIT_REJECTED
    assert "which is not trusted here; pass --trust with the signer's public key" in (
        refused.stderr
    )


def test_per_name_rules_and_a_name_no_rule_covers(
    make_bundle: MakeBundle, tmp_path: Path, keys: dict[str, KeyPair]
) -> None:
    policy = write_policy(
        tmp_path / "names.toml",
        keys,
        '[[rules]]\nbundles = ["prod-*"]\nthreshold = 2\n\n'
        '[[rules]]\nbundles = ["dev-*", "lab"]\nkeys = ["alice"]\n',
    )
    prod = make_bundle("prod.airgap", key=keys["alice"], name="prod-iris")
    dev = make_bundle("dev.airgap", key=keys["alice"], name="dev-iris")
    other = make_bundle("other.airgap", key=keys["alice"], name="other")
    assert airgap("verify", dev, "--policy", policy).returncode == 0
    refused = airgap("verify", prod, "--policy", policy)
    assert refused.returncode == EXIT_REJECTED and "1 of 2 required" in refused.stderr
    sign(prod, keys["carol"])
    assert airgap("verify", prod, "--policy", policy).returncode == 0
    none = airgap("verify", other, "--policy", policy)
    assert none.returncode == EXIT_REJECTED
    assert f"trust: manifest.json: no rule of {policy} covers bundle name 'other'" in none.stderr


# ---- sign: bytes ----------------------------------------------------------------------------


def test_sign_keeps_payload_manifest_and_signature_bytes_and_is_reproducible(
    bundle: Path, tmp_path: Path, keys: dict[str, KeyPair]
) -> None:
    before = members(bundle)
    other = tmp_path / "other-order.airgap"
    shutil.copy(bundle, other)
    sign(bundle, keys["bob"])
    sign(bundle, keys["carol"])
    after = members(bundle)
    for name in ("payload.tar.zst", "manifest.json", "manifest.json.sig"):
        assert after[name] == before[name]
    assert set(after) - set(before) == {COSIG + keys["bob"].key_id, COSIG + keys["carol"].key_id}
    # The same keys in the other order give the same bytes; signing again changes nothing.
    sign(other, keys["carol"])
    sign(other, keys["bob"])
    assert other.read_bytes() == bundle.read_bytes()
    again = sign(bundle, keys["bob"], "--json")
    assert json.loads(again.stdout)["changed"] is False
    assert other.read_bytes() == bundle.read_bytes()
    # The packer's own key adds nothing either.
    assert json.loads(sign(bundle, keys["alice"], "--json").stdout)["changed"] is False
    assert other.read_bytes() == bundle.read_bytes()
    assert not list(tmp_path.glob(".*.tmp")) and not list(bundle.parent.glob(".*.tmp"))


def test_detached_signature_file_is_picked_up_beside_the_bundle_or_named(
    bundle: Path, policy: Path, tmp_path: Path, keys: dict[str, KeyPair]
) -> None:
    original = bundle.read_bytes()
    sign(bundle, keys["carol"], "--detached")
    assert bundle.read_bytes() == original  # read-only media: the bundle is not touched
    sidecar = bundle.with_name(bundle.name + ".sig")
    doc = json.loads(sidecar.read_bytes())
    assert doc["format"] == "airgap-signatures/1"
    assert [e["key_id"] for e in doc["signatures"]] == [keys["carol"].key_id]
    ok = airgap("verify", bundle, "--policy", policy, "--json", netns=True)
    assert ok.returncode == 0, ok.stderr
    sources = [s["source"] for s in json.loads(ok.stdout)["signatures"]]
    assert sources == ["manifest.json.sig", f"{sidecar.name}#0"]

    # Elsewhere, named with --signatures (and written with --out).
    elsewhere = tmp_path / "reviews" / "carol.sig"
    elsewhere.parent.mkdir()
    sidecar.rename(elsewhere)
    assert airgap("verify", bundle, "--policy", policy).returncode == EXIT_REJECTED
    named = airgap("verify", bundle, "--policy", policy, "--signatures", elsewhere)
    assert named.returncode == 0, named.stderr
    out = tmp_path / "bob.sig"
    sign(bundle, keys["bob"], "--detached", "--out", out)
    both = airgap("verify", bundle, "--policy", policy, "--signatures", out, "--json")
    assert json.loads(both.stdout)["trust"]["counted"][1] == keys["bob"].key_id

    # A signature file made for another bundle is named as such.
    shutil.copy(elsewhere, sidecar)
    other = bundle.with_name("demo2.airgap")
    shutil.copy(bundle, other)
    shutil.copy(elsewhere, other.with_name(other.name + ".sig"))
    changed = tmp_path / "changed.airgap"
    write_bundle(
        changed,
        [SourceFile("app/score.py", b"def init(): pass\ndef run(d): return 1\n", 0o644)],
        tiny_meta(entry_script="app/score.py"),
        keys["alice"].private,
    )
    wrong = airgap("verify", changed, "--trust", keys["alice"].pub, "--signatures", elsewhere)
    assert wrong.returncode == EXIT_REJECTED
    assert "signature: carol.sig: made for another manifest" in wrong.stderr


def test_inspect_shows_the_signatures_present(bundle: Path, keys: dict[str, KeyPair]) -> None:
    sign(bundle, keys["bob"])
    sign(bundle, keys["carol"], "--detached")
    info = json.loads(airgap("inspect", bundle, "--json").stdout)
    assert [(s["source"], s["key_id"]) for s in info["signatures_present"]] == [
        ("manifest.json.sig", keys["alice"].key_id),
        (COSIG + keys["bob"].key_id, keys["bob"].key_id),
        ("demo.airgap.sig#0", keys["carol"].key_id),
    ]
    human = airgap("inspect", bundle).stdout
    assert "signatures: 3 present (not verified)" in human


# ---- standard tools -------------------------------------------------------------------------


def test_openssl_verifies_each_signature(
    bundle: Path, tmp_path: Path, keys: dict[str, KeyPair]
) -> None:
    sign(bundle, keys["bob"])
    sign(bundle, keys["carol"], "--detached")
    work = tmp_path / "tools"
    work.mkdir()
    listing = subprocess.run(["tar", "-tf", bundle], capture_output=True, text=True, check=True)
    assert listing.stdout.splitlines() == [
        "payload.tar.zst",
        "manifest.json",
        "manifest.json.sig",
        COSIG + keys["bob"].key_id,
    ]
    subprocess.run(["tar", "-xf", bundle, "-C", work], check=True)
    sidecar = json.loads(bundle.with_name(bundle.name + ".sig").read_bytes())
    (work / "carol.sig").write_bytes(base64.b64decode(sidecar["signatures"][0]["signature"]))
    for sig, kp in (
        ("manifest.json.sig", keys["alice"]),
        (COSIG + keys["bob"].key_id, keys["bob"]),
        ("carol.sig", keys["carol"]),
    ):
        args = ["-pubin", "-inkey", str(kp.pub), "-rawin", "-in", "manifest.json", "-sigfile", sig]
        done = subprocess.run(
            ["openssl", "pkeyutl", "-verify", *args], cwd=work, capture_output=True, text=True
        )
        assert done.returncode == 0, (sig, done.stdout, done.stderr)
        assert "Signature Verified Successfully" in done.stdout
    # And each key id is in the member's name, as openssl and sha256sum compute it.
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-in", str(keys["bob"].pub), "-outform", "DER"],
        capture_output=True,
        check=True,
    ).stdout
    assert hashlib.sha256(der[-32:]).hexdigest() == keys["bob"].key_id


# ---- unpack, serve ---------------------------------------------------------------------------


def _host_package(name: str) -> list[SourceFile]:
    import importlib.util

    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations
    return collect_tree(Path(next(iter(spec.submodule_search_locations))), f"runtime/lib/{name}")


@pytest.fixture
def servable(tmp_path: Path, keys: dict[str, KeyPair]) -> Path:
    """A real bundle around tests/entry_scripts/probe.py that `airgap serve` can run here."""
    from bundler.formats.manifest import Target

    target = Target(PY, "cp", f"cp{PY.replace('.', '')}", ("manylinux_2_17_x86_64",))
    files = [
        SourceFile("app/score.py", HERE / "probe.py", 0o644),
        SourceFile("model/linear.json", MODEL_DIR / "linear.json", 0o644),
        *runtime_sources(),
        *_host_package("gunicorn"),
        *_host_package("packaging"),
    ]
    bundle = tmp_path / "probe.airgap"
    write_bundle(bundle, files, tiny_meta(name="probe", target=target), keys["alice"].private)
    return bundle


@pytest.mark.netns
def test_unpack_keeps_the_co_signatures_and_serve_re_checks_them_with_the_policy(
    servable: Path, policy: Path, tmp_path: Path, keys: dict[str, KeyPair]
) -> None:
    dest = tmp_path / "dest"
    refused = airgap("unpack", servable, dest, "--policy", policy, netns=True)
    assert refused.returncode == EXIT_REJECTED and "1 of 2 required" in refused.stderr
    assert not dest.exists()
    sign(servable, keys["bob"], "--detached")
    done = airgap("unpack", servable, dest, "--policy", policy, "--json", netns=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["trust"]["met"] is True
    stored = json.loads((dest / STATE_COSIGNATURES).read_bytes())
    assert [e["key_id"] for e in stored["signatures"]] == [keys["bob"].key_id]

    strict = write_policy(tmp_path / "strict.toml", keys, "[[rules]]\nthreshold = 3\n")
    port = free_port()
    no = airgap("serve", dest, "--port", port, "--policy", strict, netns=True)
    assert no.returncode == EXIT_REJECTED
    assert no.stderr.startswith("bundle rejected: trust: manifest.json.sig: 2 of 3 required")
    assert "missing 1 more from: carol" in no.stderr

    # With the 2-of-3 policy the stored co-signature counts again, and the server starts.
    cmd = [*AIRGAP, "serve", str(dest), "--port", "5001", "--policy", str(policy), "--json"]
    client = tmp_path / "client.py"
    client.write_text(
        "import json, subprocess, sys\n"
        f"proc = subprocess.Popen({cmd!r}, stdout=subprocess.PIPE, text=True)\n"
        "try:\n"
        "    print(proc.stdout.readline())\n"
        "finally:\n"
        "    proc.terminate()\n"
        "sys.exit(proc.wait(60))\n"
    )
    require_netns()
    ran = subprocess.run(
        ["unshare", "-n", "sh", "-c", f"ip link set lo up && {sys.executable} {client}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout.strip().splitlines()[-1])["ok"] is True

    # The stored co-signatures are re-verified, not taken on trust: an edited one is refused.
    entry = stored["signatures"][0]
    entry["signature"] = base64.b64encode(bytes(64)).decode()
    (dest / STATE_COSIGNATURES).write_text(json.dumps(stored))
    edited = airgap("serve", dest, "--port", port, "--policy", policy, netns=True)
    assert edited.returncode == EXIT_REJECTED
    assert "1 of 2 required signatures" in edited.stderr


# ---- policy files and usage -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[[rules]\n", "not valid TOML"),
        ("colour = 1\n[[rules]]\n", "key colour: give a file name"),
        ("[[rules]]\ncolour = 1\n", "rules[0]: unknown field(s) colour"),
        ("[[rules]]\nthreshold = 4\n", "threshold 4 but only 3 distinct key(s)"),
        ("[[rules]]\nthreshold = 0\n", "threshold must be a whole number >= 1"),
        ('[[rules]]\nkeys = ["dave"]\n', "key 'dave' is not in [keys]"),
        ("", "[[rules]] must hold 1 to 256 rules"),
    ],
)
def test_a_malformed_policy_is_a_usage_error_naming_the_problem(
    bundle: Path, tmp_path: Path, keys: dict[str, KeyPair], body: str, message: str
) -> None:
    policy = write_policy(tmp_path / "bad.toml", keys, body)
    done = airgap("verify", bundle, "--policy", policy)
    assert done.returncode == EXIT_USAGE, done.stderr
    assert done.stderr.startswith(f"trust policy: {policy}: ")
    assert message in done.stderr
    assert done.stderr.count("\n") == 1


def test_policy_key_files_and_pinned_key_ids_are_checked(
    bundle: Path, tmp_path: Path, keys: dict[str, KeyPair]
) -> None:
    missing = tmp_path / "missing.toml"
    missing.write_text(
        'format = "airgap-trust-policy/1"\n[keys]\na = "nope.pub"\n[[rules]]\nthreshold = 1\n'
    )
    done = airgap("verify", bundle, "--policy", missing)
    assert done.returncode == EXIT_USAGE and "nope.pub: cannot read" in done.stderr
    pinned = tmp_path / "pinned.json"
    pinned.write_text(
        json.dumps(
            {
                "format": "airgap-trust-policy/1",
                "keys": {"alice": {"file": str(keys["alice"].pub), "key_id": "0" * 64}},
                "rules": [{"threshold": 1}],
            }
        )
    )
    done = airgap("verify", bundle, "--policy", pinned)
    assert done.returncode == EXIT_USAGE and "not 0000000000000000..." in done.stderr
    pinned.write_text(pinned.read_text().replace("0" * 64, keys["alice"].key_id))
    assert airgap("verify", bundle, "--policy", pinned).returncode == 0


def test_trust_and_policy_together_or_neither_is_a_usage_error(
    bundle: Path, policy: Path, keys: dict[str, KeyPair]
) -> None:
    both = airgap("verify", bundle, "--policy", policy, "--trust", keys["alice"].pub)
    assert both.returncode == EXIT_USAGE and "--trust and --policy both given" in both.stderr
    env = {k: v for k, v in os.environ.items() if k != "AIRGAP_TRUST"}
    neither = airgap("verify", bundle, env=env)
    assert neither.returncode == EXIT_USAGE and "or --policy FILE" in neither.stderr
    # AIRGAP_TRUST gives way to --policy rather than weakening it.
    env["AIRGAP_TRUST"] = str(keys["mallory"].pub)
    assert airgap("verify", bundle, "--policy", policy, env=env).returncode == EXIT_REJECTED


# ---- hostile co-signatures --------------------------------------------------------------------


def _with_members(bundle: Path, extra: list[tuple[str, bytes]], out: Path) -> Path:
    """``bundle`` with raw outer members inserted before its end marker (no checks)."""
    data = bundle.read_bytes()
    end = len(data) - 2 * BLOCK
    assert data[end:] == bytes(2 * BLOCK)
    body = b"".join(
        ustar_header(n, len(d), 0o644, 0) + d + bytes(-len(d) % BLOCK) for n, d in extra
    )
    out.write_bytes(data[:end] + body + data[end:])
    return out


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            [(COSIG + "A" * 64, bytes(64))],
            f"integrity: {COSIG}{'A' * 64}: unexpected member in the outer archive",
        ),
        (
            [(COSIG + "ab\x1b[31m", bytes(64))],
            f"integrity: {COSIG}ab\\x1b[31m: unexpected member",
        ),
        ([(COSIG + "1" * 64, bytes(65))], f"limit: {COSIG}{'1' * 64}: 65 bytes, over the limit"),
        (
            [(COSIG + "2" * 64, bytes(64)), (COSIG + "1" * 64, bytes(64))],
            f"integrity: {COSIG}{'1' * 64}: co-signature members out of order",
        ),
        (
            [(COSIG + f"{i:064x}", bytes(64)) for i in range(33)],
            f"limit: {COSIG}{32:064x}: more than 32 co-signatures",
        ),
        ([("evil.sh", b"rm -rf /\n")], "integrity: bundle: extra data after the last member"),
    ],
    ids=["uppercase-id", "control-chars", "oversized", "out-of-order", "too-many", "other-name"],
)
def test_hostile_co_signature_members_are_refused(
    bundle: Path,
    tmp_path: Path,
    keys: dict[str, KeyPair],
    extra: list[tuple[str, bytes]],
    expected: str,
) -> None:
    crafted = _with_members(bundle, extra, tmp_path / "crafted.airgap")
    done = airgap("verify", crafted, "--trust", keys["alice"].pub, netns=True)
    assert done.returncode == EXIT_REJECTED, done.stderr
    assert done.stderr.startswith("bundle rejected: " + expected), done.stderr
    assert "\x1b" not in done.stderr and done.stderr.count("\n") == 1
    # Nothing is written: unpack refuses the same way and leaves no DEST.
    dest = tmp_path / "dest"
    assert airgap("unpack", crafted, dest, "--trust", keys["alice"].pub).returncode == 3
    assert not dest.exists()


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ("not json", "not a signature file (strict JSON)"),
        ('{"format": "x", "manifest_sha256": "", "signatures": []}', "format is not"),
        ("DUPLICATE", "appears twice"),
        ("BADSIG", "signature is not the base64 of 64 bytes"),
        ("X" * 70_000, "over the limit of 65536"),
    ],
)
def test_hostile_detached_files_are_refused(
    bundle: Path, tmp_path: Path, keys: dict[str, KeyPair], doc: str, expected: str
) -> None:
    sign(bundle, keys["bob"], "--detached")
    sidecar = bundle.with_name(bundle.name + ".sig")
    good = json.loads(sidecar.read_bytes())
    if doc == "DUPLICATE":
        good["signatures"] *= 2
        doc = json.dumps(good)
    elif doc == "BADSIG":
        good["signatures"][0]["signature"] = "!" * 88
        doc = json.dumps(good)
    sidecar.write_text(doc)
    done = airgap("verify", bundle, "--trust", keys["alice"].pub)
    assert done.returncode == EXIT_REJECTED, done.stderr
    assert f"{sidecar.name}" in done.stderr and expected in done.stderr


@pytest.mark.netns
def test_run_and_build_re_check_the_stored_signatures_with_the_policy(
    bundle: Path, tmp_path: Path, keys: dict[str, KeyPair]
) -> None:
    dest = tmp_path / "dest"
    done = airgap("unpack", bundle, dest, "--trust", keys["alice"].pub, "--no-host-check")
    assert done.returncode == 0, done.stderr
    assert not (dest / STATE_COSIGNATURES).exists()  # none presented: the state is as before
    strict = write_policy(tmp_path / "strict.toml", keys, "[[rules]]\nthreshold = 2\n")
    # Both refuse on the stored signatures before any engine, venv or server is touched.
    for cmd in (("run", dest, "--local", "--port", "5999"), ("build", dest)):
        refused = airgap(*cmd, "--policy", strict, netns=True)
        assert refused.returncode == EXIT_REJECTED, refused.stderr
        assert refused.stderr.startswith(
            "bundle rejected: trust: manifest.json.sig: 1 of 2 required signatures"
        )


@pytest.mark.parametrize("command", ["sign", "verify", "unpack"])
def test_help_shows_a_co_signing_example(command: str) -> None:
    done = airgap(command, "--help")
    assert done.returncode == 0
    assert "Example:" in done.stdout
    assert ("--policy" if command != "sign" else "airgap sign iris.airgap --key") in done.stdout


def test_sign_through_a_link_signs_the_bundle_and_keeps_the_link(
    bundle: Path, tmp_path: Path, policy: Path, keys: dict[str, KeyPair]
) -> None:
    link = tmp_path / "link.airgap"
    link.symlink_to(bundle)
    sign(link, keys["bob"])
    assert link.is_symlink()
    assert airgap("verify", bundle, "--policy", policy).returncode == 0


def test_sign_refuses_a_damaged_bundle_and_leaves_it_alone(
    bundle: Path, keys: dict[str, KeyPair]
) -> None:
    data = bytearray(bundle.read_bytes())
    data[BLOCK + 40] ^= 0xFF  # inside the payload: its sha256 no longer matches
    bundle.write_bytes(bytes(data))
    done = airgap("sign", bundle, "--key", keys["bob"].key)
    assert done.returncode == EXIT_REJECTED
    assert "integrity: payload.tar.zst: sha256 differs from the manifest" in done.stderr
    assert bundle.read_bytes() == bytes(data)
    assert not list(bundle.parent.glob(".*.tmp"))


def test_two_signers_at_once_both_land(
    bundle: Path, policy: Path, keys: dict[str, KeyPair]
) -> None:
    procs = [
        subprocess.Popen(
            [*AIRGAP, "sign", str(bundle), "--key", str(keys[n].key)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in ("bob", "carol", "mallory")
    ]
    assert [p.wait(120) for p in procs] == [0, 0, 0]
    # Each signer reads, adds and renames over; the folder lock makes them take turns.
    assert set(members(bundle)) - {"payload.tar.zst", "manifest.json", "manifest.json.sig"} == {
        COSIG + keys[n].key_id for n in ("bob", "carol", "mallory")
    }


def test_detached_out_must_not_be_the_bundle(bundle: Path, keys: dict[str, KeyPair]) -> None:
    original = bundle.read_bytes()
    done = airgap("sign", bundle, "--key", keys["bob"].key, "--detached", "--out", bundle)
    assert done.returncode == EXIT_USAGE and "is the bundle itself" in done.stderr
    assert bundle.read_bytes() == original
    no_detached = airgap("sign", bundle, "--key", keys["bob"].key, "--out", "x.sig")
    assert no_detached.returncode == EXIT_USAGE and "--out is for --detached" in no_detached.stderr


# ---- the pure core: trust rules on bytes, no files --------------------------------------------


def test_trust_rules_on_bytes_alone(keys: dict[str, KeyPair]) -> None:
    from bundler.errors import SignatureError, TrustError
    from bundler.formats.cosign import Cosignature
    from bundler.formats.signing import TrustedKey
    from bundler.verify.trustpolicy import Rule, TrustPolicy, check_signatures, decide

    def trusted(n: str) -> TrustedKey:
        return TrustedKey(keys[n].key_id, keys[n].private.public_key(), Path(n))

    message = b'{"any": "bytes"}\n'
    policy = TrustPolicy(
        keys={keys[n].key_id: trusted(n) for n in ("alice", "bob", "carol")},
        names={keys[n].key_id: n for n in ("alice", "bob", "carol")},
        rules=(Rule(("*",), tuple(keys[n].key_id for n in ("alice", "bob", "carol")), 2),),
        source="p",
    )
    primary = keys["alice"].private.sign(message)
    bob = keys["bob"].private.sign(message)
    flipped = bytes([bob[0] ^ 1]) + bob[1:]
    cos = [
        Cosignature(keys["bob"].key_id, flipped, "m1"),
        Cosignature(keys["mallory"].key_id, keys["mallory"].private.sign(message), "m2"),
        Cosignature(keys["alice"].key_id, primary, "m3"),
    ]
    checks = check_signatures(message, primary, cos, policy)
    assert [c.status for c in checks] == ["valid", "invalid", "unknown", "duplicate"]
    with pytest.raises(TrustError, match=r"1 of 2 required signatures.*invalid, not counted: m1"):
        decide(policy, "demo", checks)
    checks = check_signatures(message, primary, [Cosignature(keys["bob"].key_id, bob, "m")], policy)
    decision = decide(policy, "demo", checks)
    assert decision.counted == (keys["alice"].key_id, keys["bob"].key_id)
    assert decision.missing == (keys["carol"].key_id,)

    # verify_manifest with --trust alone keeps the pre-1.4 rejection for a foreign signer.
    from bundler.verify.policy import verify_manifest

    with pytest.raises(SignatureError, match="does not verify with any trusted key"):
        verify_manifest(message, bob, [trusted("alice")], now=0)
