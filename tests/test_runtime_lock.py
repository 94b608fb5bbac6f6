"""The runtime as bundles ship it: copied files + runtime/lib from requirements.lock, per Python."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from entry_scripts.harness import HERE, MODEL_DIR, Server

from bundler.deploy.local import ensure_venv
from bundler.errors import LocalRunnerError
from bundler.interpreters import find_python

RUNTIME_DIR = Path(__file__).resolve().parent.parent / "bundler" / "runtime"
LOCK = RUNTIME_DIR / "requirements.lock"


def test_lock_is_pinned_and_hashed_pure_python() -> None:
    names = []
    for block in LOCK.read_text().split("\n\n"):
        for line in block.splitlines():
            if line and not line.startswith((" ", "#")):
                requirement = line.rstrip(" \\")
                assert "==" in requirement, requirement
                names.append(requirement.split("==")[0])
    assert sorted(names) == ["gunicorn", "packaging"]
    assert LOCK.read_text().count("--hash=sha256:") >= 2 * len(names)


@pytest.fixture(scope="module")
def runtime_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lib = tmp_path_factory.mktemp("runtime") / "lib"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--require-hashes",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--target",
            str(lib),
            "-r",
            str(LOCK),
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        message = f"cannot download the locked wheels: {proc.stderr.strip()[-300:]}"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI runs the network tests: a skip would hide the failure
        pytest.skip(message)
    wheels = [p.name for p in lib.glob("*.dist-info")]
    assert len(wheels) == 2
    # Pure Python only: nothing compiled may ride along into every target.
    assert not [p for p in lib.rglob("*") if p.suffix in (".so", ".pyd")]
    return lib


@pytest.mark.network
@pytest.mark.parametrize("version", ["3.8", "{}.{}".format(*sys.version_info[:2]), "3.13"])
def test_shipped_runtime_serves_on_target_python(
    runtime_lib: Path, tmp_path: Path, version: str
) -> None:
    try:
        interpreter = find_python(version)
    except LocalRunnerError:
        pytest.skip(f"no Python {version} on this machine")
    python = ensure_venv(tmp_path / ".airgap", interpreter)
    runtime = tmp_path / "runtime"
    (runtime / "airgap_runtime").mkdir(parents=True)
    for path in RUNTIME_DIR.glob("*.py"):
        shutil.copy(path, runtime / "airgap_runtime" / path.name)
    shutil.copytree(runtime_lib, runtime / "lib")
    env = {
        "AZUREML_ENTRY_SCRIPT": str(HERE / "reads_headers.py"),
        "AZUREML_MODEL_DIR": str(MODEL_DIR),
        "PYTHONPATH": f"{runtime}:{runtime / 'lib'}",
        "SCORING_TIMEOUT_MS": "5000",
    }
    base = {"PATH": "/usr/bin:/bin"}
    server = Server(
        tmp_path, env, module="airgap_runtime", python=str(python), cwd=tmp_path, base_env=base
    )
    try:
        server.wait_healthy()
        status, headers, body = server.score(b'{"x": 1}', {"X-Custom-Header": "v"})
    finally:
        code = server.stop()
    assert status == 200, server.stderr
    assert json.loads(body)["custom"] == "v"
    assert headers["x-request-id"]
    assert code == 0
    assert f"Python {version}." in server.stderr
    assert "Starting gunicorn 23.0.0" in server.stderr
