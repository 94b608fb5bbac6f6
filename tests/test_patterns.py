"""Azure ML entry-script patterns, each a real project in tests/projects/, through the real CLI.

Online: `airgap pack` with real wheels from PyPI. Isolated, inside `unshare -n` (loopback only):
`airgap verify`, `airgap unpack`, `airgap serve`, then real HTTP requests. The same bundles
then go through `airgap build` (under `unshare -n`) and `airgap run --mode mounted` in Docker,
and must give the same answers.
"""

from __future__ import annotations

import base64
import json
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import require_netns
from entry_scripts.harness import http

ROOT = Path(__file__).resolve().parent.parent
PROJECTS = ROOT / "tests" / "projects"
CLIENT = ROOT / "tests" / "isolated_client.py"
AIRGAP = [sys.executable, "-m", "bundler"]
EPOCH = "1700000000"

pytestmark = [pytest.mark.network, pytest.mark.slow, pytest.mark.netns]


@dataclass(frozen=True)
class Call:
    method: str
    path: str = "/score"
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def spec(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
            "body_b64": None if self.body is None else base64.b64encode(self.body).decode(),
        }


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def post(payload: Any) -> Call:
    return Call(
        "POST", body=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )


Check = Callable[[list[Response]], None]


@dataclass(frozen=True)
class Pattern:
    project: str
    calls: tuple[Call, ...]
    check: Check


# ---- the patterns and what a user must see ------------------------------------------------


def _folder_model(r: list[Response]) -> None:
    assert (r[0].status, r[0].json()) == (200, [14.5, 32.5])


def _file_model(r: list[Response]) -> None:
    assert (r[0].status, r[0].json()) == (200, {"labels": ["low", "high", "high"]})


def _multi_model(r: list[Response]) -> None:
    assert (r[0].status, r[0].json()) == (200, {"ids": [20, 0, 10]})


def _children(r: list[Response]) -> None:
    assert r[0].status == 200, r[0].body
    out = r[0].json()
    assert out["results"] == [1, 4, 9, 16]
    assert out["workers_are_other_processes"] is True
    sub = out["subprocess"]
    assert sub["code"] == 0, sub["err"]
    version, where = sub["out"].split(" ", 1)
    assert version == "1.6.0"
    # The child imported the bundle's joblib, not one of the host's or the image's.
    assert where.startswith(out["lib_path"] + "/joblib/"), (where, out["lib_path"])


def _console_script(r: list[Response]) -> None:
    assert r[0].status == 200, r[0].body
    out = r[0].json()
    assert out["code"] == 0, out["err"]
    assert out["tool"].endswith("/prefix/bin/tabulate"), out["tool"]
    assert [line.split() for line in out["table"]] == [["name", "score"], ["a", "1"], ["b", "22"]]


def _data_wheel(r: list[Response]) -> None:
    assert r[0].status == 200, r[0].body
    assert r[0].json() == {
        "sklearnex_in_site_packages": True,
        "sklearnex_origin": "sklearnex/__init__.py",
        "labextension_in_prefix": True,
    }


def _pth_wheel(r: list[Response]) -> None:
    assert r[0].status == 200, r[0].body
    out = r[0].json()
    # distutils-precedence.pth installed setuptools' shim: distutils is setuptools' copy.
    assert out["here"] == "setuptools/_distutils/__init__.py"
    assert out["child"] == "setuptools/_distutils/__init__.py", out["child_err"]


SCHEMA_BODY = {
    "data": [[1, 2, 3], [4, 5, 6]],
    "frame": [{"a": 1, "b": 2.5}, {"a": 3, "b": 0.5}],
    "scale": 2.0,
}


def _schema(r: list[Response]) -> None:
    ok, missing, wrong_type, get, swagger = r
    assert ok.status == 200, ok.body
    assert ok.json() == {
        "row_sums": [13.0, 31.0],
        "frame_sum": 7.0,
        "types": ["ndarray", "DataFrame", "float"],
    }
    # Azure ML's server: a missing parameter is 400, a body that is not JSON is 415.
    assert missing.status == 400, missing.body
    assert "'data'" in missing.json()["message"]
    assert wrong_type.status == 415, wrong_type.body
    assert get.status == 200, get.body
    assert get.json() == {
        "row_sums": [19.0],
        "frame_sum": 3.5,
        "types": ["ndarray", "DataFrame", "float"],
    }
    assert swagger.status == 200, swagger.body
    doc = swagger.json()
    text = json.dumps(doc)
    assert "/score" in text and '"frame"' in text and '"data"' in text, text[:500]


def _multipart(fields: dict[str, str], name: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = "airgap-test-boundary-7f3a"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    return b"".join(
        parts
    ) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


UPLOAD, UPLOAD_TYPE = _multipart({"width": "3"}, "image", "cat.bin", bytes(range(10)))


def _rawhttp(r: list[Response]) -> None:
    get, upload = r
    assert get.status == 200, get.body
    assert get.json() == {"method": "GET", "args": {"x": ["1", "2"], "y": ["z"]}}
    assert get.headers["x-raw"] == "yes"
    assert upload.status == 201, upload.body
    assert upload.headers["content-type"] == "image/png"
    assert (upload.headers["x-upload-name"], upload.headers["x-upload-bytes"]) == ("cat.bin", "10")
    assert upload.body.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", upload.body[16:24])
    assert (width, height) == (3, 10 % 7)


PATTERNS = {
    "folder-model": Pattern(
        "folder-model", (post({"data": [[1, 2, 3], [4, 5, 6]]}),), _folder_model
    ),
    "file-model": Pattern("file-model", (post({"data": [1, 3, 9]}),), _file_model),
    "multi-model": Pattern(
        "multi-model", (post({"words": ["gamma", "alpha", "beta"]}),), _multi_model
    ),
    "children": Pattern("children", (post({"data": [1, 2, 3, 4]}),), _children),
    "console-script": Pattern(
        "console-script", (post({"rows": [["a", 1], ["b", 22]]}),), _console_script
    ),
    "data-wheel": Pattern("data-wheel", (post({}),), _data_wheel),
    "pth-wheel": Pattern("pth-wheel", (post({}),), _pth_wheel),
    "schema": Pattern(
        "schema",
        (
            post(SCHEMA_BODY),
            post({k: v for k, v in SCHEMA_BODY.items() if k != "data"}),
            Call(
                "POST",
                body=json.dumps(SCHEMA_BODY).encode(),
                headers={"Content-Type": "text/plain"},
            ),
            Call(
                "GET",
                "/score?data=%5B%5B1%2C2%2C3%5D%5D&frame=%5B%7B%22a%22%3A1%2C%22b%22%3A2.5%7D%5D&scale=3.0",
            ),
            Call("GET", "/swagger.json"),
        ),
        _schema,
    ),
    "rawhttp": Pattern(
        "rawhttp",
        (
            Call("GET", "/score?x=1&x=2&y=z"),
            Call("POST", body=UPLOAD, headers={"Content-Type": UPLOAD_TYPE}),
        ),
        _rawhttp,
    ),
}


# ---- packing (online) ---------------------------------------------------------------------


def _airgap(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    import os

    proc = subprocess.run(
        [*AIRGAP, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=900,
    )
    assert proc.returncode == 0, f"airgap {args} exited {proc.returncode}:\n{proc.stderr}"
    return proc.stdout


class Packer:
    """Packs each project once per session, on demand (so `-k` runs only what it needs)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        _airgap("keygen", "--out", "keys", "--no-passphrase", cwd=root)
        self.key = root / "keys" / "airgap.key"
        self.pub = root / "keys" / "airgap.pub"
        self._done: dict[str, Path] = {}

    def bundle(self, project: str) -> Path:
        if project not in self._done:
            out = self.root / f"{project}.airgap"
            _airgap(
                "pack", PROJECTS / project, "-o", out, "--key", self.key, "-q",
                cwd=self.root, env={"SOURCE_DATE_EPOCH": EPOCH},
            )  # fmt: skip
            self._done[project] = out
        return self._done[project]


@pytest.fixture(scope="session")
def packer(tmp_path_factory: pytest.TempPathFactory) -> Packer:
    return Packer(tmp_path_factory.mktemp("patterns"))


def _responses(raw: list[dict[str, Any]]) -> list[Response]:
    return [Response(r["status"], r["headers"], base64.b64decode(r["body_b64"])) for r in raw]


# ---- the isolated side: local runner under unshare -n -------------------------------------


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_pattern_serves_offline_with_the_local_runner(
    name: str, packer: Packer, tmp_path: Path
) -> None:
    require_netns()
    pattern = PATTERNS[name]
    bundle = packer.bundle(pattern.project)
    spec = tmp_path / "spec.json"
    out = tmp_path / "out.json"
    spec.write_text(
        json.dumps(
            {
                "bundle": str(bundle),
                "trust": str(packer.pub),
                "dest": str(tmp_path / "dest"),
                "port": 5001,
                "calls": [c.spec() for c in pattern.calls],
            }
        )
    )
    cmd = f"ip link set lo up && exec {sys.executable} {CLIENT} {spec} {out}"
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", cmd], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert (result["verify"], result["unpack"]) == (0, 0), proc.stderr
    assert len(result["responses"]) == len(pattern.calls), result["log"]
    try:
        pattern.check(_responses(result["responses"]))
    except AssertionError as e:
        raise AssertionError(f"{e}\nserver log:\n{result['log']}") from e


# ---- the same bundles in Docker, mounted mode ---------------------------------------------


@pytest.fixture(scope="module")
def engine_ready() -> Iterator[None]:
    from test_docker import ensure_engine

    engine = ensure_engine()
    yield
    engine.close()


@pytest.mark.docker
@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_pattern_runs_in_docker_mounted(
    name: str, packer: Packer, tmp_path: Path, engine_ready: None
) -> None:
    require_netns()
    pattern = PATTERNS[name]
    bundle = packer.bundle(pattern.project)
    dest = tmp_path / "dest"
    for step in (
        ["unpack", str(bundle), str(dest), "--trust", str(packer.pub), "-q"],
        ["build", str(dest), "-q"],
    ):
        cmd = " ".join(["ip link set lo up &&", *AIRGAP, *step])
        proc = subprocess.run(
            ["unshare", "-n", "sh", "-c", cmd], capture_output=True, text=True, timeout=900
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    run = subprocess.run(
        [*AIRGAP, "run", str(dest), "--mode", "mounted", "--detach", "--port", "0", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    try:
        assert run.returncode == 0, run.stderr[-3000:]
        base = json.loads(run.stdout)["scoring_uri"].removesuffix("/score")
        got = []
        for call in pattern.calls:
            status, headers, body = http(
                call.method, base + call.path, call.body, call.headers, timeout=120
            )
            got.append(Response(status, headers, body))
        pattern.check(got)
    finally:
        subprocess.run([*AIRGAP, "stop", str(dest)], capture_output=True, timeout=120)
