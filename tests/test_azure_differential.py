"""Differential test: the same requests to Azure ML's own server and to ours, the same answers.

Azure ML's server (`azureml-inference-server-http`, with numpy and pandas for the schema
scripts) is installed from PyPI into one throwaway virtualenv per session; it is never a
dependency of the project. Both servers run the same entry scripts (started once per script)
with the same environment. Each row names what must match: status and body always (bodies
compared as bytes, swagger documents as parsed JSON), plus the headers listed in the row.

Where ours deliberately differs (documented in docs/runtime.md), the row is absent here and the
behaviour is tested in tests/test_runtime_contract.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import venv
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from entry_scripts.harness import HERE, MODEL_DIR, Server, free_port, http

pytestmark = [pytest.mark.network, pytest.mark.slow]

AZURE_PACKAGE = "azureml-inference-server-http==1.5.1"
# What the entry scripts import, for Azure's side (ours uses the test environment's).
SCRIPT_DEPS = ("numpy", "pandas")
CORS = "http://a.example, http://b.example"
# Headers whose values must be equal on both sides when a row claims them ("+name": present on
# both, value free, e.g. a generated id or a timing).
ID_HEADERS = ("x-request-id", "x-ms-request-id", "x-ms-client-request-id")
AML = ("content-type", "x-ms-run-function-failed", *ID_HEADERS)


@dataclass(frozen=True)
class Row:
    name: str
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    claims: tuple[str, ...] = AML
    json_body: bool = False  # compare bodies as parsed JSON (documents with key order free)


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


JSON_CT = {"Content-Type": "application/json"}


def _multipart(boundary: str) -> bytes:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="label"\r\n\r\ncat\r\n',
        f'--{boundary}\r\nContent-Disposition: form-data; name="width"\r\n\r\n3\r\n',
    ]
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    return (
        "".join(parts).encode()
        + head.encode()
        + b"\xff\x10\x80rest-of-file\x00"
        + f"\r\n--{boundary}--\r\n".encode()
    )


PLAIN_ROWS = [
    Row("score", "POST", "/score", b'{"action": "size"}', JSON_CT),
    Row(
        "echo x-request-id", "POST", "/score", b'{"action": "size"}', {"x-request-id": "client-42"}
    ),
    Row(
        "legacy x-ms-request-id",
        "POST",
        "/score",
        b'{"action": "size"}',
        {"x-ms-request-id": "ms-7"},
        ("x-ms-request-id", "x-ms-client-request-id", "+x-request-id"),
    ),
    Row(
        "client request id",
        "POST",
        "/score",
        b'{"action": "size"}',
        {"x-ms-client-request-id": "c-1"},
        ("x-ms-request-id", "x-ms-client-request-id", "+x-request-id"),
    ),
    Row(
        "all three ids",
        "POST",
        "/score",
        b'{"action": "size"}',
        {"x-request-id": "r", "x-ms-request-id": "m", "x-ms-client-request-id": "c"},
    ),
    Row(
        "x-request-id too long",
        "POST",
        "/score",
        b'{"action": "size"}',
        {"x-request-id": "x" * 101},
    ),
    Row(
        "client id too long",
        "POST",
        "/score",
        b'{"action": "size"}',
        {"x-ms-client-request-id": "y" * 101},
    ),
    Row(
        "long id, unknown path",
        "GET",
        "/nope",
        headers={"x-request-id": "z" * 101},
        claims=("content-type", "x-ms-run-function-failed"),
    ),
    Row(
        "long id, refused method",
        "PUT",
        "/score",
        b"",
        {"x-ms-request-id": "z" * 101},
        ("content-type", "x-ms-run-function-failed"),
    ),
    Row("long id, swagger", "GET", "/swagger.json", headers={"x-request-id": "z" * 101}),
    Row("run raises", "POST", "/score", b'{"action": "fail", "message": "secret"}'),
    Row("result not JSON", "POST", "/score", b'{"action": "not_json"}'),
    Row("body not UTF-8", "POST", "/score", b'{"action": "size", "pad": "\xff"}', JSON_CT),
    Row("GET /score with query", "GET", "/score?action=size&x=1&x=2"),
    Row("OPTIONS /score", "OPTIONS", "/score"),
    Row("HEAD /score", "HEAD", "/score", claims=AML),
    # Routing refusals: ours adds the ids and an Allow header (docs/runtime.md), not claimed.
    Row("PUT /score", "PUT", "/score", b'{"action": "size"}', claims=("content-type",)),
    Row(
        "POST /",
        "POST",
        "/",
        b'{"action": "size"}',
        claims=("content-type", "x-ms-run-function-failed"),
    ),
    Row("OPTIONS /", "OPTIONS", "/", claims=("~allow", *ID_HEADERS)),
    Row("OPTIONS /swagger.json", "OPTIONS", "/swagger.json", claims=("~allow", *ID_HEADERS)),
    Row("unknown path", "GET", "/nope", claims=("content-type", "x-ms-run-function-failed")),
    Row("health", "GET", "/", claims=ID_HEADERS),
    Row("swagger default", "GET", "/swagger.json", json_body=True),
    Row("swagger 3", "GET", "/swagger.json?version=3", json_body=True),
    Row("swagger 3.1", "GET", "/swagger.json?version=3.1", json_body=True),
    Row("swagger 2.0", "GET", "/swagger.json?version=2.0", json_body=True),
    Row("swagger bad version", "GET", "/swagger.json?version=4"),
    Row("timeout", "POST", "/score", b'{"action": "sleep", "seconds": 3}'),
    Row(
        "TraceId echoed",
        "POST",
        "/score",
        b'{"action": "size"}',
        {"TraceId": "t-1"},
        (*AML, "traceid"),
    ),
    Row(
        "CORS allowed origin",
        "POST",
        "/score",
        b'{"action": "size"}',
        {"Origin": "http://b.example"},
        (*AML, "access-control-allow-origin", "vary"),
    ),
    Row(
        "CORS other origin",
        "POST",
        "/score",
        b'{"action": "size"}',
        {"Origin": "http://evil.example"},
        (*AML, "access-control-allow-origin", "vary"),
    ),
    Row(
        "CORS without Origin",
        "GET",
        "/",
        claims=("access-control-allow-origin", "vary"),
    ),
    Row(
        "CORS preflight",
        "OPTIONS",
        "/score",
        headers={
            "Origin": "http://a.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "X-Custom, Content-Type",
        },
        claims=(
            *AML,
            "access-control-allow-origin",
            "access-control-allow-methods",
            "access-control-allow-headers",
            "vary",
        ),
    ),
]

# The plain script reads the body: send it as JSON (urllib would label it as a form, and Azure
# ML then hands run() an empty string; see docs/runtime.md).
PLAIN_ROWS = [
    replace(r, headers={**JSON_CT, **r.headers}) if r.body is not None else r for r in PLAIN_ROWS
]

NUMPY_BODY = {"data": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "frame": [{"a": 1, "b": "x"}]}
SCHEMA_ROWS = [
    Row("schema score", "POST", "/score", _json(NUMPY_BODY), JSON_CT),
    Row("schema with scale", "POST", "/score", _json({**NUMPY_BODY, "scale": 3.0}), JSON_CT),
    Row("schema missing param", "POST", "/score", _json({"data": [[1.0]]}), JSON_CT),
    Row(
        "schema wrong content type",
        "POST",
        "/score",
        _json(NUMPY_BODY),
        {"Content-Type": "text/plain"},
    ),
    Row("schema no content type", "POST", "/score", _json(NUMPY_BODY)),
    Row(
        "schema +json type",
        "POST",
        "/score",
        _json(NUMPY_BODY),
        {"Content-Type": "application/x+json"},
    ),
    Row("schema body not an object", "POST", "/score", b"[1, 2]", JSON_CT),
    Row("schema body not JSON", "POST", "/score", b"{nope", JSON_CT),
    Row("schema empty body", "POST", "/score", b"", JSON_CT),
    Row("schema GET", "GET", '/score?data=[[1,2,3]]&frame=[{"a":1,"b":"y"}]&scale=2'),
    Row("schema GET missing", "GET", "/score?data=[[1,2,3]]"),
    Row("schema swagger 2", "GET", "/swagger.json", json_body=True),
    Row("schema swagger 3", "GET", "/swagger.json?version=3", json_body=True),
]
HEADERS_ROWS = [
    Row(
        "std types",
        "POST",
        "/score",
        _json({"text": "hi", "repeat": 2}),
        {**JSON_CT, "X-Custom": "v"},
    ),
    Row("std default", "POST", "/score", _json({"text": "hi"}), JSON_CT),
    Row("run returns None", "POST", "/score", _json({"text": "none"}), JSON_CT),
    Row("schema run raises", "POST", "/score", _json({"text": "fail"}), JSON_CT),
    Row("std GET", "GET", "/score?text=hey&repeat=3"),
    Row("std swagger 3.1", "GET", "/swagger.json?version=3.1", json_body=True),
]
BOUNDARY = "xYzZY"
RAW_ROWS = [
    Row(
        "multipart upload to PNG",
        "POST",
        "/score",
        _multipart(BOUNDARY),
        {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        (
            "content-type",
            "x-ms-run-function-failed",
            "x-upload",
            "+x-ms-run-fn-exec-ms",
            *ID_HEADERS,
        ),
    ),
    Row("raw GET", "GET", "/score?a=1&a=2&b=x"),
    Row("raw OPTIONS", "OPTIONS", "/score", claims=(*AML, "allow")),
    Row("raw JSON", "POST", "/score?mode=json", b'{"k": [1]}', JSON_CT),
    Row(
        "raw binary echo",
        "POST",
        "/score?mode=echo",
        b"\x00\xff\xfe binary",
        {"Content-Type": "application/octet-stream"},
    ),
    Row("raw status 418", "POST", "/score?mode=teapot", b""),
    Row("raw 503 marks failure", "POST", "/score?mode=broken", b""),
    Row("raw raises", "POST", "/score?mode=fail", b""),
    Row("raw None", "POST", "/score?mode=none", b""),
    Row("raw PUT", "PUT", "/score", b"", claims=("content-type", "x-ms-run-function-failed")),
]
DRIVER_ROWS = [
    Row("driver bypassed", "POST", "/score", _json({"text": "hi", "repeat": 2}), JSON_CT),
]
SCRIPTS = {
    # Azure ML puts AML_APP_ROOT (not the script's folder) on sys.path: the driver's import.
    "driver.py": (DRIVER_ROWS, {"AML_APP_ROOT": str(HERE)}),
    "probe.py": (PLAIN_ROWS, {"SCORING_TIMEOUT_MS": "1000", "AML_CORS_ORIGINS": CORS}),
    "schema_numpy.py": (SCHEMA_ROWS, {}),
    "schema_headers.py": (HEADERS_ROWS, {}),
    "raw_image.py": (RAW_ROWS, {}),
}


@pytest.fixture(scope="session")
def azure_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reuse = os.environ.get("AIRGAP_TEST_AZURE_PYTHON")  # a venv's python with it, for reruns
    if reuse:
        return Path(reuse)
    root = tmp_path_factory.mktemp("azure-venv")
    venv.create(root, with_pip=True)
    python = root / "bin" / "python"
    proc = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            AZURE_PACKAGE,
            *SCRIPT_DEPS,
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        message = f"cannot install {AZURE_PACKAGE}: {proc.stderr.strip()[-300:]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return python


class AzureServer:
    """Azure ML's server (azmlinfsrv) on a free port, serving one entry script."""

    def __init__(self, python: Path, workdir: Path, script: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir)}
        full.update(env)
        full["AZUREML_MODEL_DIR"] = str(MODEL_DIR)
        self.log = (workdir / f"azure-{self.port}.log").open("wb")
        self.proc = subprocess.Popen(
            [
                str(python.parent / "azmlinfsrv"),
                "--entry_script",
                str(script),
                "--port",
                str(self.port),
            ],
            cwd=workdir,
            env=full,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def _wait(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited {proc.returncode}")
        try:
            if http("GET", url + "/", timeout=5)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{what} not healthy")


@pytest.fixture(scope="module", params=sorted(SCRIPTS))
def pair(
    request: pytest.FixtureRequest, azure_python: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Server, AzureServer]]:
    script = str(request.param)
    _, env = SCRIPTS[script]
    work = tmp_path_factory.mktemp("diff")
    ours = Server(
        work,
        {"AZUREML_ENTRY_SCRIPT": str(HERE / script), "AZUREML_MODEL_DIR": str(MODEL_DIR), **env},
    )
    azure = AzureServer(azure_python, work, HERE / script, env)
    try:
        ours.wait_healthy()
        _wait(azure.url, azure.proc, "Azure ML's server")
        yield script, ours, azure
    finally:
        ours.stop()
        azure.stop()


def _normalized(row: Row, headers: dict[str, str]) -> dict[str, str]:
    """Headers with a server-generated request id (the client sent none) written as <generated>:
    both sides generate a UUID4, and the other id headers must then carry that same value."""
    sent = {k.lower() for k in row.headers}
    generated = headers.get("x-request-id") if "x-request-id" not in sent else None
    if not generated:
        return headers
    return {k: ("<generated>" if v == generated else v) for k, v in headers.items()}


Answer = tuple[int, dict[str, str], bytes]


def _compare(row: Row, ours: Answer, azure: Answer) -> None:
    label = f"{row.name}: {row.method} {row.path}"
    assert ours[0] == azure[0], f"{label}: status {ours[0]} vs Azure's {azure[0]}"
    if row.json_body:
        assert json.loads(ours[2]) == json.loads(azure[2]), f"{label}: body"
    else:
        assert ours[2] == azure[2], f"{label}: body"
    mine, theirs = _normalized(row, ours[1]), _normalized(row, azure[1])
    for claim in row.claims:
        if claim.startswith("~"):  # a list whose order Flask takes from a set
            name = claim[1:]
            split = [{p.strip() for p in h.get(name, "").split(",")} for h in (mine, theirs)]
            assert split[0] == split[1], f"{label}: header {name}"
        elif claim.startswith("+"):
            name = claim[1:]
            assert (name in mine) == (name in theirs), f"{label}: header {name} presence"
        else:
            assert mine.get(claim) == theirs.get(claim), f"{label}: header {claim}"


def _short(answer: Answer) -> str:
    headers = {k: v for k, v in answer[1].items() if k not in ("date", "server", "connection")}
    return f"{answer[0]} {headers} {answer[2][:300]!r}"


def test_same_answers_as_azure_ml(pair: tuple[str, Server, AzureServer]) -> None:
    script, ours, azure = pair
    rows, _ = SCRIPTS[script]
    failures = []
    for row in rows:
        answers = [
            http(row.method, server.url + row.path, row.body, dict(row.headers))
            for server in (ours, azure)
        ]
        try:
            _compare(row, answers[0], answers[1])
        except AssertionError as e:
            message = str(e).splitlines()[0]
            failures.append(
                f"{message}\n  ours:  {_short(answers[0])}\n  azure: {_short(answers[1])}"
            )
    assert not failures, "\n".join(failures)
