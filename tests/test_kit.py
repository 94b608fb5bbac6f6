"""`airgap kit`: the tool's own bootstrap kit, through the real CLI with real wheels from PyPI.

A kit for this host is installed by its install.sh inside `unshare -n` (no network, no pip
configuration) and the installed `airgap` verifies, unpacks and serves a real bundle; kits
for other targets have their wheel sets checked independently of the code that chose them;
two kits from the same inputs are the same bytes; tampering is caught by install.sh and by
openssl on the signed kit.json. The pure parts (file names, C-library floor, markers) have
their own tests below, with no network.
"""

from __future__ import annotations

import email.parser
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import require_netns
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from bundler.cli import main
from bundler.errors import KitError
from bundler.formats.signing import generate_keypair, load_private_key
from bundler.pack import runtime_sources
from bundler.pack.assemble import BundleMeta, SourceFile, collect_tree, write_bundle
from bundler.pack.kit import (
    LibcFloor,
    WheelInfo,
    build_kit,
    closure,
    kit_file_name,
    kit_libc_floor,
    platform_libc,
    render_sums,
)
from bundler.target import Target

ROOT = Path(__file__).resolve().parent.parent
AIRGAP = [sys.executable, "-m", "bundler"]
EPOCH = "1700000000"
HOST = Target.host()


@dataclass(frozen=True)
class Kit:
    tar: Path
    info: dict
    root: Path  # the extracted airgap-kit/ folder


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without this machine's pip settings or our checkout on the path."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))
    }
    env.update(extra)
    return env


def _airgap_kit(work: Path, name: str, *args: str, check: bool = True):
    env = {**os.environ, "SOURCE_DATE_EPOCH": EPOCH, "PYTHONPATH": str(ROOT)}
    cmd = [*AIRGAP, "kit", "-o", name, "--key", "keys/airgap.key", "--cache-dir", "cache"]
    proc = subprocess.run(
        [*cmd, *args, "--json"], cwd=work, env=env, capture_output=True, text=True, timeout=900
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _extract(tar: Path, into: Path) -> Path:
    into.mkdir(parents=True)
    subprocess.run(["tar", "-xf", str(tar), "-C", str(into)], check=True)
    return into / "airgap-kit"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kit")
    generate_keypair(root / "keys", None)
    return root


def _make_kit(work: Path, name: str, *args: str) -> Kit:
    proc = _airgap_kit(work, name, *args)
    tar = work / name
    return Kit(tar, json.loads(proc.stdout), _extract(tar, work / f"{name}.d"))


@pytest.fixture(scope="module")
def host_kit(work: Path) -> Kit:
    return _make_kit(work, "host.tar", "--python", HOST.python, "--platform", HOST.platforms[0])


# ---- the host kit: installed offline, then used ------------------------------------------


def _probe_bundle(work: Path) -> Path:
    """A real signed bundle for this host whose run() echoes its input."""

    def host_package(name: str) -> list[SourceFile]:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.submodule_search_locations
        return collect_tree(
            Path(next(iter(spec.submodule_search_locations))), f"runtime/lib/{name}"
        )

    score = (
        b"import json\n\ndef init():\n    pass\n\n"
        b"def run(raw):\n    return {'echo': json.loads(raw)}\n"
    )
    files = [
        SourceFile("app/score.py", score, 0o644),
        SourceFile("model/model.txt", b"a model\n", 0o644),
        *runtime_sources(),
        *host_package("gunicorn"),
        *host_package("packaging"),
    ]
    target = Target.create(HOST.python, ["manylinux_2_17_x86_64"])
    meta = BundleMeta(
        name="kit-probe",
        version="1.0.0",
        created=int(EPOCH),
        target=target,
        entry_script="app/score.py",
        mode="mounted",
    )
    bundle = work / "probe.airgap"
    write_bundle(bundle, files, meta, load_private_key(work / "keys" / "airgap.key", None))
    return bundle


CLIENT = textwrap.dedent("""
    import json, socket, subprocess, sys, urllib.request
    airgap, dest = sys.argv[1], sys.argv[2]
    assert [n for _, n in socket.if_nameindex()] == ["lo"]  # no network in here
    proc = subprocess.Popen([airgap, "serve", dest, "--port", "5001", "--json"],
                            stdout=subprocess.PIPE, text=True)
    try:
        ready = json.loads(proc.stdout.readline())
        req = urllib.request.Request(ready["scoring_uri"], data=b'{"x": [1, 2]}')
        with urllib.request.urlopen(req, timeout=60) as resp:
            print(json.dumps({"status": resp.status, "body": json.loads(resp.read())}))
    finally:
        proc.terminate()
    sys.exit(proc.wait(60))
""")


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.netns
def test_host_kit_installs_offline_and_the_installed_airgap_serves(
    host_kit: Kit, work: Path
) -> None:
    require_netns()
    bundle = _probe_bundle(work)
    run = work / "offline"
    run.mkdir()
    (run / "client.py").write_text(CLIENT)
    script = textwrap.dedent(f"""
        set -e
        ip link set lo up
        sh {host_kit.root}/install.sh --trust {work}/keys/airgap.pub --venv {run}/venv \\
            --bin-dir {run}/bin
        {run}/venv/bin/python -c 'import bundler, sys; print("MODULE", bundler.__file__)'
        {run}/bin/airgap verify {bundle} --trust {work}/keys/airgap.pub
        {run}/bin/airgap unpack {bundle} {run}/dest --trust {work}/keys/airgap.pub -q
        python3 {run}/client.py {run}/bin/airgap {run}/dest
    """)
    # No pip configuration, no index, no checkout on the path: only the kit can provide.
    env = _clean_env(PIP_NO_INDEX="1", PIP_CONFIG_FILE="/dev/null")
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", script],
        cwd=run,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert "kit signature verified" in proc.stdout
    module = next(line.split(" ", 1)[1] for line in lines if line.startswith("MODULE "))
    assert module.startswith(f"{run}/venv/"), module  # the kit's copy, not the checkout
    assert (run / "bin" / "airgap").resolve() == (run / "venv" / "bin" / "airgap").resolve()
    assert json.loads(lines[-1]) == {"status": 200, "body": {"echo": {"x": [1, 2]}}}


@pytest.mark.network
@pytest.mark.slow
def test_host_kit_lists_every_file_and_the_json_matches(host_kit: Kit) -> None:
    manifest = json.loads((host_kit.root / "kit.json").read_bytes())
    on_disk = {
        p.relative_to(host_kit.root).as_posix()
        for p in host_kit.root.rglob("*")
        if p.is_file() and p.name not in ("kit.json", "kit.json.sig")
    }
    assert {f["path"] for f in manifest["files"]} == on_disk
    for f in manifest["files"]:
        data = (host_kit.root / f["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"]
    assert manifest["format"] == "airgap-kit/1"
    assert manifest["tool"]["version"] == host_kit.info["tool_version"]
    assert manifest["target"] == HOST.to_json()
    assert manifest["libc"] == host_kit.info["libc"]
    assert manifest["pip"].startswith("wheels/pip-")
    # The tool's dependencies come from its metadata, so a new one in pyproject.toml follows.
    tool = host_kit.root / manifest["tool"]["wheel"]
    declared = _requires(tool, Target.host())
    assert {canonicalize_name(r.name) for r in declared} <= {
        p["name"] for p in manifest["packages"]
    }
    # sha256sum agrees with the manifest (the standard-tools check of the README).
    subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=host_kit.root, check=True)


@pytest.mark.network
@pytest.mark.slow
def test_a_dependency_added_to_pyproject_is_in_the_kit(work: Path) -> None:
    # As when another dependency lands in pyproject.toml: nothing in the kit code names them.
    source = work / "source-with-six"
    shutil.copytree(
        ROOT / "bundler", source / "bundler", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "README.md", source / "README.md")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '  "packaging>=24",\n' in pyproject
    (source / "pyproject.toml").write_text(
        pyproject.replace('  "packaging>=24",\n', '  "packaging>=24",\n  "six>=1.16",\n', 1)
    )
    proc = _airgap_kit(work, "six.tar", "--source", str(source))
    names = {w["name"] for w in json.loads(proc.stdout)["wheels"]}
    assert "six" in names and "airgap-bundler" in names
    kit = _extract(work / "six.tar", work / "six.d")
    assert any(
        ln.startswith("six==") for ln in (kit / "requirements.lock").read_text().splitlines()
    )


@pytest.mark.network
@pytest.mark.slow
def test_same_inputs_give_a_byte_identical_kit(host_kit: Kit, work: Path) -> None:
    again = _airgap_kit(
        work, "host-again.tar", "--python", HOST.python, "--platform", HOST.platforms[0]
    )
    assert json.loads(again.stdout)["sha256"] == host_kit.info["sha256"]
    assert (work / "host-again.tar").read_bytes() == host_kit.tar.read_bytes()
    # A plain ustar: regular files only, owners 0, every mtime SOURCE_DATE_EPOCH.
    with tarfile.open(host_kit.tar) as tf:
        members = tf.getmembers()
    assert all(m.isfile() and m.uid == 0 and m.mtime == int(EPOCH) for m in members)
    assert {m.name for m in members} >= {"airgap-kit/install.sh", "airgap-kit/kit.json.sig"}


@pytest.mark.network
@pytest.mark.slow
def test_an_earlier_kits_lock_gives_the_same_kit_again(host_kit: Kit, work: Path) -> None:
    again = _airgap_kit(
        work,
        "host-from-lock.tar",
        "--python",
        HOST.python,
        "--platform",
        HOST.platforms[0],
        "--lock",
        str(host_kit.root / "requirements.lock"),
    )
    assert json.loads(again.stdout)["sha256"] == host_kit.info["sha256"]
    assert (work / "host-from-lock.tar").read_bytes() == host_kit.tar.read_bytes()


@pytest.mark.network
@pytest.mark.slow
def test_a_lock_without_a_needed_pin_is_refused_naming_it(host_kit: Kit, work: Path) -> None:
    lines = (host_kit.root / "requirements.lock").read_text().splitlines()
    short = work / "short.lock"
    short.write_text("".join(ln + "\n" for ln in lines if not ln.startswith("click==")))
    proc = _airgap_kit(
        work,
        "short.tar",
        "--python",
        HOST.python,
        "--platform",
        HOST.platforms[0],
        "--lock",
        str(short),
        check=False,
    )
    assert proc.returncode == 1
    assert "lacks pins that target" in proc.stderr and "click>=" in proc.stderr
    assert not (work / "short.tar").exists()


# ---- tampering ------------------------------------------------------------------------------


def _copy(kit: Kit, dest: Path) -> Path:
    shutil.copytree(kit.root, dest)
    return dest


def _install(kit_root: Path, venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(kit_root / "install.sh"), "--venv", str(venv), *args],
        env=_clean_env(PIP_CONFIG_FILE="/dev/null"),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _openssl_verify(kit_root: Path, pub: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *("openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(pub), "-rawin"),
            *("-in", "kit.json", "-sigfile", "kit.json.sig"),
        ],
        cwd=kit_root,
        capture_output=True,
        text=True,
    )


def _wheel(kit_root: Path, prefix: str) -> Path:
    return next((kit_root / "wheels").glob(f"{prefix}-*.whl"))


@pytest.mark.network
@pytest.mark.slow
def test_a_tampered_wheel_is_caught_by_install_sh(host_kit: Kit, tmp_path: Path) -> None:
    kit = _copy(host_kit, tmp_path / "kit")
    wheel = _wheel(kit, "click")
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0x01
    wheel.write_bytes(bytes(data))
    proc = _install(kit, tmp_path / "venv")
    assert proc.returncode == 3, proc.stderr
    assert "kit rejected: integrity:" in proc.stderr
    assert f"wheels/{wheel.name}: FAILED" in proc.stderr
    assert not (tmp_path / "venv").exists()


@pytest.mark.network
@pytest.mark.slow
def test_a_crafted_file_name_is_reported_escaped_on_one_line(host_kit: Kit, tmp_path: Path) -> None:
    kit = _copy(host_kit, tmp_path / "kit")
    with (kit / "SHA256SUMS").open("a") as f:
        f.write(f"{'0' * 64}  wheels/\x1b[2J\x1b]0;owned\x07x.whl\n")
    proc = _install(kit, tmp_path / "venv")
    assert proc.returncode == 3
    rejected = [ln for ln in proc.stderr.splitlines() if "kit rejected" in ln]
    assert len(rejected) == 1 and rejected[0].startswith("install.sh: kit rejected: integrity:")
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr
    assert "?[2J" in rejected[0]
    assert not (tmp_path / "venv").exists()


@pytest.mark.network
@pytest.mark.slow
def test_a_wheel_swapped_with_its_sums_is_caught_by_the_signed_manifest(
    host_kit: Kit, work: Path, tmp_path: Path
) -> None:
    kit = _copy(host_kit, tmp_path / "kit")
    wheel = _wheel(kit, "click")
    wheel.write_bytes(wheel.read_bytes() + b"appended by an attacker")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    sums = (kit / "SHA256SUMS").read_text().splitlines()
    rel = f"wheels/{wheel.name}"
    sums = [f"{digest}  {rel}" if line.endswith("  " + rel) else line for line in sums]
    (kit / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    # SHA256SUMS alone now agrees: only the signed kit.json can tell.
    subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=kit, check=True)
    assert _openssl_verify(kit, work / "keys" / "airgap.pub").returncode == 0
    proc = _install(kit, tmp_path / "venv", "--trust", str(work / "keys" / "airgap.pub"))
    assert proc.returncode == 3, proc.stderr
    assert "kit rejected: integrity:" in proc.stderr and "SHA256SUMS: FAILED" in proc.stderr
    assert not (tmp_path / "venv").exists()


@pytest.mark.network
@pytest.mark.slow
def test_an_edited_manifest_fails_openssl_and_install_sh(
    host_kit: Kit, work: Path, tmp_path: Path
) -> None:
    kit = _copy(host_kit, tmp_path / "kit")
    pub = work / "keys" / "airgap.pub"
    assert _openssl_verify(kit, pub).returncode == 0
    text = (kit / "kit.json").read_bytes()
    (kit / "kit.json").write_bytes(text.replace(b'"min_version":"', b'"min_version":"1'))
    checked = _openssl_verify(kit, pub)
    assert checked.returncode != 0
    assert "Signature Verified Successfully" not in checked.stdout
    proc = _install(kit, tmp_path / "venv", "--trust", str(pub))
    assert proc.returncode == 3, proc.stderr
    assert "kit rejected: signature: kit.json.sig" in proc.stderr
    assert not (tmp_path / "venv").exists()


# ---- other targets: the wheel set, checked independently ----------------------------------


def _requires(
    wheel: Path, target: Target, extras: frozenset[str] = frozenset()
) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.BytesParser().parsebytes(zf.read(meta_name))
    env = target.marker_environment()
    out = []
    for text in meta.get_all("Requires-Dist") or []:
        req = Requirement(text)
        marker_ok = req.marker is None or any(
            Marker(str(req.marker)).evaluate({**env, "extra": e}) for e in ["", *extras]
        )
        if marker_ok:
            out.append(req)
    return out


def _glibc_of(plat: str) -> tuple[int, int] | None:
    legacy = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
    for alias, version in legacy.items():
        if plat.startswith(alias + "_"):
            return version
    if plat.startswith("manylinux_"):
        major, minor = plat.split("_")[1:3]
        return int(major), int(minor)
    return None


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.parametrize(
    ("python", "platform", "arch", "floor"),
    [
        ("3.12", "manylinux_2_28_aarch64", "aarch64", "2.28"),
        ("3.11", "manylinux2014_x86_64", "x86_64", "2.17"),
    ],
)
def test_a_kit_for_another_target_has_every_wheel_for_it(
    work: Path, tmp_path: Path, python: str, platform: str, arch: str, floor: str
) -> None:
    kit = _make_kit(
        work, f"kit-{python}-{platform}.tar", "--python", python, "--platform", platform
    )
    target = Target.create(python, [platform])
    manifest = json.loads((kit.root / "kit.json").read_bytes())
    files = sorted((kit.root / "wheels").iterdir())
    assert files and all(f.name.endswith(".whl") for f in files)  # no sdists
    by_name = {}
    needs: list[tuple[int, int]] = []
    for f in files:
        name, version, _, tags = parse_wheel_filename(f.name)
        assert target.accepts(tags), f.name
        by_name[name] = version
        glibc = [_glibc_of(t.platform) for t in tags if target.accepts(frozenset({t}))]
        if all(g is not None for g in glibc):
            needs.append(min(g for g in glibc if g is not None))
    # Every requirement of every wheel (with the target's markers) is in the kit.
    for f in files:
        for req in _requires(f, target):
            name = canonicalize_name(req.name)
            assert name in by_name, f"{f.name} needs {req}"
            assert req.specifier.contains(by_name[name], prereleases=True), f"{f.name}: {req}"
    assert {"airgap-bundler", "pip", "cryptography", "zstandard", "cffi"} <= set(by_name)
    compiled = [f.name for f in files if "manylinux" in f.name]
    assert any(f"-cp{python.replace('.', '')}-" in n or "-abi3-" in n for n in compiled)
    # The C-library floor: the newest glibc any one wheel needs.
    newest = max(needs)
    assert f"{newest[0]}.{newest[1]}" == floor
    assert manifest["libc"] == {"family": "glibc", "min_version": floor}
    assert kit.info["libc"] == manifest["libc"]
    installer = (kit.root / "install.sh").read_text()
    assert f"KIT_PYTHON='{python}'" in installer and f"KIT_ARCH='{arch}'" in installer
    assert f"KIT_LIBC_MIN='{floor}'" in installer
    if (python, arch) != (HOST.python, "x86_64"):
        # Its install.sh refuses this host before making anything, naming both sides.
        proc = _install(kit.root, tmp_path / "venv")
        assert proc.returncode == 1
        assert "host check:" in proc.stderr and f"the kit is for {python}" in proc.stderr
        assert not (tmp_path / "venv").exists()


@pytest.mark.network
@pytest.mark.slow
def test_a_target_without_wheels_is_refused_naming_the_dependencies(work: Path) -> None:
    proc = _airgap_kit(
        work, "old.tar", "--python", "3.11", "--platform", "manylinux2010_x86_64", check=False
    )
    assert proc.returncode == 1
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: no wheel for target cp311 (python 3.11) on manylinux2010_x86_64")
    assert "cryptography" in err and "zstandard" in err and "choose a newer --platform" in err
    assert json.loads(proc.stdout)["ok"] is False
    assert not (work / "old.tar").exists()


# ---- no network: the pure parts, the CLI's surface ---------------------------------------


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kit", "--help"]) == 0
    out = capsys.readouterr().out
    assert "airgap kit --python 3.11 --platform manylinux2014_x86_64" in out
    assert "install.sh --trust" in out


def test_a_malformed_target_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generate_keypair(tmp_path, None)
    code = main(
        [
            "kit",
            "--python",
            "311",
            "-o",
            str(tmp_path / "k.tar"),
            "--key",
            str(tmp_path / "airgap.key"),
        ]
    )
    assert code == 2
    assert "python '311' is not a version" in capsys.readouterr().err


def test_long_wheel_names_keep_the_tag_the_target_prefers() -> None:
    target = Target.create("3.11", ["manylinux_2_36_x86_64"])
    name = (
        "charset_normalizer-3.5.3-cp311-cp311-"
        "manylinux1_x86_64.manylinux_2_28_x86_64.manylinux_2_5_x86_64.whl"
    )
    short = kit_file_name(name, target)
    assert short == "charset_normalizer-3.5.3-cp311-cp311-manylinux_2_28_x86_64.whl"
    assert len(short) <= 100
    assert parse_wheel_filename(short)[3] <= parse_wheel_filename(name)[3]
    ok = "cffi-2.1.1-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"
    assert kit_file_name(ok, target) == ok


def test_the_libc_floor_is_the_newest_any_wheel_needs() -> None:
    target = Target.create("3.11", ["manylinux_2_36_x86_64"])
    assert platform_libc("manylinux2014_aarch64") == LibcFloor("glibc", (2, 17))
    assert platform_libc("musllinux_1_2_x86_64") == LibcFloor("musl", (1, 2))
    assert platform_libc("any") is None
    wheels = [
        "click-8.5.1-py3-none-any.whl",
        # Either tag is enough: this wheel needs 2.17, not 2.28.
        "cffi-2.1.1-cp311-cp311-manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl",
        "cryptography-50.0.2-cp311-abi3-manylinux_2_34_x86_64.whl",
    ]
    assert kit_libc_floor(wheels, target) == LibcFloor("glibc", (2, 34))
    assert str(kit_libc_floor(wheels[:2], target)) == "glibc 2.17"
    assert kit_libc_floor(wheels[:1], target) is None


def test_the_closure_follows_the_targets_markers_not_the_hosts() -> None:
    wheels = {
        "tool": WheelInfo(
            "tool",
            "1.0",
            (
                'dep ; python_version >= "3.12"',
                'old ; python_version < "3.11"',
                "extra-user[fast]>=2",
            ),
        ),
        "extra-user": WheelInfo("extra-user", "2.0", ('speedup ; extra == "fast"',)),
        "speedup": WheelInfo("speedup", "1.0", ()),
    }
    roots = [Requirement("tool")]
    needed, missing = closure(roots, wheels, Target.create("3.12", ["manylinux_2_17_x86_64"]))
    assert needed == {"tool", "extra-user", "speedup"}
    assert [str(r) for r in missing] == ['dep; python_version >= "3.12"']
    needed, missing = closure(roots, wheels, Target.create("3.11", ["manylinux_2_17_x86_64"]))
    assert missing == [] and needed == {"tool", "extra-user", "speedup"}
    wheels["extra-user"] = WheelInfo("extra-user", "1.5", ())
    _, missing = closure(roots, wheels, Target.create("3.11", ["manylinux_2_17_x86_64"]))
    assert [str(r) for r in missing] == ["extra-user[fast]>=2"]


def test_sums_are_sha256sum_format_sorted() -> None:
    assert render_sums([("b", "2" * 64), ("a", "1" * 64)]) == (
        f"{'1' * 64}  a\n{'2' * 64}  b\n".encode()
    )


class _Unstable:
    """A builder whose two builds differ, as a backend ignoring SOURCE_DATE_EPOCH would."""

    def __init__(self) -> None:
        self.calls = 0

    def build(self, source: Path, dest: Path, epoch: int) -> Path:
        self.calls += 1
        wheel = dest / "airgap_bundler-0.1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("x", str(self.calls))
        return wheel


def test_a_wheel_build_that_is_not_reproducible_is_refused(tmp_path: Path) -> None:
    generate_keypair(tmp_path, None)

    class _NoResolver:
        def download(self, requirements, target, dest) -> None:
            raise AssertionError("must not resolve an unreproducible build")

    with pytest.raises(KitError, match="twice gave different bytes"):
        build_kit(
            HOST,
            tmp_path / "k.tar",
            tmp_path / "airgap.key",
            created=int(EPOCH),
            source=ROOT,
            builder=_Unstable(),
            resolver=_NoResolver(),
        )
    assert not (tmp_path / "k.tar").exists()


def test_an_epoch_before_1980_is_refused(tmp_path: Path) -> None:
    generate_keypair(tmp_path, None)
    with pytest.raises(KitError, match="before 1980"):
        build_kit(HOST, tmp_path / "k.tar", tmp_path / "airgap.key", created=0, source=ROOT)


def test_a_folder_that_is_not_a_checkout_is_refused_with_the_remedy(tmp_path: Path) -> None:
    from bundler.pack.kit import check_source

    (tmp_path / "pyproject.toml").write_text('[project]\nname = "something-else"\n')
    with pytest.raises(KitError, match="not an airgap-bundler checkout") as info:
        check_source(tmp_path)
    assert info.value.remedy is not None and "--source" in info.value.remedy
    assert check_source(ROOT) == ROOT
