"""`airgap doctor` on a good DEST, a bundle (verified or not), a noexec tmpfs, a busy port and
a bundle for another machine: the CLI's JSON fields and exit status, under `unshare -n`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import GoodUnpack, KeyPair, MakeBundle, require_netns

from bundler.deploy.doctor import diagnose
from bundler.errors import EngineUnavailableError
from bundler.formats.manifest import BaseImage, Target

AIRGAP = [sys.executable, "-m", "bundler"]
PY = "{}.{}".format(*sys.version_info[:2])
HOST_TARGET = Target(PY, "cp", f"cp{PY.replace('.', '')}", ("manylinux_2_17_x86_64",))
ARM_TARGET = Target(PY, "cp", f"cp{PY.replace('.', '')}", ("manylinux_2_17_aarch64",))


def doctor(*args: str | Path) -> tuple[int, dict[str, Any]]:
    """`airgap doctor ... --json` with no network but loopback; (exit status, report)."""
    require_netns()
    cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    cmd += [*AIRGAP, "doctor", *map(str, args), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return proc.returncode, json.loads(proc.stdout)


def checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


pytestmark = pytest.mark.netns


@pytest.fixture
def noexec(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("mounting a tmpfs needs root in CI")
        pytest.skip("mounting a tmpfs needs root")
    where = tmp_path / "noexec"
    where.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,noexec", "tmpfs", str(where)], check=True
    )
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_good_dest_passes_every_check(good_unpack: GoodUnpack, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    good_unpack.copy_to(dest)
    port = free_port()
    code, report = doctor(dest, "--port", port)
    assert code == 0, report
    assert (report["ok"], report["kind"], report["subject"]) == (True, "dest", str(dest))
    assert (report["name"], report["version"], report["verified"]) == ("demo", "1.0", True)
    c = checks(report)
    assert list(c) == ["manifest", "space", "noexec", "host", "python", "docker", "port"]
    assert c["manifest"]["status"] == "ok"
    assert "verifies with the key that verified it at unpack" in c["manifest"]["detail"]
    assert c["space"]["status"] == "ok"
    assert 0 < c["space"]["needed_bytes"] < c["space"]["free_bytes"]
    assert c["noexec"] == {
        "name": "noexec",
        "status": "ok",
        "detail": f"{dest} allows executables",
        "path": str(dest),
        "noexec": False,
    }
    assert c["port"]["status"] == "ok" and c["port"]["port"] == port
    assert c["docker"]["status"] in ("ok", "warn")  # whether an engine answers here
    if c["docker"]["status"] == "ok":
        assert c["docker"]["version"]


def test_a_bundle_unverified_verified_and_wrongly_signed(
    good_unpack: GoodUnpack, publisher: KeyPair, attacker: KeyPair, tmp_path: Path
) -> None:
    code, report = doctor(good_unpack.bundle, "--dest", tmp_path / "new")
    assert code == 0
    m = checks(report)["manifest"]
    assert (report["kind"], report["verified"], m["status"]) == ("bundle", False, "warn")
    assert "not verified (pass --trust KEY" in m["detail"]
    assert checks(report)["space"]["path"] == str(tmp_path)  # where the stage would go

    code, report = doctor(good_unpack.bundle, "--trust", publisher.pub)
    assert code == 0 and report["verified"] is True
    assert checks(report)["manifest"]["status"] == "ok"

    code, report = doctor(good_unpack.bundle, "--trust", attacker.pub)
    assert code == 1 and report["ok"] is False
    assert checks(report)["manifest"]["status"] == "fail"
    assert checks(report)["manifest"]["detail"].startswith("bundle rejected: signature")


def test_a_noexec_destination_fails(
    noexec: Path, good_unpack: GoodUnpack, publisher: KeyPair
) -> None:
    code, report = doctor(good_unpack.bundle, "--trust", publisher.pub, "--dest", noexec / "d")
    assert code == 1
    c = checks(report)["noexec"]
    assert (c["status"], c["noexec"], c["path"]) == ("fail", True, str(noexec))
    assert "noexec mount" in c["detail"]
    assert checks(report)["space"]["status"] == "ok"


def test_a_busy_port_fails(good_unpack: GoodUnpack, tmp_path: Path) -> None:
    require_netns()
    dest = tmp_path / "dest"
    good_unpack.copy_to(dest)
    # The listener must be in the same (new) namespace: doctor and it run in one unshare.
    script = (
        "import socket, subprocess, sys\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 5001)); s.listen()\n"
        f"sys.exit(subprocess.run({[*AIRGAP, 'doctor', str(dest), '--json']!r}).returncode)\n"
    )
    netns = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    proc = subprocess.run(
        [*netns, sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    c = checks(json.loads(proc.stdout))["port"]
    assert c == {
        "name": "port",
        "status": "fail",
        "detail": "127.0.0.1:5001 is in use; pass --port another",
        "host": "127.0.0.1",
        "port": 5001,
    }


def test_a_bundle_for_another_machine_fails_the_host_check(
    make_bundle: MakeBundle, publisher: KeyPair
) -> None:
    code, report = doctor(make_bundle(target=ARM_TARGET), "--trust", publisher.pub)
    assert code == 1
    host = checks(report)["host"]
    assert host["status"] == "fail"
    assert "aarch64 needed" in host["detail"] and host["problems"] == ["aarch64 needed"]
    # With a base image it is a warning: the Docker path checks the image instead.
    base = BaseImage("airgap-test/none:1", "sha256:" + "0" * 64, included=False)
    _, report = doctor(make_bundle(target=ARM_TARGET, base_image=base), "--trust", publisher.pub)
    assert checks(report)["host"]["status"] == "warn"


def test_the_human_output_has_one_line_per_check(good_unpack: GoodUnpack, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    good_unpack.copy_to(dest)
    proc = subprocess.run(
        [*AIRGAP, "doctor", str(dest), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = proc.stdout.splitlines()
    assert lines[0] == f"dest {dest} (demo 1.0)"
    assert [line.split()[1] for line in lines[1:-1]] == [
        "manifest",
        "space",
        "noexec",
        "host",
        "python",
        "docker",
        "port",
    ]
    assert lines[-1] == "no problems found"


# ---- the library: the Python/Docker rule with a stand-in engine -------------------------------


class _NoEngine:
    def __call__(self) -> Any:
        raise EngineUnavailableError("no Docker engine answers (test)")


class _Engine:
    def server_version(self) -> str:
        return "99.0-test"

    def data_root(self) -> str | None:
        return None


def test_no_python_fails_unless_the_docker_path_can_serve(
    make_bundle: MakeBundle, publisher: KeyPair
) -> None:
    far = Target("3.99", "cp", "cp399", ("manylinux_2_17_x86_64",))
    base = BaseImage("airgap-test/none:1", "sha256:" + "0" * 64, included=False)
    plain = make_bundle(target=far)
    with_base = make_bundle(target=far, base_image=base)
    trust = [publisher.pub]

    report = diagnose(plain, trust=trust, port=free_port(), engine=_NoEngine())
    c = {x.name: x for x in report.checks}
    assert (c["python"].status, c["docker"].status, report.ok) == ("fail", "warn", False)
    assert "Python 3.99" in c["python"].detail
    assert c["host"].status == "ok"  # the platform fits; only the interpreter is missing
    report = diagnose(with_base, trust=trust, port=free_port(), engine=_Engine)  # type: ignore[arg-type]
    c = {x.name: x for x in report.checks}
    assert (c["python"].status, c["docker"].status) == ("warn", "ok")
    assert "engine 99.0-test (not on this machine" in c["docker"].detail
