"""Contract tests of the scoring runtime: every route, status and variable, over real HTTP."""

from __future__ import annotations

import ast
import http.client as httpclient
import json
import shutil
import signal
import socket
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
from entry_scripts.harness import HERE, MODEL_DIR, Server, http

from bundler.runtime import config
from bundler.runtime.server import gunicorn_options
from bundler.runtime.worker import AirgapWorker

RUNTIME_DIR = Path(__file__).resolve().parent.parent / "bundler" / "runtime"


def serve(tmp_path: Path, script: str, **env: str) -> Server:
    """A healthy server for tests/entry_scripts/<script> with extra environment ``env``."""
    server = Server(
        tmp_path,
        {"AZUREML_ENTRY_SCRIPT": str(HERE / script), "AZUREML_MODEL_DIR": str(MODEL_DIR), **env},
    )
    try:
        server.wait_healthy()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory):
    server = serve(tmp_path_factory.mktemp("probe"), "probe.py")
    yield server
    server.stop()


def body_of(raw: bytes) -> object:
    return json.loads(raw.decode("utf-8"))


# ---- routes ---------------------------------------------------------------------------


def test_health_route_answers_healthy(probe: Server) -> None:
    status, headers, body = http("GET", probe.url + "/")
    assert (status, body) == (200, b"Healthy")
    assert headers["content-type"].startswith("text/plain")


def test_head_on_health_route_has_no_body(probe: Server) -> None:
    status, headers, body = http("HEAD", probe.url + "/")
    assert status == 200
    assert body == b""
    assert headers["content-length"] == "7"


def test_score_returns_run_result_as_json(probe: Server) -> None:
    status, headers, body = probe.score(b'{"action": "size"}')
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert body_of(body) == {"size": len(b'{"action": "size"}')}


def test_score_body_that_is_not_utf8_is_refused_not_altered(probe: Server) -> None:
    # Azure ML's server answers 400; nothing is replaced behind run()'s back.
    status, headers, body = probe.score(b'{"action": "size", "pad": "\xff"}')
    assert status == 400
    assert headers["x-ms-run-function-failed"] == "False"
    assert body_of(body) == {
        "message": "Input cannot be decoded as UTF-8: 'utf-8' codec can't decode byte 0xff in "
        "position 27: invalid start byte"
    }
    # Valid UTF-8 beyond ASCII reaches run() as the same text.
    status, _, body = probe.score('{"action": "size", "pad": "\u00e9\u4e2d"}'.encode())
    assert status == 200
    assert body_of(body) == {"size": len('{"action": "size", "pad": "\u00e9\u4e2d"}')}


def test_run_raising_gives_500_without_its_message(probe: Server) -> None:
    status, headers, body = probe.score(b'{"action": "fail", "message": "bad row 7"}')
    assert status == 500
    assert headers["content-type"] == "application/json"
    assert headers["x-ms-run-function-failed"] == "True"
    # Azure ML's message: the exception's text may hold data, so it stays in the log.
    assert body_of(body) == {
        "message": "An unexpected error occurred in scoring script. Check the logs for more info."
    }
    assert "Traceback" in probe.stderr and "bad row 7" in probe.stderr
    # The worker survives: the next request is served.
    assert probe.score(b'{"action": "size"}')[0] == 200


def test_run_returning_non_json_gives_500(probe: Server) -> None:
    status, headers, body = probe.score(b'{"action": "not_json"}')
    assert status == 500
    assert headers["x-ms-run-function-failed"] == "False"  # as Azure ML: run() itself returned
    assert body_of(body) == {
        "message": "An unexpected internal error occurred. Check the logs for more info."
    }
    assert "not JSON" in probe.stderr


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/score", "GET, HEAD, OPTIONS, POST"),
        ("DELETE", "/score", "GET, HEAD, OPTIONS, POST"),
        ("POST", "/", "GET, HEAD, OPTIONS"),
        ("PATCH", "/", "GET, HEAD, OPTIONS"),
        ("POST", "/swagger.json", "GET, HEAD, OPTIONS"),
    ],
)
def test_wrong_method_gives_405_with_allow(
    probe: Server, method: str, path: str, allow: str
) -> None:
    status, headers, body = http(method, probe.url + path, b"{}")
    assert status == 405
    assert headers["allow"] == allow
    assert body_of(body) == {"message": "The method is not allowed for the requested URL."}


def test_head_on_score_is_refused_as_azure_does(probe: Server) -> None:
    status, _, body = http("HEAD", probe.url + "/score")
    assert (status, body) == (405, b"")


@pytest.mark.parametrize("path", ["/score", "/", "/swagger.json"])
def test_options_answers_200_with_an_empty_body(probe: Server, path: str) -> None:
    status, headers, body = http("OPTIONS", probe.url + path)
    assert (status, body) == (200, b"")
    if path != "/score":  # Flask's automatic OPTIONS, which Azure ML turns off for /score
        assert headers["allow"] == "GET, HEAD, OPTIONS"


@pytest.mark.parametrize("path", ["/nope", "/score/extra", "/%0Ainjected", "/swagger.json/x"])
def test_unknown_path_gives_404(probe: Server, path: str) -> None:
    status, headers, body = http("GET", probe.url + path)
    assert status == 404
    assert headers["x-ms-run-function-failed"] == "False"
    payload = body_of(body)
    assert isinstance(payload, dict)
    assert payload["message"].startswith("The requested URL was not found on the server.")


# ---- request ids and the access log ---------------------------------------------------


def test_request_id_is_echoed(probe: Server) -> None:
    _, headers, _ = probe.score(b"{}", {"x-request-id": "client-42"})
    assert headers["x-request-id"] == "client-42"
    assert headers["x-ms-request-id"] == "client-42"
    assert "x-ms-client-request-id" not in headers
    # Any value up to 100 characters is echoed as Azure ML does (the log escapes it).
    _, headers, _ = probe.score(b"{}", {"x-request-id": 'a b"c'})
    assert headers["x-request-id"] == 'a b"c'


def test_legacy_and_client_request_ids_follow_azure(probe: Server) -> None:
    # The deprecated x-ms-request-id doubles as the client request id; x-request-id is new.
    _, headers, _ = probe.score(b"{}", {"x-ms-request-id": "ms-7"})
    assert headers["x-ms-request-id"] == "ms-7"
    assert headers["x-ms-client-request-id"] == "ms-7"
    assert headers["x-request-id"] not in ("ms-7", "")
    _, headers, _ = probe.score(b"{}", {"x-ms-client-request-id": "c-1"})
    assert headers["x-ms-request-id"] == "c-1"
    assert headers["x-ms-client-request-id"] == "c-1"
    ids = {"x-request-id": "r", "x-ms-request-id": "m", "x-ms-client-request-id": "c"}
    _, headers, _ = probe.score(b"{}", ids)
    assert {k: headers[k] for k in ids} == ids


def test_request_id_is_generated_when_missing(probe: Server) -> None:
    _, first, _ = probe.score(b"{}")
    _, second, _ = probe.score(b"{}")
    ids = [h["x-request-id"] for h in (first, second)]
    assert len(set(ids)) == 2
    for headers, rid in zip((first, second), ids, strict=True):
        assert len(rid) == 36 and rid.count("-") == 4  # a uuid4
        assert headers["x-ms-request-id"] == rid


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("x-request-id", "x-request-id must not exceed 100 characters"),
        (
            "x-ms-request-id",
            "x-ms-request-id and x-ms-client-request-id must not exceed 100 characters",
        ),
        (
            "x-ms-client-request-id",
            "x-ms-request-id and x-ms-client-request-id must not exceed 100 characters",
        ),
    ],
)
def test_request_id_over_100_characters_gives_431(probe: Server, header: str, message: str) -> None:
    status, _, body = probe.score(b'{"action": "size"}', {header: "x" * 101})
    assert status == 431
    assert body_of(body) == {"message": message}
    assert probe.score(b'{"action": "size"}', {header: "x" * 100})[0] == 200


def test_one_access_line_per_request_with_latency_and_id(tmp_path: Path) -> None:
    server = serve(tmp_path, "probe.py")
    try:
        before = len(server.access_lines())  # the health polls
        server.score(b"{}", {"x-request-id": "line-1"})
        http("GET", server.url + "/missing", headers={"x-request-id": "line-2"})
        server.score(b'{"action": "fail"}', {"x-request-id": "line-3"})
        time.sleep(0.2)
        lines = server.access_lines()[before:]
    finally:
        server.stop()
    assert len(lines) == 3
    expected = [
        ("POST", "/score", "200", "line-1"),
        ("GET", "/missing", "404", "line-2"),
        ("POST", "/score", "500", "line-3"),
    ]
    for line, (method, path, status, rid) in zip(lines, expected, strict=True):
        fields = line.split()
        assert fields[1] == "access"
        assert fields[3:6] == [method, path, status]
        assert fields[7].endswith("ms") and float(fields[7][:-2]) >= 0
        assert fields[8] == f"id={rid}"


# ---- environment variables ------------------------------------------------------------


def test_model_dir_relative_path_is_made_absolute(tmp_path: Path) -> None:
    (tmp_path / "mdl").mkdir()
    shutil.copy(MODEL_DIR / "linear.json", tmp_path / "mdl" / "linear.json")
    server = Server(
        tmp_path,
        {"AZUREML_ENTRY_SCRIPT": str(HERE / "plain_json.py"), "AZUREML_MODEL_DIR": "mdl"},
        cwd=tmp_path,
    )
    try:
        server.wait_healthy()
        status, _, body = server.score(b'{"data": [[1, 1, 1, 1]]}')
    finally:
        server.stop()
    assert status == 200
    assert body_of(body) == [0.5 - 1.0 + 2.0 + 0.25 + 1.0]


def test_entry_script_relative_to_working_directory(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(HERE / "probe.py", app / "score.py")
    server = Server(tmp_path, {"AZUREML_ENTRY_SCRIPT": "app/score.py"}, cwd=tmp_path)
    try:
        server.wait_healthy()
        status, _, body = server.score(b'{"action": "environment"}')
    finally:
        server.stop()
    assert status == 200
    payload = body_of(body)
    assert isinstance(payload, dict)
    # The entry script's folder is importable, as Azure ML makes it.
    assert str(app) in payload["sys_path"]


def test_scoring_timeout_cuts_off_run_with_500(tmp_path: Path) -> None:
    server = serve(tmp_path, "probe.py", SCORING_TIMEOUT_MS="300")
    try:
        sleeping = server.score(b'{"action": "sleep", "seconds": 20}')
        busy = server.score(b'{"action": "busy", "seconds": 20}')
        after = server.score(b'{"action": "sleep", "seconds": 0.05}')
    finally:
        server.stop()
    for status, headers, body in (sleeping, busy):
        assert status == 500  # Azure ML's status, with its run-function-failed mark
        assert headers["x-ms-run-function-failed"] == "True"
        payload = body_of(body)
        assert isinstance(payload, dict)
        assert payload["message"] == "Scoring timeout after 300 ms"
    # The same worker goes on serving, and a stale alarm does not hit the next request.
    assert after[0] == 200


def test_scoring_timeout_zero_turns_it_off(tmp_path: Path) -> None:
    server = serve(tmp_path, "probe.py", SCORING_TIMEOUT_MS="0")
    try:
        status, _, body = server.score(b'{"action": "sleep", "seconds": 0.5}')
    finally:
        server.stop()
    assert status == 200
    assert body_of(body) == {"slept": 0.5}


def test_max_request_size_gives_413(tmp_path: Path) -> None:
    server = serve(tmp_path, "probe.py", AIRGAP_MAX_REQUEST_BYTES="64")
    at_limit = b'{"action": "size", "pad": "' + b"x" * (64 - 29) + b'"}'
    assert len(at_limit) == 64
    try:
        ok = server.score(at_limit)
        over = server.score(at_limit[:-2] + b'x"}')
        big = server.score(b'{"pad": "' + b"y" * 2_000_000 + b'"}')
        chunked = _post_chunked(server.port, [b'{"pad": "', b"z" * 100, b'"}'])
        chunked_ok = _post_chunked(server.port, [b'{"action": ', b'"size"}'])
    finally:
        server.stop()
    assert ok[0] == 200 and body_of(ok[2]) == {"size": 64}
    for status, _, body in (over, big, chunked):
        assert status == 413
        payload = body_of(body)
        assert isinstance(payload, dict)
        assert "limit of 64 bytes" in payload["message"]
    assert chunked_ok[0] == 200


def _post_chunked(port: int, chunks: list[bytes]) -> tuple[int, dict[str, str], bytes]:
    conn = httpclient.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(
            "POST",
            "/score",
            body=iter(chunks),
            encode_chunked=True,
            headers={"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_worker_count_starts_that_many_workers_each_running_init(tmp_path: Path) -> None:
    marker = tmp_path / "inits"
    server = serve(tmp_path, "probe.py", WORKER_COUNT="3", PROBE_INIT_MARKER=str(marker))
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(marker.read_text().split()) < 3:
            time.sleep(0.05)
        pids = set(marker.read_text().split())
    finally:
        server.stop()
    assert len(pids) == 3
    assert str(server.proc.pid) not in pids  # init() runs in the workers, not the master


def test_worker_timeout_kills_a_stuck_worker_and_a_new_one_serves(tmp_path: Path) -> None:
    server = serve(tmp_path, "probe.py", WORKER_TIMEOUT="2", SCORING_TIMEOUT_MS="0")
    try:
        try:
            # gunicorn aborts the worker; its last act is a bare 500 (or the connection drops).
            stuck = server.score(b'{"action": "sleep", "seconds": 30}', timeout=25)[0]
        except (OSError, httpclient.HTTPException):
            stuck = None
        assert stuck in (500, None)
        server.wait_healthy()
        status, _, _ = server.score(b"{}")
    finally:
        server.stop()
    assert status == 200
    assert "WORKER TIMEOUT" in server.stderr


def test_requests_wait_until_init_has_returned(tmp_path: Path) -> None:
    marker = tmp_path / "init-done"
    server = Server(
        tmp_path,
        {
            "AZUREML_ENTRY_SCRIPT": str(HERE / "probe.py"),
            "PROBE_INIT_DELAY": "1.5",
            "PROBE_INIT_MARKER": str(marker),
        },
    )
    try:
        # Connect as early as the socket exists, then ask: the answer must come after init().
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.01)
        assert not marker.exists()
        status, _, body = http("GET", server.url + "/")
        assert (status, body) == (200, b"Healthy")
        assert marker.exists()
    finally:
        server.stop()


def test_extra_lib_path_is_first_and_relative_to_entry_script(tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "libs" / "requests").mkdir(parents=True)
    shutil.copy(HERE / "probe.py", app / "score.py")
    # A package of the same name as one installed on the host: the user's copy must win.
    (app / "libs" / "requests" / "__init__.py").write_text("VALUE = 'from the lib path'\n")
    server = Server(
        tmp_path,
        {"AZUREML_ENTRY_SCRIPT": str(app / "score.py"), "AZUREML_EXTRA_PYTHON_LIB_PATH": "libs"},
    )
    try:
        server.wait_healthy()
        status, _, body = server.score(b'{"action": "import", "module": "requests"}')
        _, _, env_body = server.score(b'{"action": "environment"}')
    finally:
        server.stop()
    assert status == 200
    assert body_of(body) == {
        "importable": True,
        "value": "from the lib path",
        "file": str(app / "libs" / "requests" / "__init__.py"),
    }
    env = body_of(env_body)
    assert isinstance(env, dict)
    assert env["sys_path"][0] == str(app / "libs")


def _make_wheel(folder: Path, name: str, version: str, source: str) -> Path:
    """A real, minimal pure-Python wheel that pip installs."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": source,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{dist}/RECORD,,\n"
    files[f"{dist}/RECORD"] = record
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


def test_extra_requirements_are_installed_offline_from_their_folder(tmp_path: Path) -> None:
    wheels = tmp_path / "app" / "wheels"
    wheels.mkdir(parents=True)
    shutil.copy(HERE / "probe.py", tmp_path / "app" / "score.py")
    _make_wheel(wheels, "tinyairgappkg", "1.0", "VALUE = 'installed from a wheel'\n")
    (wheels / "requirements.txt").write_text("tinyairgappkg==1.0\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    # A proxy that cannot exist: any attempt to reach an index would fail the install.
    server = Server(
        tmp_path,
        {
            "AZUREML_ENTRY_SCRIPT": str(tmp_path / "app" / "score.py"),
            "AZUREML_EXTRA_REQUIREMENTS_TXT": "wheels/requirements.txt",
            "TMPDIR": str(scratch),
            "PIP_INDEX_URL": "http://127.0.0.1:9/",
            "HTTPS_PROXY": "http://127.0.0.1:9/",
        },
    )
    try:
        server.wait_healthy()
        status, _, body = server.score(b'{"action": "import", "module": "tinyairgappkg"}')
        during = [p.name for p in scratch.iterdir()]
    finally:
        code = server.stop()
    assert status == 200
    payload = body_of(body)
    assert isinstance(payload, dict)
    assert payload["value"] == "installed from a wheel"
    assert payload["file"].startswith(str(scratch / "airgap-requirements-"))
    assert any(name.startswith("airgap-requirements-") for name in during)
    assert code == 0
    # The temporary install is removed when the server stops.
    assert not any(p.name.startswith("airgap-requirements-") for p in scratch.iterdir())


def test_extra_requirements_missing_wheel_fails_start(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("notthere==1.0\n")
    server = Server(
        tmp_path,
        {
            "AZUREML_ENTRY_SCRIPT": str(HERE / "probe.py"),
            "AZUREML_EXTRA_REQUIREMENTS_TXT": str(tmp_path / "requirements.txt"),
        },
    )
    assert server.wait_exit() == 2
    assert "installing" in server.stderr and "failed" in server.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "AZUREML_ENTRY_SCRIPT is not set"),
        ({"AZUREML_ENTRY_SCRIPT": "nowhere/score.py"}, "no such file"),
        (
            {
                "AZUREML_ENTRY_SCRIPT": str(HERE / "probe.py"),
                "AZUREML_EXTRA_PYTHON_LIB_PATH": "missing-libs",
            },
            "AZUREML_EXTRA_PYTHON_LIB_PATH",
        ),
        (
            {
                "AZUREML_ENTRY_SCRIPT": str(HERE / "probe.py"),
                "AZUREML_EXTRA_REQUIREMENTS_TXT": "missing.txt",
            },
            "AZUREML_EXTRA_REQUIREMENTS_TXT",
        ),
        (
            {
                "AZUREML_ENTRY_SCRIPT": str(HERE / "probe.py"),
                "AZUREML_EXTRA_PYTHON_LIB_PATH": ".",
                "AZUREML_EXTRA_REQUIREMENTS_TXT": "probe.py",
            },
            "are both set",
        ),
        (
            {"AZUREML_ENTRY_SCRIPT": str(HERE / "probe.py"), "AZUREML_MODEL_DIR": "no-model"},
            "AZUREML_MODEL_DIR",
        ),
        (
            {"AZUREML_ENTRY_SCRIPT": str(HERE / "probe.py"), "WORKER_COUNT": "many"},
            "WORKER_COUNT='many' is not an integer",
        ),
        (
            {"AZUREML_ENTRY_SCRIPT": str(HERE / "probe.py"), "SCORING_TIMEOUT_MS": "-1"},
            "SCORING_TIMEOUT_MS=-1 must be at least 0",
        ),
    ],
)
def test_bad_configuration_is_a_clear_startup_error(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    server = Server(tmp_path, env)
    assert server.wait_exit() == 2
    assert "configuration error" in server.stderr
    assert message in server.stderr


def test_sigterm_lets_the_running_request_finish(tmp_path: Path) -> None:
    server = serve(tmp_path, "probe.py")
    result: list[tuple[int, dict[str, str], bytes]] = []
    worker = threading.Thread(
        target=lambda: result.append(server.score(b'{"action": "sleep", "seconds": 1}'))
    )
    worker.start()
    time.sleep(0.3)
    server.proc.send_signal(signal.SIGTERM)
    worker.join(30)
    code = server.wait_exit(30)
    assert result and result[0][0] == 200
    assert body_of(result[0][2]) == {"slept": 1}
    assert code == 0


# ---- the entry scripts users bring (run unchanged) ------------------------------------


def test_plain_json_entry_script(tmp_path: Path) -> None:
    server = serve(tmp_path, "plain_json.py")
    try:
        status, _, body = server.score(b'{"data": [[1, 2, 3, 4], [0, 0, 0, 0]]}')
    finally:
        server.stop()
    assert status == 200
    assert body_of(body) == [0.5 - 2.0 + 6.0 + 1.0 + 1.0, 1.0]


def test_entry_script_reading_headers(tmp_path: Path) -> None:
    server = serve(tmp_path, "reads_headers.py")
    try:
        status, _, body = server.score(
            b'{"a": 1}', {"X-Custom-Header": "tenant-9", "x-request-id": "hdr-1"}
        )
    finally:
        server.stop()
    assert status == 200
    assert body_of(body) == {
        "echo": {"a": 1},
        "custom": "tenant-9",
        "content_type": "application/json",
        "request_id": "hdr-1",
    }


def test_entry_script_returning_a_dict_or_a_string(tmp_path: Path) -> None:
    server = serve(tmp_path, "returns_dict.py")
    try:
        as_dict = server.score(b'{"data": [[2, 0, 0, 0]]}')
        as_string = server.score(b'{"data": [[2, 0, 0, 0]], "as_string": true}')
        handled = server.score(b"not json")
    finally:
        server.stop()
    expected = {"model": "tiny-linear", "predictions": [2.0]}
    assert as_dict[0] == 200 and body_of(as_dict[2]) == expected
    # A returned string is sent as a JSON string, exactly as Azure ML's server does.
    assert as_string[0] == 200 and body_of(as_string[2]) == json.dumps(expected)
    assert handled[0] == 200
    payload = body_of(handled[2])
    assert isinstance(payload, dict) and "error" in payload


def test_entry_script_failing_in_init_exits_nonzero_with_traceback(tmp_path: Path) -> None:
    server = Server(
        tmp_path,
        {
            "AZUREML_ENTRY_SCRIPT": str(HERE / "init_fails.py"),
            "AZUREML_MODEL_DIR": str(MODEL_DIR),
            "WORKER_COUNT": "2",
        },
    )
    code = server.wait_exit()
    assert code == 3
    err = server.stderr
    assert "Traceback (most recent call last)" in err
    assert "FileNotFoundError: model file not found" in err
    assert str(HERE / "init_fails.py") in err


def test_entry_script_without_run_fails_start(tmp_path: Path) -> None:
    script = tmp_path / "score.py"
    script.write_text("def init():\n    pass\n")
    server = Server(tmp_path, {"AZUREML_ENTRY_SCRIPT": str(script)})
    assert server.wait_exit() == 3
    assert "defines no run() function" in server.stderr


# ---- packaging: the runtime runs as plain copied files --------------------------------


def test_runtime_imports_only_stdlib_gunicorn_and_itself() -> None:
    allowed = set(sys.stdlib_module_names) | {"gunicorn"}
    for path in sorted(RUNTIME_DIR.glob("*.py")):
        if path.name == "rawhttp.py":  # the one module that uses werkzeug, imported lazily
            continue
        if path.name == "metrics.py":
            # prometheus_client, only inside functions: importing metrics.py loads none of it.
            top = [n for n in ast.parse(path.read_text()).body if isinstance(n, ast.ImportFrom)]
            assert all((n.module or "").split(".")[0] != "prometheus_client" for n in top)
            allowed_here = allowed | {"prometheus_client"}
        else:
            allowed_here = allowed
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [(node.module or "").split(".")[0]]
            else:
                continue
            assert set(roots) <= allowed_here, f"{path.name} imports {roots}"


def test_copied_runtime_runs_as_airgap_runtime(tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"
    (runtime / "airgap_runtime").mkdir(parents=True)
    for path in RUNTIME_DIR.glob("*.py"):
        shutil.copy(path, runtime / "airgap_runtime" / path.name)
    env = {
        "AZUREML_ENTRY_SCRIPT": str(HERE / "plain_json.py"),
        "AZUREML_MODEL_DIR": str(MODEL_DIR),
        "PYTHONPATH": str(runtime),
    }
    # From a folder where `bundler` is not importable, to prove the copy stands alone.
    server = Server(tmp_path, env, module="airgap_runtime", cwd=tmp_path)
    try:
        server.wait_healthy()
        status, _, body = server.score(b'{"data": [[0, 0, 0, 0]]}')
        _, _, env_body = http("POST", server.url + "/score", b'{"data": []}')
    finally:
        server.stop()
    assert status == 200 and body_of(body) == [1.0]
    assert body_of(env_body) == []
    assert "airgap_runtime" in server.stderr


def test_gunicorn_options_follow_settings(tmp_path: Path) -> None:
    (tmp_path / "score.py").write_text("")
    settings = config.load_settings(
        {
            "AZUREML_ENTRY_SCRIPT": "score.py",
            "WORKER_COUNT": "4",
            "WORKER_TIMEOUT": "9",
            "AIRGAP_HOST": "::1",
        },
        tmp_path,
    )
    options = gunicorn_options(settings)
    assert options["workers"] == 4
    assert options["timeout"] == 9
    assert options["bind"] == ["[::1]:5001"]
    assert options["worker_class"] is AirgapWorker


def test_settings_defaults(tmp_path: Path) -> None:
    (tmp_path / "score.py").write_text("")
    settings = config.load_settings({"AZUREML_ENTRY_SCRIPT": "score.py"}, tmp_path)
    assert settings.port == 5001
    assert settings.workers == 1
    assert settings.worker_timeout == 300
    # Azure ML's one hour, capped 1 s below WORKER_TIMEOUT: answered before the worker is killed.
    assert settings.scoring_timeout_ms == 299_000
    assert settings.cors_origins is None
    assert settings.max_request_bytes == 100 * 1024 * 1024
    assert settings.extra_lib_paths == ()
    assert settings.entry_script == tmp_path / "score.py"
