"""Azure ML's inference-server contract beyond run(raw_data): inference-schema parameters,
@rawhttp with AMLRequest/AMLResponse, /swagger.json, GET /score, CORS and the laziness that keeps
plain scripts fast. Real server processes over real HTTP (tests/entry_scripts/harness.py)."""

from __future__ import annotations

import ast
import http.client as httpclient
import json
import struct
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from entry_scripts.harness import HERE, MODEL_DIR, Server, http

from bundler.runtime import config
from bundler.runtime.cors import CorsPolicy

RUNTIME_DIR = Path(__file__).resolve().parent.parent / "bundler" / "runtime"
JSON_CT = {"Content-Type": "application/json"}
RUN_FAILED = "An unexpected error occurred in scoring script. Check the logs for more info."


def serve(workdir: Path, script: str, **env: str) -> Server:
    server = Server(
        workdir,
        {"AZUREML_ENTRY_SCRIPT": str(HERE / script), "AZUREML_MODEL_DIR": str(MODEL_DIR), **env},
    )
    try:
        server.wait_healthy()
    except BaseException:
        server.stop()
        raise
    return server


def _module_server(factory: pytest.TempPathFactory, script: str, **env: str) -> Iterator[Server]:
    server = serve(factory.mktemp(script.replace(".", "_")), script, **env)
    yield server
    server.stop()


def body_of(raw: bytes) -> object:
    return json.loads(raw.decode("utf-8"))


def post(server: Server, path: str, body: bytes, headers: dict[str, str] | None = None):
    return http("POST", server.url + path, body, headers or {})


# ---- inference-schema -----------------------------------------------------------------


@pytest.fixture(scope="module")
def schema_numpy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    pytest.importorskip("inference_schema")
    pytest.importorskip("pandas")
    yield from _module_server(tmp_path_factory, "schema_numpy.py")


@pytest.fixture(scope="module")
def schema_headers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    pytest.importorskip("inference_schema")
    yield from _module_server(
        tmp_path_factory, "schema_headers.py", SERVICE_NAME="iris", SERVICE_PATH_PREFIX="api/v1/"
    )


NUMPY_BODY = {"data": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "frame": [{"a": 1, "b": "x"}]}


def test_schema_parameters_are_taken_by_name_and_converted(schema_numpy: Server) -> None:
    status, headers, body = post(
        schema_numpy, "/score", json.dumps({**NUMPY_BODY, "scale": 0.5}).encode(), JSON_CT
    )
    assert status == 200, body
    assert headers["x-ms-run-function-failed"] == "False"
    assert float(headers["x-ms-run-fn-exec-ms"]) >= 0
    # inference-schema turned the JSON into an ndarray and a DataFrame before run() saw them.
    assert body_of(body) == {
        "sums": [3.0, 7.5],
        "rows": 1,
        "columns": ["a", "b"],
        "scale": 0.5,
        "types": ["ndarray", "DataFrame"],
    }


def test_schema_parameter_default_applies_when_absent(schema_numpy: Server) -> None:
    status, _, body = post(schema_numpy, "/score", json.dumps(NUMPY_BODY).encode(), JSON_CT)
    assert status == 200
    payload = body_of(body)
    assert isinstance(payload, dict) and payload["scale"] == 1.0


def test_schema_missing_parameter_is_400(schema_numpy: Server) -> None:
    status, _, body = post(schema_numpy, "/score", b'{"data": [[1.0]]}', JSON_CT)
    assert status == 400
    assert body_of(body) == {"message": "A value is not provided for the 'frame' parameter."}


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("text/plain", 415),
        ("application/x-www-form-urlencoded", 415),
        ("application/json; charset=utf-8", 200),
        ("Application/JSON", 200),
        ("application/vnd.api+json", 200),
    ],
)
def test_schema_needs_a_json_content_type(
    schema_numpy: Server, content_type: str, status: int
) -> None:
    answer = post(
        schema_numpy, "/score", json.dumps(NUMPY_BODY).encode(), {"Content-Type": content_type}
    )
    assert answer[0] == status
    if status == 415:
        assert body_of(answer[2]) == {"message": "Expects Content-Type to be application/json"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[1, 2]", "POST body should be a JSON dictionary."),
        (b"", "POST body is empty. Expecting a JSON dictionary."),
        (
            b"{nope",
            "POST body could not be decoded as JSON: Expecting property name enclosed in double "
            "quotes: line 1 column 2 (char 1)",
        ),
        (
            b'{"data": "\xff"}',
            "Input cannot be decoded as UTF-8: 'utf-8' codec can't decode byte 0xff in position "
            "10: invalid start byte",
        ),
        # Valid JSON in UTF-16: refused, not reinterpreted (json.loads of bytes would take it).
        (
            '{"data": [[1.0]]}'.encode("utf-16"),
            "Input cannot be decoded as UTF-8: 'utf-8' codec can't decode byte 0xff in position "
            "0: invalid start byte",
        ),
        # Nested past Python's recursion limit: a 400, not a crash of the request.
        (
            b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            "POST body is nested too deeply to be read as JSON",
        ),
    ],
)
def test_schema_bad_bodies_are_400(schema_numpy: Server, body: bytes, message: str) -> None:
    status, _, answer = post(schema_numpy, "/score", body, JSON_CT)
    assert status == 400
    assert body_of(answer) == {"message": message}


def test_deeply_nested_query_values_stay_text(schema_numpy: Server, tmp_path: Path) -> None:
    # Past the recursion limit, json.loads raises RecursionError: the value stays text, and
    # the answer is the app's own JSON (a crash would be gunicorn's HTML page).
    deep = "[" * 3000
    plain = serve(tmp_path, "plain_json.py")
    try:
        status, headers, body = http("GET", plain.url + "/score?a=" + deep)
    finally:
        plain.stop()
    assert status == 500  # the script's own KeyError: the query has no "data"
    assert headers["x-ms-run-function-failed"] == "True"
    assert "message" in body_of(body)
    status, headers, body = http("GET", schema_numpy.url + "/score?data=" + deep)
    assert headers["content-type"] == "application/json"
    assert "message" in body_of(body)


def test_get_score_passes_query_parameters_by_name(schema_numpy: Server) -> None:
    query = '/score?data=[[1,2,3]]&frame=[{"a":1,"b":"y"},{"a":2,"b":"z"}]&scale=2'
    status, _, body = http("GET", schema_numpy.url + query.replace('"', "%22"))
    assert status == 200, body
    payload = body_of(body)
    assert isinstance(payload, dict)
    assert (payload["sums"], payload["rows"]) == ([12.0], 2)
    status, _, body = http("GET", schema_numpy.url + "/score?data=[[1]]")
    assert status == 400
    assert body_of(body) == {"message": "A value is not provided for the 'frame' parameter."}


def test_standard_types_request_headers_and_none(schema_headers: Server) -> None:
    status, _, body = post(
        schema_headers, "/score", b'{"text": "hi", "repeat": 2}', {**JSON_CT, "X-Custom": "v"}
    )
    assert (status, body_of(body)) == (200, {"out": ["hi", "hi"], "custom": "v"})
    # run() returning None: Azure ML sends an empty object, not null.
    status, _, body = post(schema_headers, "/score", b'{"text": "none"}', JSON_CT)
    assert (status, body) == (200, b"{}")
    status, headers, body = post(schema_headers, "/score", b'{"text": "fail"}', JSON_CT)
    assert (status, body_of(body)) == (500, {"message": RUN_FAILED})
    assert headers["x-ms-run-function-failed"] == "True"
    assert "secret detail" in schema_headers.stderr  # in the log, not in the answer
    # GET values are parsed as JSON when they are JSON, a repeated name becomes a list.
    status, _, body = http("GET", schema_headers.url + "/score?text=hey&repeat=3")
    assert (status, body_of(body)) == (200, {"out": ["hey"] * 3, "custom": None})


def test_swagger_from_the_schema(schema_numpy: Server) -> None:
    status, _, body = http("GET", schema_numpy.url + "/swagger.json")
    assert status == 200
    doc = body_of(body)
    assert isinstance(doc, dict) and doc["swagger"] == "2.0"
    service_input = doc["definitions"]["ServiceInput"]
    assert sorted(service_input["properties"]) == ["data", "frame", "scale"]
    assert service_input["properties"]["data"]["type"] == "array"
    assert doc["definitions"]["ServiceOutput"]["type"] == "object"
    assert sorted(doc["paths"]) == ["/", "/score", "/swagger.json"]
    for version, key, value in (("3", "openapi", "3.0.3"), ("3.1", "openapi", "3.1.0")):
        status, _, body = http("GET", schema_numpy.url + f"/swagger.json?version={version}")
        doc = body_of(body)
        assert status == 200 and isinstance(doc, dict) and doc[key] == value
        assert sorted(doc["components"]["schemas"]["ServiceInput"]["properties"]) == [
            "data",
            "frame",
            "scale",
        ]


def test_swagger_takes_service_settings(schema_headers: Server) -> None:
    doc = body_of(http("GET", schema_headers.url + "/swagger.json?version=3")[2])
    assert isinstance(doc, dict)
    assert doc["info"]["title"] == "iris"
    assert sorted(doc["paths"]) == ["/api/v1/", "/api/v1/score", "/api/v1/swagger.json"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("?version=4", "Swagger version [4] is not valid. Supported versions: [2, 3, 3.1]."),
        ("?version=", "Swagger version [] is not valid. Supported versions: [2, 3, 3.1]."),
    ],
)
def test_swagger_unknown_version_is_404(schema_numpy: Server, query: str, message: str) -> None:
    status, _, body = http("GET", schema_numpy.url + "/swagger.json" + query)
    assert (status, body_of(body)) == (404, {"message": message})


def test_swagger_prefers_the_users_own_file(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "swagger.json").write_text('{"swagger": "2.0", "mine": true}')
    server = serve(tmp_path, "probe.py", AML_APP_ROOT=str(tmp_path / "app"))
    try:
        mine = http("GET", server.url + "/swagger.json")
        generated = http("GET", server.url + "/swagger.json?version=3")
    finally:
        server.stop()
    assert (mine[0], body_of(mine[2])) == (200, {"swagger": "2.0", "mine": True})
    doc = body_of(generated[2])
    # A plain script: empty object schemas, as Azure ML generates them.
    assert isinstance(doc, dict)
    assert doc["components"]["schemas"]["ServiceInput"] == {"type": "object", "example": {}}


def test_a_broken_swagger_file_is_skipped_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "swagger.json").write_text("{not json")
    (tmp_path / "app" / "swagger3.json").mkdir()  # a folder where a file is expected
    server = serve(tmp_path, "probe.py", AML_APP_ROOT=str(tmp_path / "app"))
    try:
        v2 = http("GET", server.url + "/swagger.json")
        v3 = http("GET", server.url + "/swagger.json?version=3")
    finally:
        server.stop()
    assert v2[0] == 200 and body_of(v2[2])["swagger"] == "2.0"  # generated instead
    assert v3[0] == 200 and str(body_of(v3[2])["openapi"]).startswith("3.")
    assert "ignoring" in server.stderr and "swagger.json" in server.stderr


def test_driver_module_run_is_bypassed_as_azure_does(tmp_path: Path) -> None:
    pytest.importorskip("inference_schema")
    server = serve(tmp_path, "driver.py")
    try:
        status, _, body = post(server, "/score", b'{"text": "hi", "repeat": 2}', JSON_CT)
    finally:
        server.stop()
    assert (status, body_of(body)) == (200, {"out": ["hi", "hi"], "custom": None})
    assert "schema input" in server.stderr


def test_plain_script_gets_a_form_encoded_body_as_it_is(tmp_path: Path) -> None:
    # Azure ML hands run() "" here (Flask parsed the body as a form); ours passes the body on,
    # which is what `curl -d` users expect (docs/runtime.md, deliberate differences).
    server = serve(tmp_path, "probe.py")
    try:
        status, _, body = post(
            server,
            "/score",
            b'{"action": "size"}',
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
    finally:
        server.stop()
    assert (status, body_of(body)) == (200, {"size": 18})


# ---- @rawhttp -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _module_server(tmp_path_factory, "raw_image.py", AIRGAP_MAX_REQUEST_BYTES="4096")


def _multipart(boundary: str, payload: bytes) -> bytes:
    return (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="label"\r\n\r\ncat\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="width"\r\n\r\n4\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="in.raw"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + payload
        + f"\r\n--{boundary}--\r\n".encode()
    )


def _png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and the raw scanlines of a PNG (the test's own minimal decoder)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, width, height, idat = 8, 0, 0, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, chunk = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        crc = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0]
        assert crc == zlib.crc32(kind + chunk) & 0xFFFFFFFF
        if kind == b"IHDR":
            width, height = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    return width, height, zlib.decompress(idat)


def test_rawhttp_multipart_upload_returns_a_png(raw: Server) -> None:
    payload = b"\xff\x10\x80" + bytes(range(256))  # not UTF-8: files arrive untouched
    status, headers, body = post(
        raw,
        "/score",
        _multipart("bNd", payload),
        {"Content-Type": "multipart/form-data; boundary=bNd"},
    )
    assert status == 200, body
    assert headers["content-type"] == "image/png"
    assert headers["x-ms-run-function-failed"] == "False"
    assert int(headers["content-length"]) == len(body)
    assert headers["x-upload"] == f"in.raw;{len(payload)};application/octet-stream;cat"
    width, height, pixels = _png_pixels(body)
    assert (width, height) == (4, 1)
    assert pixels == b"\x00" + b"\xff\x10\x80" * 4


def test_rawhttp_request_is_an_amlrequest_with_the_body(raw: Server) -> None:
    status, _, body = post(raw, "/score?mode=isinstance", b"{}", JSON_CT)
    assert (status, body_of(body)) == (200, {"isinstance": True})
    status, _, body = post(raw, "/score?mode=json", b'{"k": [1]}', JSON_CT)
    assert body_of(body) == {"json": {"k": [1]}, "content_type": "application/json"}
    status, headers, body = post(
        raw, "/score?mode=echo", b"\x00\xff\xfe", {"Content-Type": "application/octet-stream"}
    )
    assert (status, body, headers["content-type"]) == (
        200,
        b"\x00\xff\xfe",
        "application/octet-stream",
    )


def test_rawhttp_get_and_options_reach_run(raw: Server) -> None:
    status, _, body = http("GET", raw.url + "/score?a=1&a=2&b=x")
    assert (status, body_of(body)) == (
        200,
        {"method": "GET", "args": {"a": ["1", "2"], "b": ["x"]}},
    )
    status, headers, body = http("OPTIONS", raw.url + "/score")
    assert (status, body, headers["allow"]) == (204, b"", "OPTIONS")  # split on commas
    assert http("PUT", raw.url + "/score", b"")[0] == 405


def test_amlresponse_status_and_failure_mark(raw: Server) -> None:
    status, headers, body = post(raw, "/score?mode=teapot", b"")
    assert (status, body_of(body), headers["content-type"]) == (
        418,
        {"short": "stout"},
        "application/json",
    )
    status, headers, body = post(raw, "/score?mode=broken", b"")
    # A 5xx answer from run() is marked as a failed run, as Azure ML does.
    assert (status, body, headers["x-ms-run-function-failed"]) == (503, b"backend down", "True")
    assert headers["content-type"] == "text/html; charset=utf-8"  # Flask's default, as Azure
    status, headers, body = post(raw, "/score?mode=fail", b"")
    assert (status, body_of(body), headers["x-ms-run-function-failed"]) == (
        500,
        {"message": RUN_FAILED},
        "True",
    )
    assert post(raw, "/score?mode=none", b"")[2] == b"{}"


def test_rawhttp_body_limit_holds_for_plain_and_chunked_bodies(raw: Server) -> None:
    status, _, body = post(raw, "/score?mode=echo", b"x" * 5000, {"Content-Type": "a/b"})
    assert (status, body_of(body)) == (
        413,
        {"message": "request body is larger than the limit of 4096 bytes"},
    )
    conn = httpclient.HTTPConnection("127.0.0.1", raw.port, timeout=30)
    try:
        conn.putrequest("POST", "/score?mode=echo")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.putheader("Content-Type", "application/octet-stream")
        conn.endheaders()
        for _ in range(5):
            conn.send(b"400\r\n" + b"y" * 1024 + b"\r\n")
        conn.send(b"0\r\n\r\n")
        response = conn.getresponse()
        chunked = (response.status, response.read())
    finally:
        conn.close()
    assert chunked[0] == 413
    assert body_of(chunked[1]) == {"message": "request body is larger than the limit of 4096 bytes"}
    assert post(raw, "/score?mode=echo", b"ok", {"Content-Type": "a/b"})[:1] == (200,)


def test_plain_run_may_answer_with_an_amlresponse(tmp_path: Path) -> None:
    server = serve(tmp_path, "plain_returns_response.py")
    try:
        created = post(server, "/score", b'{"text": "made"}', JSON_CT)
        conn = httpclient.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("POST", "/score", b"{}", JSON_CT)
        response = conn.getresponse()
        raw_headers = response.getheaders()
        response.read()
        conn.close()
        failed = post(server, "/score", b'{"status": 502, "text": "x"}', JSON_CT)
        head = http("HEAD", server.url + "/score")
    finally:
        server.stop()
    status, headers, body = created
    assert (status, body) == (201, b"made")
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-store"
    assert headers["x-ms-run-fn-exec-ms"]
    assert failed[0] == 502 and failed[1]["x-ms-run-function-failed"] == "True"
    # A value with commas becomes one header per part, as Azure ML sends repeated headers.
    assert [v for k, v in raw_headers if k.lower() == "x-multi"] == ["a", "b"]
    assert head[0] == 405


def test_rawhttp_and_input_schema_together_refuse_to_start(tmp_path: Path) -> None:
    pytest.importorskip("inference_schema")
    server = Server(
        tmp_path,
        {"AZUREML_ENTRY_SCRIPT": str(HERE / "raw_and_schema.py"), "WORKER_COUNT": "1"},
    )
    code = server.wait_exit(60)
    assert code == 3
    assert "run() cannot be decorated with both @rawhttp and @input_schema" in server.stderr


def test_user_azureml_namespace_package_coexists_with_the_shim(tmp_path: Path) -> None:
    # A user's own pkgutil-style azureml package (as azureml-* distributions ship) comes first
    # on sys.path; the shim's azureml.contrib.services is still importable beside it.
    lib = tmp_path / "lib" / "azureml"
    (lib / "core").mkdir(parents=True)
    (lib / "__init__.py").write_text(
        '__path__ = __import__("pkgutil").extend_path(__path__, __name__)\n'
    )
    (lib / "core" / "__init__.py").write_text("VALUE = 'user core'\n")
    server = serve(tmp_path, "raw_image.py", AZUREML_EXTRA_PYTHON_LIB_PATH=str(tmp_path / "lib"))
    try:
        status, _, body = post(server, "/score?mode=json", b"[1]", JSON_CT)
        core = post(server, "/score?mode=import&module=azureml.core", b"", JSON_CT)
        shim = post(server, "/score?mode=import&module=azureml.contrib.services", b"", JSON_CT)
    finally:
        server.stop()
    assert (status, body_of(body)) == (200, {"json": [1], "content_type": "application/json"})
    user = body_of(core[2])
    assert isinstance(user, dict) and user["value"] == "user core"
    assert user["file"].startswith(str(tmp_path / "lib"))
    runtime = body_of(shim[2])
    assert isinstance(runtime, dict) and "_toplevel" in runtime["file"]


# ---- laziness: plain scripts pay for none of this -----------------------------------------


def test_plain_scripts_load_neither_werkzeug_nor_inference_schema(tmp_path: Path) -> None:
    server = serve(tmp_path, "probe.py")
    try:
        names = ["werkzeug", "inference_schema", "azureml", "markupsafe"]
        status, _, body = post(
            server, "/score", json.dumps({"action": "modules", "names": names}).encode(), JSON_CT
        )
        swagger = http("GET", server.url + "/swagger.json")[0]
        again = post(
            server, "/score", json.dumps({"action": "modules", "names": names}).encode(), JSON_CT
        )
    finally:
        server.stop()
    assert status == 200 and swagger == 200
    assert body_of(body) == dict.fromkeys(names, False)
    assert body_of(again[2]) == dict.fromkeys(names, False)


def test_raw_modules_import_only_stdlib_and_werkzeug() -> None:
    allowed = set(sys.stdlib_module_names) | {"werkzeug"}
    paths = [RUNTIME_DIR / "rawhttp.py", *sorted((RUNTIME_DIR / "_toplevel").rglob("*.py"))]
    # The shim's five files, the runtime's sitecustomize (children process .pth files), rawhttp.
    assert len(paths) == 7
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert roots <= allowed, f"{path.name} imports {roots}"


# ---- CORS -----------------------------------------------------------------------------


def test_cors_headers_over_http(tmp_path: Path) -> None:
    server = serve(tmp_path, "probe.py", AML_CORS_ORIGINS="https://app.example")
    try:
        allowed = post(server, "/score", b'{"action": "size"}', {"Origin": "https://APP.example"})
        other = post(server, "/score", b'{"action": "size"}', {"Origin": "https://evil.example"})
        preflight = http(
            "OPTIONS",
            server.url + "/score",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-b, Content-Type",
            },
        )
        missing = http("GET", server.url + "/nope", headers={"Origin": "https://app.example"})
    finally:
        server.stop()
    assert allowed[1]["access-control-allow-origin"] == "https://APP.example"
    assert "vary" not in allowed[1]  # one literal origin: flask-cors adds no Vary
    assert "access-control-allow-origin" not in other[1]
    assert preflight[0] == 200
    assert preflight[1]["access-control-allow-methods"] == "GET, POST"
    assert preflight[1]["access-control-allow-headers"] == "Content-Type, x-b"
    # Azure ML's CORS covers its routes only, not the 404 of an unknown path.
    assert "access-control-allow-origin" not in missing[1]


@pytest.mark.parametrize(
    ("raw", "origin", "expected"),
    [
        (None, "https://a", None),
        ("", "https://a", None),
        ("*", "https://a", [("Access-Control-Allow-Origin", "https://a"), ("Vary", "Origin")]),
        ("*", None, [("Access-Control-Allow-Origin", "*")]),
        ("https://a", None, [("Access-Control-Allow-Origin", "https://a")]),
        (
            "https://b, https://a",
            None,
            [("Access-Control-Allow-Origin", "https://a"), ("Vary", "Origin")],
        ),
        ("https://a", "https://b", []),
        (
            r"https://.*\.example",
            "https://x.example",
            [("Access-Control-Allow-Origin", "https://x.example"), ("Vary", "Origin")],
        ),
    ],
)
def test_cors_policy_matches_flask_cors(
    raw: str | None, origin: str | None, expected: list[tuple[str, str]] | None
) -> None:
    policy = CorsPolicy.from_env(raw)
    if expected is None:
        assert policy is None
        return
    assert policy is not None
    assert policy.headers("POST", origin) == expected


def test_cors_preflight_method_test_is_flask_cors_substring() -> None:
    policy = CorsPolicy.from_env("https://a")
    assert policy is not None
    put = policy.headers("OPTIONS", "https://a", "PUT", "x")
    assert put == [("Access-Control-Allow-Origin", "https://a")]
    net = policy.headers("OPTIONS", "https://a", "get", None, "true")
    assert net == [
        ("Access-Control-Allow-Origin", "https://a"),
        ("Access-Control-Allow-Private-Network", "false"),
        ("Access-Control-Allow-Methods", "GET, POST"),
    ]


# ---- settings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, 299_000),
        ({"WORKER_TIMEOUT": "30"}, 29_000),
        ({"WORKER_TIMEOUT": "5000"}, 3_600_000),
        ({"WORKER_TIMEOUT": "1"}, 900),
        ({"WORKER_TIMEOUT": "30", "SCORING_TIMEOUT_MS": "90000"}, 90_000),
        ({"SCORING_TIMEOUT_MS": "0"}, 0),
    ],
)
def test_scoring_timeout_default_follows_worker_timeout(
    tmp_path: Path, env: dict[str, str], expected: int
) -> None:
    (tmp_path / "score.py").write_text("")
    settings = config.load_settings({"AZUREML_ENTRY_SCRIPT": "score.py", **env}, tmp_path)
    assert settings.scoring_timeout_ms == expected


# ---- a Response run() returned is rendered under run()'s own guard -----------------------


def test_a_response_body_that_raises_or_blocks_is_run_s_failure(tmp_path: Path) -> None:
    server = serve(tmp_path, "response_body_fails.py", SCORING_TIMEOUT_MS="1000")
    try:
        raised = post(server, "/score", b'{"mode": "raise"}', JSON_CT)
        blocked = post(server, "/score", b'{"mode": "block"}', JSON_CT)
        fine = post(server, "/score", b"{}", JSON_CT)
    finally:
        server.stop()
    status, headers, body = raised
    assert status == 500
    assert headers["x-ms-run-function-failed"] == "True"
    assert "secret detail" not in body.decode()
    assert "secret detail from the body generator" in server.stderr  # the log has it
    status, headers, body = blocked
    assert status == 500
    assert body_of(body) == {"message": "Scoring timeout after 1000 ms"}
    assert fine[0] == 200 and fine[2] == b"ok"
