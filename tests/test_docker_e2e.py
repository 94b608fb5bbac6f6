"""End to end through the CLI with the iris example: pack (real wheels from PyPI) with the base
image carried, then on an "isolated" side: an engine without that base image, unpack and build
under `unshare -n`, run in each mode, score, stop; and the tamper and no-network checks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_docker import BASE_REF, cli_json, derived_image, ensure_engine, post_score

from bundler.cli import main
from bundler.deploy.docker import LABEL_DEST
from bundler.deploy.engine import DockerEngine

pytestmark = [pytest.mark.docker, pytest.mark.network, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "iris-sklearn"
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
IRIS_EXPECTED = ["setosa", "virginica"]


def isolated(*args: str) -> subprocess.CompletedProcess[str]:
    """`airgap ARGS` in a new network namespace with only loopback: no route anywhere.

    The engine's unix socket is a file, so build still reaches dockerd; nothing else can.
    """
    cmd = " ".join(["ip link set lo up &&", sys.executable, "-m", "bundler", *args])
    return subprocess.run(
        ["unshare", "-n", "sh", "-c", cmd], capture_output=True, text=True, timeout=900
    )


@dataclass(frozen=True)
class Iris:
    bundle: Path
    pub: Path
    base_ref: str
    base_id: str
    dest: Path


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Iris]:
    engine = ensure_engine()
    base_id = engine.image_id(BASE_REF)
    assert base_id is not None
    root = tmp_path_factory.mktemp("iris")
    # The example as is, except its base image: one of our own, removed after packing.
    project = root / "project"
    shutil.copytree(EXAMPLE, project)
    ref = f"airgap-test/iris-base:{uuid.uuid4().hex[:12]}"
    carried_id = derived_image(engine, base_id, ref)
    toml = project / "bundle.toml"
    text, n = re.subn(r'(?m)^base_image = ".*"$', f'base_image = "{ref}"', toml.read_text())
    assert n == 1
    toml.write_text(text)

    keys = root / "keys"
    assert main(["keygen", "--out", str(keys), "--no-passphrase"]) == 0
    bundle = root / "iris.airgap"
    args = ["pack", str(project), "-o", str(bundle), "--key", str(keys / "airgap.key")]
    assert main([*args, "--include-base-image", "--include-wheels", "--quiet"]) == 0

    # The isolated side's engine has never seen this base image.
    engine.remove_image(ref)
    assert engine.image_id(carried_id) is None
    dest = root / "dest"
    proc = isolated("unpack", str(bundle), str(dest), "--trust", str(keys / "airgap.pub"))
    assert proc.returncode == 0, proc.stderr
    yield Iris(bundle, keys / "airgap.pub", ref, carried_id, dest)

    for c in engine.containers_with_labels({LABEL_DEST: str(dest)}):
        engine.stop(c.id, timeout=1)
    for tag in ("iris-sklearn:1.0.0-baked", "iris-sklearn:1.0.0", carried_id):
        engine.remove_image(tag)
    engine.close()


@pytest.fixture(scope="module")
def built(iris: Iris) -> Iris:
    proc = isolated("build", str(iris.dest), "--variant", "all", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["base_image"] == {"ref": iris.base_ref, "digest": iris.base_id, "loaded": True}
    assert [i["variant"] for i in out["images"]] == ["normal", "baked"]
    return iris


@pytest.fixture
def engine() -> Iterator[DockerEngine]:
    eng = DockerEngine.connect()
    yield eng
    eng.close()


@pytest.mark.parametrize("mode", ["mounted", "dynamic", "baked"])
def test_iris_runs_and_scores_in_each_mode(
    mode: str, built: Iris, engine: DockerEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code, out = cli_json(
            ["run", str(built.dest), "--mode", mode, "--detach", "--port", "0"], capsys
        )
        assert code == 0, capsys.readouterr().err
        assert out["scoring_uri"] == f"http://127.0.0.1:{out['port']}/score"
        assert post_score(str(out["scoring_uri"]), IRIS_ROWS) == {"predictions": IRIS_EXPECTED}
    finally:
        assert main(["stop", str(built.dest)]) == 0
    assert engine.containers_with_labels({LABEL_DEST: str(built.dest)}) == []


def test_iris_mounted_without_network_scores_from_inside(
    built: Iris, engine: DockerEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code, out = cli_json(["run", str(built.dest), "--no-network", "--detach"], capsys)
        assert code == 0, capsys.readouterr().err
        assert out["mode"] == "mounted"
        cid = str(out["id"])
        assert engine._api.inspect_container(cid)["HostConfig"]["NetworkMode"] == "none"
        probe = (
            "import json, urllib.request as u; "
            "r = u.urlopen(u.Request('http://127.0.0.1:5001/score', "
            f"data=json.dumps({{'data': {IRIS_ROWS}}}).encode())); print(r.read().decode())"
        )
        code, text = engine.exec_probe(cid, ["python3", "-c", probe])
        assert code == 0, text
        assert json.loads(text) == {"predictions": IRIS_EXPECTED}
    finally:
        assert main(["stop", str(built.dest)]) == 0


def test_iris_site_packages_edited_after_unpack_is_refused(
    built: Iris, engine: DockerEngine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "dest"
    proc = isolated("unpack", str(built.bundle), str(dest), "--trust", str(built.pub))
    assert proc.returncode == 0, proc.stderr
    target = dest / "site-packages" / "sklearn" / "__init__.py"
    os.chmod(target, 0o644)
    with target.open("a") as f:
        f.write("\nimport os  # a change made after unpack\n")
    assert main(["run", str(dest), "--detach", "--port", "0"]) == 3
    err = capsys.readouterr().err
    assert "site-packages/sklearn/__init__.py" in err
    assert "changed since unpack" in err
    assert engine.containers_with_labels({LABEL_DEST: str(dest)}) == []
