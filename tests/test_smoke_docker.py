"""`airgap run --smoke` against the real engine: a pass keeps the container, a failure stops and
removes it with exit 4. The image is found by payload revision, so one build serves both
bundles (same payload, different signed smoke tests)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import KeyPair
from test_docker import BASE_REF, ROWS, TARGET, ensure_engine, tiny_files

from bundler.cli import main
from bundler.deploy.docker import LABEL_DEST
from bundler.deploy.engine import DockerEngine
from bundler.errors import EXIT_SMOKE
from bundler.formats.manifest import BaseImage
from bundler.formats.smoke import SmokeSpec
from bundler.pack.assemble import BundleMeta, SourceFile, write_bundle
from bundler.verify.unpack import unpack

pytestmark = pytest.mark.docker

BODY = json.dumps({"data": ROWS})
JSON = (("Content-Type", "application/json"),)
PASSING = SmokeSpec(body=BODY, headers=JSON, json_keys=("predictions", "lib"), contains=("321",))
FAILING = SmokeSpec(body=BODY, headers=JSON, json_keys=("probabilities",))


@pytest.fixture(scope="module")
def engine() -> Iterator[DockerEngine]:
    eng = ensure_engine()
    yield eng
    eng.close()


def _dest(root: Path, key: KeyPair, base_id: str, smoke: SmokeSpec) -> Path:
    files = tiny_files(base_id)
    # A payload of its own, so the image revision is not the other Docker tests' one.
    files["app/smoke-test.txt"] = (b"run --smoke\n", 0o644)
    sources = [SourceFile(p, data, mode) for p, (data, mode) in files.items()]
    meta = BundleMeta(
        name="tiny-smoke",
        version="1.0",
        created=1_700_000_000,
        target=TARGET,
        entry_script="app/score.py",
        mode="mounted",
        base_image=BaseImage(BASE_REF, base_id, included=False),
        smoke=smoke,
    )
    bundle = root / "b.airgap"
    write_bundle(bundle, sources, meta, key.private, threads=1)
    unpack(bundle, root / "dest", [key.pub])
    return root / "dest"


def test_run_smoke_passes_then_a_failure_stops_and_removes_the_container(
    tmp_path: Path,
    engine: DockerEngine,
    publisher: KeyPair,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base_id = engine.image_id(BASE_REF)
    assert base_id is not None
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    good = _dest(tmp_path / "a", publisher, base_id, PASSING)
    bad = _dest(tmp_path / "b", publisher, base_id, FAILING)
    assert main(["build", str(good), "--quiet"]) == 0
    try:
        capsys.readouterr()
        code = main(["run", str(good), "--detach", "--port", "0", "--smoke", "--json"])
        out = json.loads(capsys.readouterr().out)
        assert code == 0, out
        assert out["smoke"]["ok"] is True and out["smoke"]["status"] == 200
        assert out["smoke"]["url"] == out["scoring_uri"]
        assert len(engine.containers_with_labels({LABEL_DEST: str(good.resolve())})) == 1
        assert main(["stop", str(good)]) == 0

        capsys.readouterr()
        code = main(["run", str(bad), "--detach", "--port", "0", "--smoke"])
        err = capsys.readouterr().err
        assert code == EXIT_SMOKE
        assert "smoke test failed: POST http://127.0.0.1:" in err
        assert "JSON key(s) probabilities missing" in err
        assert engine.containers_with_labels({LABEL_DEST: str(bad.resolve())}) == []

        assert main(["run", str(bad), "--no-network", "--smoke"]) == 2
    finally:
        main(["stop", str(good)])
        main(["stop", str(bad)])
        engine.remove_image("tiny-smoke:1.0")
