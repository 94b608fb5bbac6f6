"""The scoring process hands its packages to child processes, and processes .pth files.

The runtime is laid out as in a bundle (runtime/airgap_runtime, runtime/sitecustomize.py) and
the packages live in a folder that is only on AZUREML_EXTRA_PYTHON_LIB_PATH: a child that
starts a fresh interpreter sees them only through what the runtime exported.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from entry_scripts.harness import HERE, Server

from bundler.pack import runtime_sources

LAUNCHER = """#!/bin/sh
'''exec' "${AIRGAP_PYTHON:-python3}" "$0" "$@"
' '''
import sys
import airgap_child_probe
print(airgap_child_probe.VALUE, *sys.argv[1:])
"""


def _layout(root: Path) -> tuple[Path, Path, Path]:
    runtime = root / "runtime"
    for f in runtime_sources():
        path = root / f.path
        path.parent.mkdir(parents=True, exist_ok=True)
        assert isinstance(f.source, bytes)
        path.write_bytes(f.source)
    site = root / "site-packages"
    (site / "airgap_child_probe").mkdir(parents=True)
    (site / "airgap_child_probe" / "__init__.py").write_text("VALUE = 'from-the-bundle'\n")
    (root / "extra").mkdir()
    (root / "extra" / "pth_extra.py").write_text("VALUE = 'pth-folder'\n")
    # Two lines as .pth files have them: a folder to add, and an import line that runs.
    (site / "airgap-test.pth").write_text(
        f"{root / 'extra'}\nimport os; os.environ['AIRGAP_PTH_RAN'] = 'yes'\n"
    )
    prefix = root / "prefix"
    (prefix / "bin").mkdir(parents=True)
    tool = prefix / "bin" / "airgap-probe-tool"
    tool.write_text(LAUNCHER)
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return runtime, site, prefix


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("children")
    runtime, site, prefix = _layout(root)
    # The host's gunicorn stays importable through the interpreter's own site-packages; the
    # probe package is nowhere but in ``site``.
    base = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    base["PYTHONPATH"] = str(runtime)
    srv = Server(
        root,
        {
            "AZUREML_ENTRY_SCRIPT": str(HERE / "children.py"),
            "AZUREML_EXTRA_PYTHON_LIB_PATH": str(site),
            "AIRGAP_PREFIX": str(prefix),
            "SCORING_TIMEOUT_MS": "0",
        },
        module="airgap_runtime",
        base_env=base,
        cwd=root,
    )
    try:
        srv.wait_healthy()
        yield srv
    finally:
        srv.stop()


def _check(server: Server, check: str) -> dict[str, object]:
    status, _, body = server.score(json.dumps({"check": check}).encode(), timeout=90)
    assert status == 200, body
    result = json.loads(body)
    assert isinstance(result, dict)
    return result


def test_a_subprocess_imports_a_bundled_package(server: Server) -> None:
    result = _check(server, "subprocess")
    assert (result["code"], result["out"]) == (0, "from-the-bundle"), result


def test_a_spawned_multiprocessing_worker_imports_a_bundled_package(server: Server) -> None:
    assert _check(server, "spawn") == {"code": 0, "out": "from-the-bundle"}


def test_pth_files_take_effect_in_the_server_process(server: Server) -> None:
    assert _check(server, "pth_here") == {"out": "pth-folder yes"}


def test_pth_files_take_effect_in_child_processes(server: Server) -> None:
    result = _check(server, "pth")
    assert (result["code"], result["out"]) == (0, "pth-folder yes"), result


def test_prefix_bin_launchers_are_on_path_and_use_the_serving_python(server: Server) -> None:
    result = _check(server, "launcher")
    assert (result["code"], result["out"]) == (0, "from-the-bundle a b"), result


def test_without_the_runtime_s_environment_a_child_does_not_see_the_package(
    tmp_path: Path,
) -> None:
    # The control: the same probe from a plain interpreter fails, so the checks above can fail.
    import subprocess
    import sys

    _, site, _ = _layout(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", "import airgap_child_probe"],
        capture_output=True,
        env={k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "AIRGAP_"))},
        check=False,
    )
    assert out.returncode != 0
    assert site.is_dir()
