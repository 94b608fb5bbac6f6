"""The local runner against real signed, unpacked bundles: isolation, caching, stop, offline."""

from __future__ import annotations

import importlib.util
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import require_netns
from entry_scripts.harness import HERE, MODEL_DIR, free_port, http

from bundler.deploy import local as local_module
from bundler.deploy.local import (
    LocalServer,
    ensure_venv,
    find_python,
    scoring_environment,
    server_command,
)
from bundler.errors import LocalRunnerError, TreeModifiedError
from bundler.formats.manifest import Target
from bundler.formats.signing import generate_keypair, load_private_key
from bundler.pack import runtime_sources
from bundler.pack.assemble import BundleMeta, SourceFile, collect_tree, write_bundle
from bundler.verify.tree import check_unpacked
from bundler.verify.unpack import unpack

PY = "{}.{}".format(*sys.version_info[:2])
TARGET = Target(
    python=PY,
    implementation="cp",
    abi=f"cp{PY.replace('.', '')}",
    platforms=("manylinux_2_17_x86_64",),
)
SITE_MODULE = "airgap_site_probe"  # only in the bundle's site-packages


def _host_package_files(name: str, prefix: str) -> list[SourceFile]:
    """An installed pure-Python package of this host, as payload files (for runtime/lib)."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations
    root = Path(next(iter(spec.submodule_search_locations)))
    return collect_tree(root, f"{prefix}/{name}")


def _tiny_wheel(folder: Path, name: str, value: str) -> Path:
    import zipfile

    dist = f"{name}-1.0.dist-info"
    files = {
        f"{name}/__init__.py": f"VALUE = {value!r}\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{p},,\n" for p in files) + f"{dist}/RECORD,,\n"
    wheel = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    generate_keypair(folder, None)
    return folder


MakeDest = Callable[..., Path]


@pytest.fixture(scope="module")
def make_dest(tmp_path_factory: pytest.TempPathFactory, keys: Path) -> MakeDest:
    """Build a real signed bundle around an entry script and unpack it; return DEST."""

    def make(
        script: str = "probe.py", *, mode: str = "mounted", env: dict[str, str] | None = None
    ) -> Path:
        work = tmp_path_factory.mktemp("bundle")
        files = [
            SourceFile("app/score.py", HERE / script, 0o644),
            SourceFile("model/linear.json", MODEL_DIR / "linear.json", 0o644),
            SourceFile(
                f"site-packages/{SITE_MODULE}/__init__.py", b"VALUE = 'from the bundle'\n", 0o644
            ),
            *runtime_sources(),
            *_host_package_files("gunicorn", "runtime/lib"),
            *_host_package_files("packaging", "runtime/lib"),
        ]
        if mode == "dynamic":
            wheels = work / "wheels"
            wheels.mkdir()
            wheel = _tiny_wheel(wheels, "airgap_wheel_probe", "installed at start")
            files.append(SourceFile(f"wheels/{wheel.name}", wheel, 0o644))
            files.append(SourceFile("wheels/requirements.txt", b"airgap_wheel_probe==1.0\n", 0o644))
        meta = BundleMeta(
            name="probe",
            version="1.0.0",
            created=1_700_000_000,
            target=TARGET,
            entry_script="app/score.py",
            mode=mode,  # type: ignore[arg-type]
            env=env or {},
        )
        bundle = work / "probe.airgap"
        write_bundle(bundle, files, meta, load_private_key(keys / "airgap.key", None))
        dest = work / "dest"
        unpack(bundle, dest, [keys / "airgap.pub"])
        return dest

    return make


@pytest.fixture(scope="module")
def dest(make_dest: MakeDest) -> Path:
    return make_dest()


def _score(url: str, payload: dict[str, object]) -> dict[str, object]:
    status, _, body = http("POST", url + "/score", json.dumps(payload).encode())
    assert status == 200, body
    result = json.loads(body)
    assert isinstance(result, dict)
    return result


def test_serves_the_bundle_with_only_its_own_packages(dest: Path, tmp_path: Path) -> None:
    leak = tmp_path / "leak"
    leak.mkdir()
    (leak / "leaky_module.py").write_text("VALUE = 'leaked from PYTHONPATH'\n")
    (tmp_path / "startup.py").write_text("raise SystemExit('PYTHONSTARTUP ran')\n")
    host_env = dict(
        os.environ,
        PYTHONPATH=str(leak),
        PYTHONSTARTUP=str(tmp_path / "startup.py"),
        PYTHONUSERBASE=str(leak),
        PYTHONNOUSERSITE="",
    )
    server = LocalServer(dest, port=free_port(), log=tmp_path / "serve.log", environ=host_env)
    with server:
        bundled = _score(server.url, {"action": "import", "module": SITE_MODULE})
        # Installed on the host (they run this very test), never in the bundle.
        host_only = [
            _score(server.url, {"action": "import", "module": m})
            for m in ("pytest", "requests", "click", "leaky_module")
        ]
        environment = _score(server.url, {"action": "environment"})
    assert bundled == {
        "importable": True,
        "value": "from the bundle",
        "file": str(dest / "site-packages" / SITE_MODULE / "__init__.py"),
    }
    for result in host_only:
        assert result["importable"] is False
    sys_path = environment["sys_path"]
    assert isinstance(sys_path, list)
    assert sys_path[0] == str(dest / "site-packages")
    host_site = [p for p in sys.path if p.endswith("site-packages")]
    assert not set(host_site) & set(sys_path)
    assert all(not p.startswith(str(leak)) for p in sys_path)
    assert environment["prefix"] == str(dest / ".airgap" / "venv")
    env = environment["env"]
    assert isinstance(env, dict)
    assert env["AZUREML_MODEL_DIR"] == str(dest / "model")
    assert "PYTHONSTARTUP" not in env and "PYTHONUSERBASE" not in env


def test_tree_is_unchanged_by_serving_and_venv_is_cached(dest: Path, tmp_path: Path) -> None:
    with LocalServer(dest, port=free_port(), log=tmp_path / "a.log") as server:
        _score(server.url, {"action": "size"})
    marker = dest / ".airgap" / "venv" / "airgap-venv.json"
    first = marker.stat().st_ino, marker.stat().st_mtime_ns
    with LocalServer(dest, port=free_port(), log=tmp_path / "b.log") as server:
        _score(server.url, {"action": "size"})
    assert (marker.stat().st_ino, marker.stat().st_mtime_ns) == first
    # No bytecode or other file was written into the verified tree.
    check_unpacked(dest)
    assert not list(dest.rglob("__pycache__"))


def _venv_site(dest: Path) -> Path:
    (site,) = (dest / ".airgap" / "venv" / "lib").glob("python*/site-packages")
    return site


def test_code_planted_in_the_cached_venv_never_runs(
    make_dest: MakeDest, keys: Path, tmp_path: Path
) -> None:
    # The payload is re-checked before every start, the cached venv is not part of it: a .pth
    # dropped into the venv's site-packages would run in every Python started from it.
    dest = make_dest()
    with LocalServer(dest, port=free_port(), log=tmp_path / "a.log") as server:
        _score(server.url, {"action": "size"})
    canary = tmp_path / "planted-code-ran"
    planted = _venv_site(dest) / "planted.pth"
    planted.write_text(f"import pathlib; pathlib.Path({str(canary)!r}).write_text('ran')\n")
    trust = [keys / "airgap.pub"]
    log = tmp_path / "b.log"
    with LocalServer(dest, port=free_port(), log=log, trust=trust) as server:
        assert _score(server.url, {"action": "size"}) == {"size": 18}
    assert not canary.exists(), log.read_text()
    assert not planted.exists()  # the venv was made again instead of trusted
    check_unpacked(dest, trust=trust)


def test_a_venv_others_could_write_is_made_again(make_dest: MakeDest, tmp_path: Path) -> None:
    # Even with its recorded digest made to match, a venv holding something another user
    # could have written (here a world-writable file) is not run.
    dest = make_dest()
    venv = dest / ".airgap" / "venv"
    ensure_venv(dest / ".airgap", find_python(PY))
    planted = _venv_site(dest) / "planted.pth"
    planted.write_text("import sys\n")
    planted.chmod(0o644)
    marker = venv / "airgap-venv.json"
    recorded = json.loads(marker.read_text())
    recorded["tree"] = local_module._venv_digest(venv)
    assert recorded["tree"] is not None
    marker.write_text(json.dumps(recorded))
    planted.chmod(0o666)
    ensure_venv(dest / ".airgap", find_python(PY))
    assert not planted.exists()
    # The venv made again is reused: virtualenv ran with umask 022, so whatever the user's
    # umask, nothing in it is writable by others.
    again = marker.stat().st_ino
    ensure_venv(dest / ".airgap", find_python(PY))
    assert marker.stat().st_ino == again


def test_a_venv_that_cannot_be_made_is_a_clear_error() -> None:
    # /proc takes no new folders, even from root.
    with pytest.raises(LocalRunnerError, match="cannot make the virtualenv under /proc/"):
        ensure_venv(Path("/proc/airgap-no-such-dest/.airgap"), find_python(PY))


def test_a_venv_replaced_by_a_link_is_made_again_without_touching_its_target(
    make_dest: MakeDest, tmp_path: Path
) -> None:
    dest = make_dest()
    venv = dest / ".airgap" / "venv"
    ensure_venv(dest / ".airgap", find_python(PY))
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(venv, elsewhere, symlinks=True)
    shutil.rmtree(venv)
    venv.symlink_to(elsewhere)
    before = sorted(p.relative_to(elsewhere) for p in elsewhere.rglob("*"))
    python = ensure_venv(dest / ".airgap", find_python(PY))
    assert python == venv / "bin" / "python"
    assert not venv.is_symlink() and venv.is_dir()
    assert sorted(p.relative_to(elsewhere) for p in elsewhere.rglob("*")) == before


def test_modified_tree_is_refused_before_starting(make_dest: MakeDest, tmp_path: Path) -> None:
    dest = make_dest()
    with (dest / "app" / "score.py").open("a") as f:
        f.write("\n# edited after unpack\n")
    server = LocalServer(dest, port=free_port(), log=tmp_path / "x.log")
    with pytest.raises(TreeModifiedError):
        server.start()
    assert server.pid is None


def test_added_file_in_site_packages_is_refused(make_dest: MakeDest, tmp_path: Path) -> None:
    dest = make_dest()
    (dest / "site-packages" / "evil.pth").write_text("import os\n")
    with pytest.raises(TreeModifiedError):
        LocalServer(dest, port=free_port(), log=tmp_path / "x.log").start()


def test_init_failure_is_reported_with_the_log(make_dest: MakeDest, tmp_path: Path) -> None:
    dest = make_dest("init_fails.py")
    server = LocalServer(dest, port=free_port(), log=tmp_path / "fail.log")
    server.start()
    try:
        with pytest.raises(LocalRunnerError) as info:
            server.wait_healthy(60)
    finally:
        server.stop()
    message = info.value.diagnostics()
    assert "exited with status 3" in message
    assert "FileNotFoundError: model file not found" in message


def test_bundle_env_reaches_run_and_host_env_overrides_it(
    make_dest: MakeDest, tmp_path: Path
) -> None:
    dest = make_dest(env={"MODEL_FLAVOUR": "bundle", "WORKER_COUNT": "1"})
    host = dict(os.environ, WORKER_COUNT="2")
    with LocalServer(dest, port=free_port(), log=tmp_path / "e.log", environ=host) as server:
        env = _score(server.url, {"action": "environment"})["env"]
    assert isinstance(env, dict)
    assert env["MODEL_FLAVOUR"] == "bundle"
    assert env["WORKER_COUNT"] == "2"


def test_dynamic_mode_installs_wheels_offline(make_dest: MakeDest, tmp_path: Path) -> None:
    dest = make_dest(mode="dynamic")
    # A host pip configuration pointing elsewhere must not be used.
    host = dict(os.environ, PIP_FIND_LINKS=str(tmp_path), PIP_INDEX_URL="http://127.0.0.1:9/")
    with LocalServer(dest, port=free_port(), log=tmp_path / "d.log", environ=host) as server:
        result = _score(server.url, {"action": "import", "module": "airgap_wheel_probe"})
    assert result["importable"] is True
    assert result["value"] == "installed at start"
    # Running pip from the venv left it exactly as made: the next start reuses it.
    marker = dest / ".airgap" / "venv" / "airgap-venv.json"
    first = marker.stat().st_ino
    with LocalServer(dest, port=free_port(), log=tmp_path / "e.log", environ=host) as server:
        _score(server.url, {"action": "import", "module": "airgap_wheel_probe"})
    assert marker.stat().st_ino == first
    assert not str(result["file"]).startswith(str(dest))


def test_find_python_names_the_missing_version() -> None:
    with pytest.raises(LocalRunnerError) as info:
        find_python("3.2")
    assert "needs Python 3.2" in info.value.diagnostics()
    assert "pyenv install 3.2" in info.value.diagnostics()


def test_find_python_finds_this_version() -> None:
    found = find_python(PY)
    assert found.version == PY
    assert found.implementation == "cpython"
    assert found.path.exists()


def test_find_python_finds_another_installed_version() -> None:
    others = [
        v
        for v in ("3.12", "3.10", "3.13", "3.9")
        if shutil.which(f"python{v}") or list((Path.home() / ".pyenv" / "versions").glob(f"{v}.*"))
    ]
    if not others:
        pytest.skip("no second Python version on this machine")
    found = find_python(others[0])
    assert found.version == others[0]


def test_ensure_venv_has_no_host_packages(tmp_path: Path) -> None:
    python = ensure_venv(tmp_path / ".airgap", find_python(PY))
    out = subprocess.run(
        [str(python), "-c", "import sys; print(sys.prefix, sys.path)"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ["PATH"]},
    ).stdout
    assert out.startswith(str(tmp_path / ".airgap" / "venv"))
    for entry in sys.path:
        if entry.endswith("site-packages"):
            assert entry not in out
    probe = subprocess.run(
        [str(python), "-c", "import click"], capture_output=True, env={"PATH": os.environ["PATH"]}
    )
    assert probe.returncode != 0


def test_scoring_environment_drops_python_and_pip_variables(dest: Path) -> None:
    manifest = check_unpacked(dest)
    env = scoring_environment(
        dest,
        manifest,
        {
            "PATH": "/usr/bin",
            "PYTHONPATH": "/host",
            "PYTHONHOME": "/x",
            "PIP_FIND_LINKS": "/w",
            "AZUREML_MODEL_DIR": "/elsewhere",
            "WORKER_COUNT": "3",
            "VIRTUAL_ENV": "/venv",
        },
    )
    assert env["PATH"] == "/usr/bin"
    assert env["PYTHONPATH"] == f"{dest / 'runtime'}{os.pathsep}{dest / 'runtime' / 'lib'}"
    assert "PYTHONHOME" not in env and "PIP_FIND_LINKS" not in env and "VIRTUAL_ENV" not in env
    assert env["PYTHONNOUSERSITE"] == "1" and env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["AZUREML_MODEL_DIR"] == str(dest / "model")
    assert env["AZUREML_ENTRY_SCRIPT"] == str(dest / "app" / "score.py")
    assert env["AZUREML_EXTRA_PYTHON_LIB_PATH"] == str(dest / "site-packages")
    assert "AZUREML_EXTRA_REQUIREMENTS_TXT" not in env
    assert env["WORKER_COUNT"] == "3"
    assert server_command(Path("/v/bin/python"), "127.0.0.1", 5001) == [
        "/v/bin/python",
        "-m",
        "airgap_runtime",
        "--host",
        "127.0.0.1",
        "--port",
        "5001",
    ]


def _wait_line(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "airgap serve printed nothing"
    return proc.stdout.readline()


@pytest.mark.parametrize(
    ("stop_signal", "sigint_ignored"),
    [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
)
def test_cli_serve_stops_cleanly(
    dest: Path, tmp_path: Path, stop_signal: int, sigint_ignored: bool
) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "bundler", "serve", str(dest), "--port", str(port), "--json"]
    if sigint_ignored:
        # As a shell starts a background job (`airgap serve DEST &`): SIGINT ignored.
        cmd = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *cmd]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        text=True,
        stderr=(tmp_path / "cli.err").open("w"),
    )
    try:
        ready = json.loads(_wait_line(proc))
        assert ready == {
            "ok": True,
            "url": f"http://127.0.0.1:{port}",
            "scoring_uri": f"http://127.0.0.1:{port}/score",
        }
        assert _score(ready["url"], {"action": "size"}) == {"size": 18}
        proc.send_signal(stop_signal)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            # SIGTERM first: a killed CLI would leave its server (own session) running.
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert code == 0
    with pytest.raises(OSError):
        http("GET", f"http://127.0.0.1:{port}/", timeout=5)
    assert "Shutting down" in (tmp_path / "cli.err").read_text()


def test_cli_serve_refuses_a_modified_tree_with_exit_3(make_dest: MakeDest) -> None:
    dest = make_dest()
    (dest / "model" / "linear.json").write_text("{}")
    proc = subprocess.run(
        [sys.executable, "-m", "bundler", "serve", str(dest)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3
    assert "model/linear.json" in proc.stderr


@pytest.mark.netns
def test_serve_works_with_no_network_at_all(dest: Path, tmp_path: Path) -> None:
    require_netns()
    # Make the cached venv inside the namespace too: remove it first.
    shutil.rmtree(dest / ".airgap" / "venv", ignore_errors=True)
    client = tmp_path / "client.py"
    client.write_text(
        textwrap.dedent(f"""
        import json, socket, subprocess, sys, urllib.request
        # Only loopback exists in here.
        names = [n for _, n in socket.if_nameindex()]
        assert names == ["lo"], names
        proc = subprocess.Popen([sys.executable, "-m", "bundler", "serve", {str(dest)!r},
                                 "--port", "5001", "--json"], stdout=subprocess.PIPE, text=True)
        try:
            ready = json.loads(proc.stdout.readline())
            req = urllib.request.Request(ready["scoring_uri"], data=b'{{"action": "size"}}')
            with urllib.request.urlopen(req, timeout=30) as resp:
                print(json.dumps({{"status": resp.status, "body": json.loads(resp.read())}}))
        finally:
            proc.terminate()
        sys.exit(proc.wait(60))
    """)
    )
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", f"ip link set lo up && {sys.executable} {client}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"status": 200, "body": {"size": 18}}


def test_a_venv_stage_left_by_a_killed_serve_is_removed_later(tmp_path: Path) -> None:
    from bundler.deploy.local import clean_stale_venv_stages

    state = tmp_path / ".airgap"
    old = state / "venv.stage-abandoned"
    fresh = state / "venv.stage-in-progress"
    for stage in (old, fresh):
        (stage / "venv" / "bin").mkdir(parents=True)
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    assert clean_stale_venv_stages(state) == [old]
    assert not old.exists()
    assert fresh.is_dir()  # another serve may still be building it


# ---- process lifetime: whatever stops `airgap serve` stops its server -------------------


def _server_pids(dest: Path) -> list[int]:
    """Processes whose command line names DEST (the venv's python: master and workers)."""
    pids = []
    needle = str(dest).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def _wait_no_server(dest: Path, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := _server_pids(dest)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.mark.parametrize("how", ["SIGTERM", "SIGHUP", "SIGKILL", "SIGINT twice"])
def test_no_server_process_outlives_serve(make_dest: MakeDest, tmp_path: Path, how: str) -> None:
    dest = make_dest()
    port = free_port()
    err = tmp_path / "cli.err"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bundler", "serve", str(dest), "--port", str(port), "--json"],
        stdout=subprocess.PIPE,
        text=True,
        stderr=err.open("w"),
    )
    try:
        url = json.loads(_wait_line(proc))["url"]
        assert len(_server_pids(dest)) >= 2  # master and worker, found by the DEST path
        if how == "SIGINT twice":
            # An in-flight request makes the graceful stop wait; the second Ctrl-C forces it.
            slow = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    f"import urllib.request as u; u.urlopen(u.Request("
                    f'\'{url}/score\', data=b\'{{"action": "sleep", "seconds": 30}}\'), '
                    "timeout=60)",
                ],
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
            proc.send_signal(signal.SIGINT)
            time.sleep(1.0)
            assert proc.poll() is None  # still waiting for the request
            proc.send_signal(signal.SIGINT)
            code = proc.wait(20)
            slow.kill()
            slow.wait()
            assert code == 130
        else:
            proc.send_signal(getattr(signal, how))
            code = proc.wait(60)
            assert code == (-signal.SIGKILL if how == "SIGKILL" else 0)
        assert _wait_no_server(dest, 40) == []
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(60)
        for pid in _server_pids(dest):
            os.kill(pid, signal.SIGKILL)
    text = err.read_text()
    assert "Traceback" not in text, text
    if how == "SIGINT twice":
        assert "interrupted" in text


def test_runtime_stops_when_the_parent_it_was_given_is_gone(tmp_path: Path) -> None:
    # No death signal here: only the master's own watch of AIRGAP_PARENT_PID stops it.
    port = free_port()
    launcher = tmp_path / "launcher.py"
    launcher.write_text(
        textwrap.dedent(f"""
        import os, subprocess, sys, time
        env = dict(os.environ, AIRGAP_PARENT_PID=str(os.getpid()),
                   AZUREML_ENTRY_SCRIPT={str(HERE / "probe.py")!r},
                   AZUREML_MODEL_DIR={str(MODEL_DIR)!r})
        proc = subprocess.Popen([sys.executable, "-m", "bundler.runtime", "--port", "{port}",
                                 "--host", "127.0.0.1"], env=env, start_new_session=True)
        print(proc.pid, flush=True)
        time.sleep(600)
        """)
    )
    proc = subprocess.Popen([sys.executable, str(launcher)], stdout=subprocess.PIPE, text=True)
    try:
        server = int(_wait_line(proc))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if http("GET", f"http://127.0.0.1:{port}/", timeout=2)[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and Path(f"/proc/{server}").exists():
            if (Path(f"/proc/{server}") / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
            time.sleep(0.1)
        with pytest.raises(OSError):
            http("GET", f"http://127.0.0.1:{port}/", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_local_server_serves_https_and_probes_health_over_it(dest: Path, tmp_path: Path) -> None:
    import ssl

    from _tlscert import make_cert

    cert, key = make_cert(tmp_path / "tls")
    server = LocalServer(
        dest, port=free_port(), log=tmp_path / "server.log", tls_cert=cert, tls_key=key
    )
    with server:  # wait_healthy() succeeded over https
        assert server.url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(cert))
        req = urllib.request.Request(server.url + "/score", data=b'{"action": "size"}')
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            assert json.loads(resp.read()) == {"size": 18}
        with pytest.raises(OSError):
            http("GET", server.url.replace("https:", "http:") + "/", timeout=5)
    with pytest.raises(LocalRunnerError, match="both"):
        LocalServer(dest, tls_cert=cert)
