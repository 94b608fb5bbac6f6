"""The Docker path against the real engine: build context, base image, build, run, stop.

A tiny real bundle is made here (pure-Python app, model and package, the real runtime and a
real gunicorn), unpacked with the real unpacker, then built and run through the CLI. The
iris end-to-end test (real wheels from PyPI) is in test_docker_e2e.py.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import io
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import KeyPair

from bundler.cli import main
from bundler.deploy.docker import LABEL_DEST, build_context, container_name
from bundler.deploy.dockerfile import DockerfileSpec, render_dockerfiles
from bundler.deploy.engine import DockerEngine
from bundler.errors import EngineUnavailableError, TreeModifiedError
from bundler.formats.manifest import BaseImage, Target
from bundler.layout import BASE_IMAGE_TAR
from bundler.pack.assemble import BundleMeta, SourceFile, write_bundle
from bundler.verify.tree import check_unpacked
from bundler.verify.unpack import unpack

REPO = Path(__file__).resolve().parent.parent
BASE_REF = "airgap-test/bookworm-python:latest"
TARGET = Target("3.11", "cp", "cp311", ("manylinux_2_17_x86_64", "any"))


# ---- the engine and base image ------------------------------------------------------------


def _script(name: str) -> None:
    proc = subprocess.run(
        ["sh", str(REPO / ".ci" / name)], capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0:
        raise RuntimeError(f".ci/{name} failed: {proc.stderr.strip()[-2000:]}")


def ensure_engine() -> DockerEngine:
    """A running engine with the test base image, made by the project's own .ci scripts.

    Skips with the reason outside CI when they cannot run here; in CI (CI=true) it fails.
    """
    try:
        _script("docker-engine.sh")
        _script("base-image.sh")
        return DockerEngine.connect()
    except (RuntimeError, OSError, subprocess.TimeoutExpired, EngineUnavailableError) as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the Docker engine or base image is required in CI: {e}")
        pytest.skip(f"no Docker engine with the test base image here: {e}")


@pytest.fixture(scope="session")
def engine() -> Iterator[DockerEngine]:
    eng = ensure_engine()
    yield eng
    eng.close()


def derived_image(engine: DockerEngine, base_id: str, ref: str) -> str:
    """A new image ID on top of the shared base (one label, no RUN step), tagged ``ref``.

    Tests remove it to play "an engine without the pinned base image" without touching the
    shared base: its layers stay (the shared base owns them too), its image ID is gone.
    """
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        text = f"FROM {base_id}\nLABEL test.unique={ref}\n".encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    context.seek(0)
    return engine.build(context, dockerfile="Dockerfile", tag=ref, buildargs={})


@pytest.fixture(scope="session")
def base_id(engine: DockerEngine) -> str:
    image_id = engine.image_id(BASE_REF)
    assert image_id is not None
    return image_id


# ---- a tiny real bundle ---------------------------------------------------------------------

SCORE_PY = b"""\
import json
import os
from pathlib import Path

import tinylib

weights = None


def init():
    global weights
    weights = json.loads((Path(os.environ["AZUREML_MODEL_DIR"]) / "weights.json").read_text())


def run(raw_data):
    rows = json.loads(raw_data)["data"]
    return {"predictions": [tinylib.score(r, weights) for r in rows], "lib": tinylib.__file__}
"""
TINYLIB = b"def score(row, weights):\n    return sum(a * b for a, b in zip(row, weights))\n"
WEIGHTS = [1, 10, 100]
ROWS = [[1, 2, 3], [0, 0, 1]]
EXPECTED = [321, 100]


def _wheel(name: str, version: str, files: dict[str, bytes]) -> tuple[str, bytes]:
    """A real, minimal pure-Python wheel (what pip installs in dynamic mode)."""
    info = f"{name}-{version}.dist-info"
    meta = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    contents = {**files, **meta}
    record = []
    for path, data in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    contents[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for path, data in sorted(contents.items()):
            z.writestr(zipfile.ZipInfo(path, (2023, 1, 1, 0, 0, 0)), data)
    return f"{name}-{version}-py3-none-any.whl", buf.getvalue()


def _installed(dist: str, prefix: str) -> dict[str, tuple[bytes, int]]:
    """An installed distribution's files (the real gunicorn of this environment)."""
    out: dict[str, tuple[bytes, int]] = {}
    for f in importlib.metadata.files(dist) or ():
        rel = str(f)
        if rel.startswith("..") or "__pycache__" in rel:
            continue
        out[f"{prefix}/{rel}"] = (Path(str(f.locate())).read_bytes(), 0o644)
    return out


Files = dict[str, tuple[bytes, int]]


def tiny_files(base_digest: str | None, *, base_ref: str = BASE_REF) -> Files:
    """Every payload file of the tiny bundle, as pack lays them out."""
    files: Files = {
        "app/score.py": (SCORE_PY, 0o644),
        "model/weights.json": (json.dumps(WEIGHTS).encode(), 0o644),
        "site-packages/tinylib/__init__.py": (TINYLIB, 0o644),
        "site-packages/tinylib-1.0.dist-info/METADATA": (
            b"Metadata-Version: 2.1\nName: tinylib\nVersion: 1.0\n",
            0o644,
        ),
    }
    wheel_name, wheel = _wheel("tinylib", "1.0", {"tinylib/__init__.py": TINYLIB})
    files[f"wheels/{wheel_name}"] = (wheel, 0o644)
    files["wheels/requirements.txt"] = (b"tinylib==1.0\n", 0o644)
    for py in sorted((REPO / "bundler" / "runtime").glob("*.py")):
        files[f"runtime/airgap_runtime/{py.name}"] = (py.read_bytes(), 0o644)
    for dist in ("gunicorn", "packaging", "prometheus_client"):
        files.update(_installed(dist, "runtime/lib"))
    spec = DockerfileSpec(
        name="tiny-model",
        version="1.0+test",
        created=1_700_000_000,
        entry_script="app/score.py",
        base_ref=base_ref,
        base_digest=base_digest,
        env={"TINY_GREETING": 'hello "$HOME"'},
    )
    for path, data in render_dockerfiles(spec).items():
        files[path] = (data, 0o644)
    return files


def write_tiny_bundle(
    out: Path,
    key: KeyPair,
    base_digest: str | None,
    *,
    base_ref: str = BASE_REF,
    extra: dict[str, Path] | None = None,
    mode: str = "mounted",
    files: Files | None = None,
    name: str = "tiny-model",
    version: str = "1.0+test",
    created: int = 1_700_000_000,
) -> Path:
    if files is None:
        files = tiny_files(base_digest, base_ref=base_ref)
    sources = [SourceFile(path, data, mode_bits) for path, (data, mode_bits) in files.items()]
    sources += [SourceFile(p, src, 0o644) for p, src in (extra or {}).items()]
    meta = BundleMeta(
        name=name,
        version=version,
        created=created,
        target=TARGET,
        entry_script="app/score.py",
        mode=mode,  # type: ignore[arg-type]
        env={"TINY_GREETING": 'hello "$HOME"'},
        base_image=BaseImage(base_ref, base_digest, included=bool(extra)),
    )
    write_bundle(out, sources, meta, key.private, threads=1)
    return out


@dataclass(frozen=True)
class Tiny:
    bundle: Path
    pub: Path

    def unpack_to(self, dest: Path) -> Path:
        unpack(self.bundle, dest, [self.pub])
        return dest


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory, publisher: KeyPair, base_id: str) -> Tiny:
    root = tmp_path_factory.mktemp("tiny")
    return Tiny(write_tiny_bundle(root / "tiny.airgap", publisher, base_id), publisher.pub)


@pytest.fixture(scope="session")
def built(
    tmp_path_factory: pytest.TempPathFactory, tiny: Tiny, engine: DockerEngine
) -> Iterator[Path]:
    """A DEST whose normal and baked images are built (through the CLI)."""
    dest = tiny.unpack_to(tmp_path_factory.mktemp("built") / "dest")
    assert main(["build", str(dest), "--variant", "all", "--quiet"]) == 0
    yield dest
    for tag in ("tiny-model:1.0-test-baked", "tiny-model:1.0-test"):
        engine.remove_image(tag)


def cli_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main([*args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def post_score(uri: str, rows: Sequence[Sequence[float]]) -> dict[str, Any]:
    body = json.dumps({"data": rows}).encode()
    req = urllib.request.Request(uri, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
        data: dict[str, Any] = json.loads(r.read())
        return data


@pytest.fixture
def stop_after(engine: DockerEngine) -> Iterator[list[Path]]:
    """DESTs whose containers are stopped after the test, whatever happens."""
    dests: list[Path] = []
    yield dests
    for d in dests:
        for c in engine.containers_with_labels({LABEL_DEST: str(d.resolve())}):
            engine.stop(c.id, timeout=1)


# ---- build context (no engine) ----------------------------------------------------------------


def _context_names(dest: Path, variant: str) -> tuple[str, dict[str, tarfile.TarInfo]]:
    manifest = check_unpacked(dest, roots=())
    buf = io.BytesIO()
    dockerfile, _ = build_context(dest, manifest, variant, buf)  # type: ignore[arg-type]
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        return dockerfile, {m.name: m for m in tar.getmembers()}


def test_build_context_holds_only_what_the_dockerfile_copies(
    tmp_path: Path, publisher: KeyPair
) -> None:
    bundle = write_tiny_bundle(tmp_path / "b.airgap", publisher, "sha256:" + "ab" * 32)
    dest = Tiny(bundle, publisher.pub).unpack_to(tmp_path / "dest")
    (dest / "stray.txt").write_text("not listed")  # never sent: only listed files are

    dockerfile, members = _context_names(dest, "normal")
    assert dockerfile == "docker/Dockerfile"
    tops = {name.split("/", 1)[0] for name in members}
    assert tops == {"docker", "runtime", "model", "app"}
    assert "docker/Dockerfile.baked" not in members
    assert "app/score.py" in members and "runtime/lib/gunicorn/__init__.py" in members
    info = members["app/score.py"]
    assert (info.uid, info.gid, info.mode, info.mtime) == (0, 0, 0o644, 1_700_000_000)

    dockerfile, members = _context_names(dest, "baked")
    assert dockerfile == "docker/Dockerfile.baked"
    # prefix/ is there as a folder entry even when empty: the baked Dockerfile may COPY it.
    assert {n.split("/", 1)[0] for n in members} == {
        "docker",
        "runtime",
        "model",
        "app",
        "site-packages",
        "prefix",
    }
    assert not any(n.startswith(("wheels", ".airgap")) for n in members)


def test_build_context_refuses_a_file_changed_after_unpack(
    tmp_path: Path, publisher: KeyPair
) -> None:
    bundle = write_tiny_bundle(tmp_path / "b.airgap", publisher, "sha256:" + "ab" * 32)
    dest = Tiny(bundle, publisher.pub).unpack_to(tmp_path / "dest")
    (dest / "app" / "score.py").write_bytes(SCORE_PY + b"# edited\n")
    with pytest.raises(TreeModifiedError) as e:
        _context_names(dest, "normal")
    assert e.value.member == "app/score.py"
    assert e.value.exit_code == 3


def test_no_engine_is_a_clear_error_naming_the_local_runner(
    tmp_path: Path,
    publisher: KeyPair,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bundle = write_tiny_bundle(tmp_path / "b.airgap", publisher, "sha256:" + "ab" * 32)
    dest = Tiny(bundle, publisher.pub).unpack_to(tmp_path / "dest")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    for args in (["build", str(dest)], ["run", str(dest)], ["stop", str(dest)]):
        assert main(args) == 1
        err = capsys.readouterr().err
        assert "no Docker engine answers" in err
        assert "airgap serve DEST" in err


# ---- against the engine ---------------------------------------------------------------------


@pytest.mark.docker
def test_build_refuses_a_bundle_whose_base_was_not_pinned(
    tmp_path: Path, publisher: KeyPair, engine: DockerEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = write_tiny_bundle(tmp_path / "b.airgap", publisher, None)
    dest = Tiny(bundle, publisher.pub).unpack_to(tmp_path / "dest")
    assert main(["build", str(dest)]) == 1
    err = capsys.readouterr().err
    assert "does not pin its base image" in err
    assert f"docker image inspect {BASE_REF}" in err


@pytest.mark.docker
def test_build_names_the_exact_base_image_to_transfer(
    tmp_path: Path, publisher: KeyPair, engine: DockerEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = "sha256:" + hashlib.sha256(uuid.uuid4().bytes).hexdigest()
    bundle = write_tiny_bundle(tmp_path / "b.airgap", publisher, missing, base_ref="corp/py:3.11")
    dest = Tiny(bundle, publisher.pub).unpack_to(tmp_path / "dest")
    assert main(["build", str(dest)]) == 1
    err = capsys.readouterr().err
    assert f"lacks the base image corp/py:3.11 ({missing})" in err
    assert "docker save corp/py:3.11 -o base.tar" in err
    assert "--include-base-image" in err


@pytest.mark.docker
def test_build_loads_the_carried_base_image_when_the_engine_lacks_it(
    tmp_path: Path,
    publisher: KeyPair,
    engine: DockerEngine,
    base_id: str,
    capsys: pytest.CaptureFixture[str],
    stop_after: list[Path],
) -> None:
    # A base image of our own, so removing it cannot disturb other tests.
    ref = f"airgap-test/carried-base:{uuid.uuid4().hex[:12]}"
    carried_id = derived_image(engine, base_id, ref)
    saved = tmp_path / "base-image.tar"
    with saved.open("wb") as f:
        engine.save_image(ref, f)
    bundle = write_tiny_bundle(
        tmp_path / "b.airgap",
        publisher,
        carried_id,
        base_ref=ref,
        extra={BASE_IMAGE_TAR: saved},
    )
    engine.remove_image(ref)
    assert engine.image_id(carried_id) is None
    dest = Tiny(bundle, publisher.pub).unpack_to(tmp_path / "dest")

    tag = f"tiny-carried:{uuid.uuid4().hex[:8]}"
    code, out = cli_json(["build", str(dest), "--tag", tag], capsys)
    assert code == 0, out
    assert out["base_image"] == {"ref": ref, "digest": carried_id, "loaded": True}
    assert engine.image_id(carried_id) == carried_id
    stop_after.append(dest)
    code, out = cli_json(["run", str(dest), "--detach", "--port", "0"], capsys)
    assert code == 0, out
    assert post_score(str(out["scoring_uri"]), ROWS)["predictions"] == EXPECTED
    assert main(["stop", str(dest)]) == 0
    engine.remove_image(tag)
    engine.remove_image(ref)


@pytest.mark.docker
def test_build_refuses_a_changed_base_image_tar(
    tmp_path: Path, publisher: KeyPair, engine: DockerEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = "sha256:" + hashlib.sha256(uuid.uuid4().bytes).hexdigest()
    fake = tmp_path / "base-image.tar"
    fake.write_bytes(b"\x00" * 4096)
    bundle = write_tiny_bundle(
        tmp_path / "b.airgap", publisher, missing, extra={BASE_IMAGE_TAR: fake}
    )
    dest = Tiny(bundle, publisher.pub).unpack_to(tmp_path / "dest")
    (dest / BASE_IMAGE_TAR).write_bytes(b"\x01" * 4096)
    assert main(["build", str(dest)]) == 3
    err = capsys.readouterr().err
    assert "docker/base-image.tar" in err and "changed since unpack" in err


@pytest.mark.docker
@pytest.mark.parametrize("mode", ["mounted", "dynamic", "baked"])
def test_run_each_mode_scores_and_stop_removes_it(
    mode: str,
    built: Path,
    engine: DockerEngine,
    capsys: pytest.CaptureFixture[str],
    stop_after: list[Path],
) -> None:
    stop_after.append(built)
    code, out = cli_json(["run", str(built), "--mode", mode, "--detach", "--port", "0"], capsys)
    assert code == 0, out
    assert out["mode"] == mode
    result = post_score(str(out["scoring_uri"]), ROWS)
    assert result["predictions"] == EXPECTED
    lib = str(result["lib"])
    if mode == "dynamic":
        # Installed at start from the mounted wheels into the container's private /tmp.
        assert lib.startswith("/tmp/airgap-requirements-"), lib
    else:
        assert lib == "/opt/airgap/site-packages/tinylib/__init__.py"

    container = engine.inspect(str(out["id"]))
    assert container is not None and container.status == "running"
    code, out = cli_json(["stop", str(built)], capsys)
    assert code == 0
    assert [s["name"] for s in out["stopped"]] == [container.name]
    assert engine.inspect(container.id) is None
    code, out = cli_json(["stop", str(built)], capsys)
    assert code == 0 and out["stopped"] == []


@pytest.mark.docker
def test_image_runs_as_non_root_with_the_bundle_labels(built: Path, engine: DockerEngine) -> None:
    manifest = check_unpacked(built, roots=())
    image = engine._api.inspect_image("tiny-model:1.0-test")
    config = image["Config"]
    assert config["User"] == "10001:10001"
    assert "5001/tcp" in config["ExposedPorts"]
    assert config["Healthcheck"]["Test"][0] == "CMD"
    labels = config["Labels"]
    assert labels["org.opencontainers.image.revision"] == manifest.payload.sha256
    assert labels["org.opencontainers.image.title"] == "tiny-model"
    assert labels["org.opencontainers.image.version"] == "1.0+test"
    assert labels["org.opencontainers.image.created"] == "2023-11-14T22:13:20Z"
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["TINY_GREETING"] == 'hello "$HOME"'  # written literally, never expanded
    assert env["AZUREML_EXTRA_PYTHON_LIB_PATH"] == "/opt/airgap/site-packages"
    baked = engine._api.inspect_image("tiny-model:1.0-test-baked")
    # The baked image is the normal one plus one layer: the packages.
    assert len(baked["RootFS"]["Layers"]) == len(image["RootFS"]["Layers"]) + 1


@pytest.mark.docker
def test_a_code_change_rebuilds_only_the_app_layer(
    tmp_path: Path, publisher: KeyPair, base_id: str, built: Path, engine: DockerEngine
) -> None:
    files = tiny_files(base_id)
    files["app/score.py"] = (SCORE_PY + b"\n# changed\n", 0o644)
    bundle = write_tiny_bundle(tmp_path / "c.airgap", publisher, base_id, files=files)
    dest = Tiny(bundle, publisher.pub).unpack_to(tmp_path / "dest")
    tag = f"tiny-changed:{uuid.uuid4().hex[:8]}"
    assert main(["build", str(dest), "--tag", tag, "--quiet"]) == 0
    old = engine._api.inspect_image("tiny-model:1.0-test")["RootFS"]["Layers"]
    new = engine._api.inspect_image(tag)["RootFS"]["Layers"]
    assert new[:-1] == old[:-1]  # base, runtime and model layers reused from the cache
    assert new[-1] != old[-1]
    engine.remove_image(tag)


@pytest.mark.docker
def test_run_refuses_a_site_packages_file_edited_after_unpack(
    tmp_path: Path,
    tiny: Tiny,
    built: Path,
    engine: DockerEngine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dest = tiny.unpack_to(tmp_path / "dest")
    (dest / "site-packages" / "tinylib" / "__init__.py").write_bytes(TINYLIB + b"import os\n")
    assert main(["run", str(dest), "--detach", "--port", "0"]) == 3
    err = capsys.readouterr().err
    assert "site-packages/tinylib/__init__.py" in err
    assert "changed since unpack" in err
    assert engine.containers_with_labels({LABEL_DEST: str(dest.resolve())}) == []


@pytest.mark.docker
def test_run_without_network_scores_from_inside_the_container(
    built: Path,
    engine: DockerEngine,
    capsys: pytest.CaptureFixture[str],
    stop_after: list[Path],
) -> None:
    stop_after.append(built)
    code, out = cli_json(["run", str(built), "--no-network", "--detach"], capsys)
    assert code == 0, out
    assert out["scoring_uri"] is None
    cid = str(out["id"])
    assert engine._api.inspect_container(cid)["HostConfig"]["NetworkMode"] == "none"
    probe = (
        "import json, urllib.request as u; "
        "r = u.urlopen(u.Request('http://127.0.0.1:5001/score', "
        f"data=json.dumps({{'data': {ROWS}}}).encode())); print(r.read().decode())"
    )
    code, text = engine.exec_probe(cid, ["python3", "-c", probe])
    assert code == 0, text
    assert json.loads(text)["predictions"] == EXPECTED
    # Nothing but loopback inside: the container cannot reach any other address.
    code, text = engine.exec_probe(cid, ["sh", "-c", "ls /sys/class/net"])
    assert text.split() == ["lo"]
    assert main(["stop", str(built)]) == 0


@pytest.mark.docker
def test_run_twice_is_refused_and_a_failed_start_shows_the_log(
    tmp_path: Path,
    tiny: Tiny,
    built: Path,
    capsys: pytest.CaptureFixture[str],
    stop_after: list[Path],
    engine: DockerEngine,
) -> None:
    stop_after.append(built)
    assert main(["run", str(built), "--detach", "--port", "0"]) == 0
    capsys.readouterr()
    assert main(["run", str(built), "--detach", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert (
        "is already running as " + container_name(check_unpacked(built, roots=()), built.resolve())
        in err
    )
    assert "airgap stop DEST" in err
    assert main(["stop", str(built)]) == 0

    # Dynamic mode with the wheels folder emptied after unpack is refused before starting.
    dest = tiny.unpack_to(tmp_path / "dest")
    (dest / "wheels" / "requirements.txt").write_text("tinylib==2.0\n")
    assert main(["run", str(dest), "--mode", "dynamic", "--detach"]) == 3


@pytest.mark.docker
def test_run_without_a_built_image_says_to_build(
    tmp_path: Path,
    publisher: KeyPair,
    base_id: str,
    engine: DockerEngine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A different created time: a different payload, so no image carries its revision.
    bundle = write_tiny_bundle(
        tmp_path / "u.airgap", publisher, base_id, mode="baked", created=1_700_000_123
    )
    dest = Tiny(bundle, publisher.pub).unpack_to(tmp_path / "dest")
    assert main(["run", str(dest), "--detach"]) == 1
    err = capsys.readouterr().err
    assert "no baked image of tiny-model 1.0+test is built from this bundle" in err
    assert "airgap build DEST --variant baked" in err


@pytest.mark.docker
def test_a_failing_init_streams_the_container_log(
    tmp_path: Path,
    publisher: KeyPair,
    base_id: str,
    engine: DockerEngine,
    capsys: pytest.CaptureFixture[str],
    stop_after: list[Path],
) -> None:
    files = tiny_files(base_id)
    files["app/score.py"] = (
        b"def init():\n    raise RuntimeError('model file is corrupt')\n\n"
        b"def run(raw):\n    return raw\n",
        0o644,
    )
    bundle = write_tiny_bundle(
        tmp_path / "f.airgap", publisher, base_id, files=files, name="tiny-broken", version="1.0"
    )
    dest = Tiny(bundle, publisher.pub).unpack_to(tmp_path / "dest")
    stop_after.append(dest)
    assert main(["build", str(dest), "--quiet"]) == 0
    assert main(["run", str(dest), "--detach", "--port", "0", "--timeout", "60"]) == 1
    err = capsys.readouterr().err
    assert "model file is corrupt" in err  # from the container's own log
    assert "the container exited during start" in err
    assert engine.containers_with_labels({LABEL_DEST: str(dest.resolve())}) == []
    engine.remove_image("tiny-broken:1.0")


def test_run_local_serves_without_docker(
    tmp_path: Path, publisher: KeyPair, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = write_tiny_bundle(tmp_path / "b.airgap", publisher, "sha256:" + "ab" * 32)
    dest = Tiny(bundle, publisher.pub).unpack_to(tmp_path / "dest")
    assert main(["run", str(dest), "--local", "--detach"]) == 2
    assert "--detach needs Docker" in capsys.readouterr().err

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bundler", "run", str(dest), "--local", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        result = None
        while result is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                result = post_score(f"http://127.0.0.1:{port}/score", ROWS)
            except OSError:
                time.sleep(0.2)
        assert result is not None, "no answer from the local runner"
        assert result["predictions"] == EXPECTED
        assert result["lib"] == str(dest / "site-packages" / "tinylib" / "__init__.py")
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


# ---- the host check: the engine's architecture, the base image's Python ----------------------


def _bundle_for(out: Path, key: KeyPair, base_digest: str, target: Target, name: str) -> Path:
    """The tiny bundle with another ``target`` and name (so its tags are its own)."""
    sources = [SourceFile(p, data, m) for p, (data, m) in tiny_files(base_digest).items()]
    meta = BundleMeta(
        name=name,
        version="1.0",
        created=1_700_000_000,
        target=target,
        entry_script="app/score.py",
        mode="mounted",
        base_image=BaseImage(BASE_REF, base_digest, included=False),
    )
    write_bundle(out, sources, meta, key.private, threads=1)
    return out


def _probe_containers(engine: DockerEngine) -> list[str]:
    return [c.id for c in engine.containers_with_labels({"airgap-bundler.probe": "1"})]


@pytest.mark.docker
def test_build_refuses_when_the_base_images_python_is_not_the_targets(
    tmp_path: Path,
    publisher: KeyPair,
    engine: DockerEngine,
    base_id: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    py312 = Target("3.12", "cp", "cp312", ("manylinux_2_17_x86_64",))
    bundle = _bundle_for(tmp_path / "b.airgap", publisher, base_id, py312, "hostcheck-py")
    dest = Tiny(bundle, publisher.pub).unpack_to(tmp_path / "dest")
    assert main(["build", str(dest)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        "host check: bundle hostcheck-py 1.0 targets cp312 (python 3.12) on "
        "manylinux_2_17_x86_64 (linux x86_64, glibc >= 2.17); the base image "
        f"{BASE_REF} ({base_id[:19]}) is linux x86_64 with glibc 2.36, CPython 3.11 "
        "(Python 3.12 needed); use a base image with cp312"
    )
    assert engine.image_id("hostcheck-py:1.0") is None  # nothing was built
    assert _probe_containers(engine) == []  # the probe's container is gone


@pytest.mark.docker
def test_build_refuses_another_architecture_before_touching_the_base_image(
    tmp_path: Path,
    publisher: KeyPair,
    engine: DockerEngine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The engine lacks this base image and the bundle does not carry it: without the engine
    # check first, the error would be the missing base image.
    missing = "sha256:" + hashlib.sha256(uuid.uuid4().bytes).hexdigest()
    arm = Target("3.11", "cp", "cp311", ("manylinux_2_28_aarch64",))
    bundle = _bundle_for(tmp_path / "b.airgap", publisher, missing, arm, "hostcheck-arm")
    dest = Tiny(bundle, publisher.pub).unpack_to(tmp_path / "dest")
    assert main(["build", str(dest)]) == 1
    err = capsys.readouterr().err
    assert "the Docker engine is linux x86_64 (aarch64 needed)" in err, err
    assert "lacks the base image" not in err


@pytest.mark.docker
def test_build_still_builds_when_the_base_image_fits(
    tmp_path: Path,
    publisher: KeyPair,
    engine: DockerEngine,
    base_id: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    py311 = Target("3.11", "cp", "cp311", ("manylinux_2_28_x86_64",))
    bundle = _bundle_for(tmp_path / "b.airgap", publisher, base_id, py311, "hostcheck-ok")
    dest = Tiny(bundle, publisher.pub).unpack_to(tmp_path / "dest")
    try:
        code, out = cli_json(["build", str(dest)], capsys)
        assert code == 0, out
        assert [i["tag"] for i in out["images"]] == ["hostcheck-ok:1.0"]
        assert engine.image_id("hostcheck-ok:1.0") == out["images"][0]["id"]
        assert _probe_containers(engine) == []
    finally:
        engine.remove_image("hostcheck-ok:1.0")


@pytest.mark.docker
def test_run_serves_https_with_the_key_mounted_read_only(
    built: Path,
    engine: DockerEngine,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    stop_after: list[Path],
) -> None:
    from _tlscert import make_cert

    cert, key = make_cert(tmp_path / "tls")
    key.chmod(0o600)
    code = main(
        [
            "run",
            str(built),
            "--detach",
            "--port",
            "0",
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
        ]
    )
    assert code != 0
    assert "chmod 640" in capsys.readouterr().err
    key.chmod(0o640)
    stop_after.append(built)
    code, out = cli_json(
        [
            "run",
            str(built),
            "--detach",
            "--port",
            "0",
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
        ],
        capsys,
    )
    assert code == 0, out
    uri = str(out["scoring_uri"])
    assert uri.startswith("https://127.0.0.1:")
    context = ssl.create_default_context(cafile=str(cert))
    body = json.dumps({"data": ROWS}).encode()
    req = urllib.request.Request(uri, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10, context=context) as r:
        assert json.loads(r.read())["predictions"] == EXPECTED
    data = engine._api.inspect_container(str(out["id"]))
    mounts = {m["Destination"]: m for m in data["Mounts"]}
    assert mounts["/opt/airgap/tls/key.pem"]["RW"] is False
    assert mounts["/opt/airgap/tls/cert.pem"]["RW"] is False
    # The image's own HEALTHCHECK speaks https too.
    deadline = time.monotonic() + 60
    while (health := engine.inspect(str(out["id"]))) and health.health == "starting":
        assert time.monotonic() < deadline
        time.sleep(1)
    assert health is not None and health.health == "healthy"
    main(["stop", str(built)])


# ---- key auth and metrics in the container --------------------------------------------------


def _http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.mark.docker
def test_run_with_auth_key_file_mounts_it_read_only_and_publishes_metrics_on_loopback(
    built: Path,
    engine: DockerEngine,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    stop_after: list[Path],
) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving the key file to the image's user (uid 10001) needs root")
    key, next_key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    keys = tmp_path / "endpoint-keys"
    keys.write_text(f"{key}\n")
    keys.chmod(0o600)
    # Owned by another user than the image's: refused before any container, with the remedy.
    assert main(["run", str(built), "--detach", "--port", "0", "--auth-key-file", str(keys)]) == 2
    err = capsys.readouterr().err
    assert f"chown 10001:10001 {keys}" in err and key not in err
    assert engine.containers_with_labels({LABEL_DEST: str(built)}) == []

    os.chown(keys, 10001, 10001)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        metrics_port = s.getsockname()[1]
    stop_after.append(built)
    args = ["run", str(built), "--detach", "--port", "0", "--auth-key-file", str(keys)]
    code, out = cli_json([*args, "--metrics-port", str(metrics_port)], capsys)
    assert code == 0, out
    uri = str(out["scoring_uri"])
    body = json.dumps({"data": ROWS}).encode()
    assert _http("POST", uri, body)[0] == 401
    status, answer = _http("POST", uri, body, {"Authorization": f"Bearer {key}"})
    assert status == 200 and json.loads(answer)["predictions"] == EXPECTED
    assert _http("GET", uri.rsplit("/", 1)[0] + "/")[0] == 200  # probes need no key

    # Rotation through the read-only mount: rewrite the file in place (same inode).
    with keys.open("w") as f:
        f.write(f"{key}\n{next_key}\n")
    deadline = time.monotonic() + 10
    while _http("POST", uri, body, {"Authorization": f"Bearer {next_key}"})[0] != 200:
        assert time.monotonic() < deadline, "the new key was never accepted"
        time.sleep(0.2)

    assert out["metrics_uri"] == f"http://127.0.0.1:{metrics_port}/metrics"
    status, text = _http("GET", str(out["metrics_uri"]))
    assert status == 200
    # One with the first key, one with the next once it was read (the 401s vary).
    assert b'airgap_requests_total{method="POST",route="/score",status="200"} 2.0' in text

    info = engine._api.inspect_container(str(out["id"]))
    env = info["Config"]["Env"]
    assert "AIRGAP_AUTH_KEY_FILE=/run/secrets/airgap-auth-keys" in env
    assert "AIRGAP_METRICS_PORT=9464" in env
    mounts = [m for m in info["Mounts"] if m["Destination"] == "/run/secrets/airgap-auth-keys"]
    assert [(m["Type"], m["Source"], m["RW"]) for m in mounts] == [("bind", str(keys), False)]
    bindings = info["HostConfig"]["PortBindings"]["9464/tcp"]
    assert bindings == [{"HostIp": "127.0.0.1", "HostPort": str(metrics_port)}]
    assert out["port"] != metrics_port  # the scoring port is still the one reported
    # The key is in no environment, no layer, no image setting and no log line.
    image = str(info["Image"])
    inspected = json.dumps([info, engine._api.inspect_image(image)])
    history = json.dumps(engine._api.history(image))
    logs = engine.logs(str(out["id"]))
    for secret in (key, next_key):
        assert secret not in inspected and secret not in history and secret not in logs
    assert "key auth on" in logs
    code, _ = cli_json(["stop", str(built)], capsys)
    assert code == 0


def test_the_packs_socket_query_needs_a_unix_socket_and_reads_no_engine_as_unpinned(
    tmp_path: Path,
) -> None:
    from bundler.deploy import enginesocket

    with pytest.raises(enginesocket.NotHere):
        enginesocket.socket_path({"DOCKER_HOST": "tcp://127.0.0.1:2375"})
    assert enginesocket.socket_path({}) == "/var/run/docker.sock"
    assert enginesocket.socket_path({"DOCKER_HOST": "unix:///x/d.sock"}) == "/x/d.sock"
    assert enginesocket.image_id("any:tag", path=str(tmp_path / "none.sock")) is None


@pytest.mark.docker
def test_the_packs_socket_query_agrees_with_the_sdk(engine: DockerEngine) -> None:
    from bundler.deploy import enginesocket

    want = engine.image_id(BASE_REF)
    assert want is not None and want.startswith("sha256:")
    assert enginesocket.image_id(BASE_REF) == want
    assert enginesocket.image_id("airgap-test/no-such-image:never") is None
    assert enginesocket.image_id("Not A Reference") is None  # a 400 from the engine
