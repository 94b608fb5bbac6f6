"""The runtime as bundles ship it: its files + runtime/lib from requirements.lock, per Python."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from entry_scripts.harness import HERE, MODEL_DIR, Server, free_port, http

from bundler.deploy.local import ensure_venv
from bundler.errors import BundleError, LocalRunnerError
from bundler.interpreters import find_python
from bundler.layout import RUNTIME_DIR
from bundler.pack import runtime_sources
from bundler.pack.lock import for_target, parse_lock
from bundler.pack.sitetree import build_site_tree
from bundler.pack.wheels import fetch_wheels
from bundler.target import Target

RUNTIME_SOURCE = Path(__file__).resolve().parent.parent / "bundler" / "runtime"
LOCK = RUNTIME_SOURCE / "requirements.lock"


def test_lock_is_pinned_and_hashed() -> None:
    names = []
    for block in LOCK.read_text().split("\n\n"):
        for line in block.splitlines():
            if line and not line.startswith((" ", "#")):
                requirement = line.rstrip(" \\")
                assert "==" in requirement, requirement
                names.append(requirement.split("==")[0])
    # MarkupSafe twice: its last Python 3.8 release and a current one, with exclusive markers.
    assert sorted(names) == [
        "gunicorn",
        "markupsafe",
        "markupsafe",
        "packaging",
        "prometheus-client",
        "werkzeug",
    ]
    assert LOCK.read_text().count("--hash=sha256:") >= 2 * len(names)
    for version in ("3.8", "3.9", "3.13"):
        target = Target.create(version, ["manylinux_2_17_x86_64"])
        picked = {r.name: r for r in for_target(parse_lock(LOCK), target)}
        assert sorted(picked) == [
            "gunicorn",
            "markupsafe",
            "packaging",
            "prometheus-client",
            "werkzeug",
        ]
        assert picked["markupsafe"].pin() == (
            "markupsafe==2.1.5" if version == "3.8" else "markupsafe==3.0.3"
        )


def _runtime_lib(cache: Path, dest: Path, version: str) -> Path:
    """runtime/lib for ``version`` as `airgap pack` builds it (wheels picked for the target)."""
    target = Target.create(version, Target.host().platforms)
    try:
        wheels = fetch_wheels(for_target(parse_lock(LOCK), target), target, cache_dir=cache)
    except BundleError as e:
        if os.environ.get("CI"):
            pytest.fail(str(e))  # CI runs the network tests: a skip would hide the failure
        pytest.skip(f"cannot download the locked wheels: {e}")
    build_site_tree(wheels, target, dest)
    names = sorted(p.name.split("-")[0].lower() for p in dest.glob("*.dist-info"))
    assert names == ["gunicorn", "markupsafe", "packaging", "prometheus_client", "werkzeug"]
    # Only MarkupSafe's optional speedups are compiled; everything else is pure Python.
    compiled = [p for p in dest.rglob("*") if p.suffix in (".so", ".pyd")]
    assert all(p.relative_to(dest).parts[0] == "markupsafe" for p in compiled), compiled
    return dest


def _copy_runtime(runtime_parent: Path) -> Path:
    """The runtime's files exactly where a bundle puts them (runtime/airgap_runtime, runtime/)."""
    for source in runtime_sources():
        path = runtime_parent / source.path
        path.parent.mkdir(parents=True, exist_ok=True)
        with source.open() as f:
            path.write_bytes(f.read())
    return runtime_parent / RUNTIME_DIR


@pytest.mark.network
@pytest.mark.parametrize("version", ["3.8", "{}.{}".format(*sys.version_info[:2]), "3.13"])
def test_shipped_runtime_serves_on_target_python(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, version: str
) -> None:
    try:
        interpreter = find_python(version)
    except LocalRunnerError:
        pytest.skip(f"no Python {version} on this machine")
    python = ensure_venv(tmp_path / ".airgap", interpreter)
    runtime = _copy_runtime(tmp_path)
    _runtime_lib(tmp_path_factory.getbasetemp() / "wheel-cache", runtime / "lib", version)
    base = {"PATH": "/usr/bin:/bin"}
    answers = {}
    metrics_port = free_port()
    for script in ("reads_headers.py", "raw_image.py"):
        env = {
            "AZUREML_ENTRY_SCRIPT": str(HERE / script),
            "AZUREML_MODEL_DIR": str(MODEL_DIR),
            "PYTHONPATH": f"{runtime}:{runtime / 'lib'}",
            "SCORING_TIMEOUT_MS": "5000",
            # prometheus_client from runtime/lib, in multiprocess mode, on this target's Python.
            "AIRGAP_METRICS_PORT": str(metrics_port) if script == "raw_image.py" else "",
        }
        server = Server(
            tmp_path, env, module="airgap_runtime", python=str(python), cwd=tmp_path, base_env=base
        )
        try:
            server.wait_healthy()
            if script == "raw_image.py":
                answers[script] = http(
                    "POST",
                    server.url + "/score?mode=echo",
                    b"\x00\xffraw",
                    {"Content-Type": "application/octet-stream"},
                )
                metrics = http("GET", f"http://127.0.0.1:{metrics_port}/metrics")[2].decode()
                assert 'airgap_requests_total{method="POST",route="/score",status="200"} 1.0' in (
                    metrics
                ), metrics
            else:
                answers[script] = server.score(b'{"x": 1}', {"X-Custom-Header": "v"})
        finally:
            code = server.stop()
        assert code == 0, server.stderr
        assert f"Python {version}." in server.stderr
        assert "Starting gunicorn 23.0.0" in server.stderr
    status, headers, body = answers["reads_headers.py"]
    assert status == 200
    assert json.loads(body)["custom"] == "v"
    assert headers["x-request-id"]
    # @rawhttp with the shim and werkzeug from runtime/lib, on this target's Python.
    status, headers, body = answers["raw_image.py"]
    assert (status, body) == (200, b"\x00\xffraw")
    assert headers["content-type"] == "application/octet-stream"
