"""The host check: pure comparisons of a target with host facts, real probes, and the CLI.

The CLI tests unpack and serve real signed bundles whose target does not fit this machine
(another architecture, another Python) and assert the one line, the exit status, and that
nothing was made: no DEST for unpack, no DEST/.airgap/venv for serve.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import KeyPair, MakeBundle, require_netns, tiny_meta
from entry_scripts.harness import free_port, http

from bundler.deploy.hostcheck import (
    HostFacts,
    Problem,
    check,
    platform_need,
    require,
    target_summary,
    unpack_verdict,
)
from bundler.deploy.hostprobe import PROBE, parse_probe, probe_interpreter_facts, this_host
from bundler.deploy.local import LocalServer
from bundler.errors import EXIT_ERROR, EXIT_USAGE, HostMismatchError, LocalRunnerError
from bundler.formats.manifest import BaseImage, Target
from bundler.pack import runtime_sources
from bundler.pack.assemble import SourceFile, collect_tree, write_bundle
from bundler.verify.unpack import unpack

AIRGAP = [sys.executable, "-m", "bundler"]
PYENV = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"


def target(python: str = "3.11", *platforms: str, implementation: str = "cp") -> Target:
    abi = implementation + python.replace(".", "")
    return Target(python, implementation, abi, platforms or ("manylinux_2_28_x86_64",))


def facts(
    machine: str = "x86_64",
    libc: str | None = "glibc",
    version: tuple[int, int] | None = (2, 36),
    *,
    system: str = "linux",
    python: str | None = None,
    implementation: str | None = "cp",
    abi: str | None = None,
) -> HostFacts:
    if python is not None and abi is None and implementation == "cp":
        abi = "cp" + python.replace(".", "")
    return HostFacts(
        machine,
        system,
        libc,
        version,
        python,
        implementation if python else None,
        abi,
    )


def fields(problems: list[Problem]) -> list[str]:
    return [p.field for p in problems]


# ---- pure: one field at a time ---------------------------------------------------------------


def test_a_host_that_fits_has_no_problems() -> None:
    assert check(target(), facts()) == []
    assert check(target(), facts(python="3.11")) == []
    # glibc exactly the version the tag names is enough.
    assert check(target(), facts(version=(2, 28))) == []


def test_architecture_differs() -> None:
    problems = check(target("3.11", "manylinux_2_28_aarch64"), facts())
    assert problems == [Problem("architecture", "aarch64 needed")]


def test_operating_system_differs() -> None:
    assert fields(check(target("3.11", "macosx_11_0_arm64"), facts())) == ["os"]
    assert fields(check(target("3.11", "win_amd64"), facts())) == ["os"]
    # The same machine under the names other systems give it.
    windows = facts("x86_64", None, None, system="win32")
    assert check(target("3.11", "win_amd64"), windows) == []
    mac = facts("aarch64", None, None, system="darwin")
    assert check(target("3.11", "macosx_11_0_arm64"), mac) == []
    assert check(target("3.11", "macosx_11_0_universal2"), mac) == []


def test_glibc_too_old() -> None:
    problems = check(target(), facts(version=(2, 17)))
    assert problems == [Problem("libc version", "glibc 2.28 or newer needed")]
    # The legacy aliases are glibc versions too (PEP 600).
    assert fields(check(target("3.11", "manylinux2014_x86_64"), facts(version=(2, 12)))) == [
        "libc version"
    ]
    assert check(target("3.11", "manylinux2014_x86_64"), facts(version=(2, 17))) == []


def test_musl_and_glibc_are_not_interchangeable() -> None:
    musl_host = facts(libc="musl", version=(1, 2))
    assert check(target(), musl_host) == [Problem("libc", "glibc needed, not musl")]
    musl_target = target("3.11", "musllinux_1_2_x86_64")
    assert check(musl_target, facts()) == [Problem("libc", "musl needed, not glibc")]
    assert check(musl_target, musl_host) == []
    assert fields(check(musl_target, facts(libc="musl", version=(1, 1)))) == ["libc version"]


def test_python_minor_version_differs() -> None:
    assert check(target("3.11"), facts(python="3.12")) == [Problem("python", "Python 3.11 needed")]
    # Unpack asks no interpreter: no Python facts, no Python problem.
    assert check(target("3.9"), facts()) == []


def test_implementation_differs() -> None:
    pypy = facts(python="3.11", implementation="pp")
    assert fields(check(target("3.11"), pypy)) == ["implementation"]
    assert fields(check(target("3.10", implementation="pp"), facts(python="3.10"))) == [
        "implementation"
    ]


def test_free_threaded_build_is_another_abi() -> None:
    problems = check(target("3.13"), facts(python="3.13", abi="cp313t"))
    assert problems == [Problem("abi", "ABI cp313 needed, not cp313t")]


def test_every_listed_platform_must_fit_and_unknown_tags_are_skipped() -> None:
    mixed = target("3.11", "manylinux_2_17_x86_64", "manylinux_2_38_x86_64")
    assert fields(check(mixed, facts())) == ["libc version"]
    assert check(target("3.11", "any", "manylinux_2_17_x86_64"), facts()) == []
    assert platform_need("any") is None
    assert platform_need("some_future_tag") is None
    # A C library the probe could not identify is not held against the host.
    assert check(target(), facts(libc=None, version=None)) == []


def test_the_error_is_one_line_naming_both_sides_and_the_remedy(make_bundle: MakeBundle) -> None:
    from bundler.inspecting import read_manifest_unverified

    manifest = read_manifest_unverified(
        make_bundle(target=target("3.11", "manylinux_2_28_aarch64"))
    )
    with pytest.raises(HostMismatchError) as info:
        require(manifest, facts(), subject="this host", doing="serve")
    line = info.value.diagnostics()
    assert "\n" not in line
    assert line.startswith(
        "host check: bundle demo 1.0 targets cp311 (python 3.11) on manylinux_2_28_aarch64 "
        "(linux aarch64, glibc >= 2.28); this host is linux x86_64 with glibc 2.36 "
        "(aarch64 needed); "
    )
    assert 'platforms = ["manylinux_2_36_x86_64"]' in line  # the remedy names this host's tag
    assert info.value.exit_code == EXIT_ERROR


def test_python_remedy_names_the_flag(make_bundle: MakeBundle) -> None:
    from bundler.inspecting import read_manifest_unverified

    manifest = read_manifest_unverified(make_bundle(target=target("3.12")))
    with pytest.raises(HostMismatchError) as info:
        require(manifest, facts(python="3.10"), subject="--python /x/python3.10", doing="serve")
    line = info.value.diagnostics()
    assert "--python /x/python3.10 is linux x86_64 with glibc 2.36, CPython 3.10" in line
    assert "(Python 3.12 needed)" in line
    assert "pass --python with a CPython 3.12" in line


def test_unpack_refuses_without_a_base_image_and_warns_with_one(make_bundle: MakeBundle) -> None:
    from bundler.inspecting import read_manifest_unverified

    aarch64 = target("3.11", "manylinux_2_28_aarch64")
    plain = read_manifest_unverified(make_bundle(target=aarch64))
    with pytest.raises(HostMismatchError) as info:
        unpack_verdict(plain, facts(python="3.11"))
    assert "--no-host-check" in info.value.diagnostics()
    docker = read_manifest_unverified(
        make_bundle(target=aarch64, base_image=BaseImage("x:1", None, included=False))
    )
    warning = unpack_verdict(docker, facts())
    assert warning is not None and warning.startswith("host check: bundle demo 1.0 targets")
    assert "airgap build` checks the base image" in warning
    # The unpacking host's Python is not the bundle's concern.
    assert unpack_verdict(read_manifest_unverified(make_bundle()), facts(python="3.8")) is None


def test_target_summary_lists_each_need_once() -> None:
    t = target("3.11", "manylinux_2_28_x86_64", "manylinux_2_28_x86_64")
    assert target_summary(t) == (
        "cp311 (python 3.11) on manylinux_2_28_x86_64, manylinux_2_28_x86_64 "
        "(linux x86_64, glibc >= 2.28)"
    )


def test_probe_output_is_parsed_strictly() -> None:
    line = json.dumps(
        {
            "machine": "AMD64",
            "system": "linux",
            "libc": "glibc",
            "libc_version": "2.31",
            "python": "3.13",
            "implementation": "cpython",
            "abi_flags": "t",
            "executable": "/usr/bin/python3.13t",
        }
    )
    got = parse_probe("a warning on stderr\n" + line + "\n")
    assert got == HostFacts(
        "x86_64", "linux", "glibc", (2, 31), "3.13", "cp", "cp313t", "/usr/bin/python3.13t"
    )
    for bad in ("", "not json", "[1]", json.dumps({"machine": 1})):
        with pytest.raises(ValueError):
            parse_probe(bad)


# ---- real probes -----------------------------------------------------------------------------


def test_this_host_is_what_the_standard_library_says() -> None:
    host = this_host()
    assert host.system == "linux"
    assert host.machine == platform.machine()
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    assert (host.libc, "{}.{}".format(*host.libc_version)) == (name, version)
    assert host.python is None  # unpack and the platform check ask no Python questions


def _pyenv(version: str) -> Path:
    found = sorted(PYENV.glob(f"{version}.*/bin/python{version}"))
    if not found:
        pytest.skip(f"no pyenv Python {version} here")
    return found[-1]


def test_probe_runs_on_old_and_new_interpreters() -> None:
    for version in ("3.6", "3.8", "3.13"):
        got = probe_interpreter_facts(_pyenv(version))
        assert (got.python, got.implementation, got.abi) == (
            version,
            "cp",
            "cp" + version.replace(".", ""),
        )
        assert got.platform_only() == this_host()


def test_probing_something_that_is_not_python3_is_a_clear_error(tmp_path: Path) -> None:
    for bad in (Path("/bin/true"), tmp_path / "missing", PYENV / "2.7.18" / "bin" / "python"):
        if bad.name == "python" and not bad.exists():
            continue
        with pytest.raises(LocalRunnerError) as info:
            probe_interpreter_facts(bad)
        assert str(bad) in info.value.diagnostics()


# ---- the CLI against real bundles ------------------------------------------------------------

SCORE = b"""\
import sys


def init():
    pass


def run(raw_data):
    return {"python": "%d.%d" % sys.version_info[:2]}
"""


def _runtime_lib(name: str) -> list[SourceFile]:
    import importlib.util

    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations
    return collect_tree(Path(next(iter(spec.submodule_search_locations))), f"runtime/lib/{name}")


def servable_bundle(out: Path, key: KeyPair, bundle_target: Target) -> Path:
    """A real bundle the local runner can serve: entry script, the runtime and gunicorn."""
    files = [
        SourceFile("app/score.py", SCORE, 0o644),
        SourceFile("model/m.txt", b"m\n", 0o644),
        SourceFile("site-packages/hostcheck_probe/__init__.py", b"", 0o644),
        *runtime_sources(),
        *_runtime_lib("gunicorn"),
        *_runtime_lib("packaging"),
    ]
    meta = tiny_meta(target=bundle_target, entry_script="app/score.py", name="hostcheck")
    write_bundle(out, files, meta, key.private, threads=1)
    return out


def airgap(*args: str | Path, netns: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [*AIRGAP, *map(str, args)]
    if netns:
        cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.netns
def test_unpack_and_serve_refuse_another_architecture(
    make_bundle: MakeBundle, publisher: KeyPair, tmp_path: Path
) -> None:
    require_netns()
    bundle = make_bundle(target=target("3.11", "manylinux_2_28_aarch64"))
    dest = tmp_path / "dest"
    proc = airgap("unpack", bundle, dest, "--trust", publisher.pub, netns=True)
    assert proc.returncode == EXIT_ERROR
    line = _one_line(proc.stderr)
    assert line.startswith("host check: bundle demo 1.0 targets cp311 (python 3.11) on ")
    assert f"this host is linux {platform.machine()} with glibc" in line
    assert "--no-host-check" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == [bundle.name]  # nothing written

    proc = airgap("unpack", bundle, dest, "--trust", publisher.pub, "--no-host-check", netns=True)
    assert proc.returncode == 0, proc.stderr
    proc = airgap("serve", dest, "--port", str(free_port()), netns=True)
    assert proc.returncode == EXIT_ERROR
    line = _one_line(proc.stderr)
    assert line.startswith("host check: bundle demo 1.0 targets cp311 (python 3.11) on ")
    assert "(aarch64 needed)" in line
    assert "--no-host-check" not in line  # serve has no way around it
    assert not (dest / ".airgap" / "venv").exists()


def test_unpack_warns_when_a_base_image_could_run_it(
    make_bundle: MakeBundle, publisher: KeyPair, tmp_path: Path
) -> None:
    bundle = make_bundle(
        target=target("3.11", "musllinux_1_2_x86_64"),
        base_image=BaseImage("alpine-python:3.11", None, included=False),
    )
    proc = airgap("unpack", bundle, tmp_path / "dest", "--trust", publisher.pub, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"] is True
    warning = _one_line(proc.stderr)
    assert warning.startswith("warning: host check: bundle demo 1.0 targets cp311")
    assert "(musl needed, not glibc)" in warning
    assert (tmp_path / "dest" / ".airgap" / "manifest.json").is_file()


def test_serve_refuses_a_python_that_is_not_the_targets(publisher: KeyPair, tmp_path: Path) -> None:
    other = _pyenv("3.10")
    bundle = servable_bundle(tmp_path / "b.airgap", publisher, target("3.12"))
    dest = tmp_path / "dest"
    unpack(bundle, dest, [publisher.pub])
    for cmd in (["serve", dest], ["run", dest, "--local"]):
        proc = airgap(*cmd, "--python", other, "--port", str(free_port()))
        assert proc.returncode == EXIT_ERROR
        line = _one_line(proc.stderr)
        assert line.startswith(
            "host check: bundle hostcheck 1.0 targets cp312 (python 3.12) on "
            "manylinux_2_28_x86_64 (linux x86_64, glibc >= 2.28); "
            f"--python {other} is linux x86_64 with glibc"
        )
        assert ", CPython 3.10 (Python 3.12 needed); pass --python with a CPython 3.12" in line
        assert not (dest / ".airgap" / "venv").exists()
    proc = airgap("run", dest, "--python", other)
    assert proc.returncode == EXIT_USAGE
    assert "--python is for the local runner" in proc.stderr


def test_serve_uses_the_python_it_is_given(publisher: KeyPair, tmp_path: Path) -> None:
    given = _pyenv("3.12")
    bundle = servable_bundle(tmp_path / "b.airgap", publisher, target("3.12"))
    dest = tmp_path / "dest"
    unpack(bundle, dest, [publisher.pub])
    with LocalServer(dest, port=free_port(), python=given, log=tmp_path / "log") as server:
        status, _, body = http("POST", server.url + "/score", b"{}")
        assert (status, json.loads(body)) == (200, {"python": "3.12"})
    marker = json.loads((dest / ".airgap" / "venv" / "airgap-venv.json").read_text())
    assert (marker["python"], marker["base"]) == ("3.12", str(given))


def test_probe_reads_musls_version_from_its_loader_when_glibc_does_not_answer() -> None:
    # As on a musl system: confstr knows no glibc. musl's loader is real (Debian's musl).
    loaders = sorted(Path("/lib").glob("ld-musl-*.so.1"))
    code = "import os\ndel os.confstr\n" + PROBE
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60
    )
    got = parse_probe(proc.stdout)
    if not loaders:
        assert (got.libc, got.libc_version) == (None, None)
        pytest.skip("no musl loader here (apt-get install musl) to read a version from")
    assert (got.libc, got.libc_version) == ("musl", (1, 2))  # Debian 12's musl is 1.2.3
    assert check(target("3.11", "musllinux_1_2_x86_64"), got.platform_only()) == []
