"""The smoke test: [smoke] in bundle.toml (every problem at once), signed in the manifest, the
judging of an answer, and `airgap smoke` / `serve --smoke` against a real server."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import NOW, KeyPair, MakeBundle, require_netns, tiny_meta
from entry_scripts.harness import HERE, MODEL_DIR, free_port, http

from bundler.deploy.local import LocalServer
from bundler.deploy.smoke import evaluate, target_url
from bundler.errors import EXIT_ERROR, EXIT_SMOKE, ManifestError, ProjectError
from bundler.formats.manifest import parse_manifest
from bundler.formats.smoke import SmokeSpec
from bundler.pack import runtime_sources
from bundler.pack.assemble import SourceFile, write_bundle
from bundler.pack.project import load_project
from bundler.verify.unpack import open_verified, unpack

REPO = Path(__file__).resolve().parent.parent
AIRGAP = [sys.executable, "-m", "bundler"]
PY = "{}.{}".format(*sys.version_info[:2])

# ---- bundle.toml [smoke] -------------------------------------------------------------------

BASE = 'name = "demo"\nversion = "1.0.0"\nmodel = "model"\n'


def _project(tmp_path: Path, toml: str) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "bundle.toml").write_text(BASE + toml)
    (tmp_path / "score.py").write_text("def init():\n    pass\n\ndef run(raw):\n    return raw\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.bin").write_bytes(b"weights")
    (tmp_path / "requirements.lock").write_text("")
    return tmp_path


def test_a_smoke_table_with_every_key(tmp_path: Path) -> None:
    project = load_project(
        _project(
            tmp_path,
            """
[smoke]
request = { data = [[1, 2.5]] }
method = "put"
path = "/score?verbose=1"
headers = { "X-Tenant" = "a" }
status = 201
json_keys = ["predictions"]
json = { predictions = [1, "x", true] }
contains = "pred"
timeout = 5
""",
        )
    )
    assert project.smoke == SmokeSpec(
        method="PUT",
        path="/score?verbose=1",
        headers=(("Content-Type", "application/json"), ("X-Tenant", "a")),
        body='{"data":[[1,2.5]]}',
        status=201,
        json_keys=("predictions",),
        has_json=True,
        json={"predictions": [1, "x", True]},
        contains=("pred",),
        timeout=5,
    )


def test_smoke_defaults_and_a_request_file(tmp_path: Path) -> None:
    root = _project(
        tmp_path,
        '[smoke]\nrequest_file = "sample.txt"\nheaders = { "Content-Type" = "text/plain" }\n',
    )
    (root / "sample.txt").write_text("not JSON, as it is\n")
    spec = load_project(root).smoke
    assert spec is not None
    assert (spec.method, spec.path, spec.status, spec.timeout) == ("POST", "/score", 200, 30)
    assert spec.body == "not JSON, as it is\n"
    assert spec.headers == (("Content-Type", "text/plain"),)
    assert not spec.has_json and spec.json_keys == () and spec.contains == ()
    # No request: a GET of the path.
    bare = load_project(_project(tmp_path / "bare", '[smoke]\npath = "/"\ncontains = "Healthy"\n'))
    assert bare.smoke is not None and (bare.smoke.method, bare.smoke.body) == ("GET", None)
    assert load_project(_project(tmp_path / "none", "")).smoke is None


def test_every_smoke_problem_is_reported_at_once(tmp_path: Path) -> None:
    root = _project(
        tmp_path,
        """
[smoke]
request = "{not json"
method = "FETCH"
path = "score"
headers = { Authorization = "Bearer secret", "bad name" = "x" }
status = 99
json_keys = "predictions"
contains = ""
timeout = 0
expect = 1
""",
    )
    with pytest.raises(ProjectError) as info:
        load_project(root)
    text = info.value.message
    for needle in (
        "unknown key(s) smoke.expect",
        "smoke.method 'FETCH'",
        "smoke.path 'score' must start with '/'",
        "smoke.headers.Authorization: no credentials in the bundle",
        "smoke.headers: 'bad name' is not a header name",
        "smoke.status 99",
        "smoke.json_keys must be a list",
        "smoke.contains must be",
        "smoke.timeout 0",
    ):
        assert needle in text, needle
    assert "9 problem(s)" in text  # the JSON check of the request waits for the rest
    both = _project(tmp_path / "both", '[smoke]\nrequest = "{}"\nrequest_file = "x.json"\n')
    with pytest.raises(ProjectError, match=r"request and smoke\.request_file are both set"):
        load_project(both)
    bad = _project(tmp_path / "bad", '[smoke]\nrequest = "{not json"\n')
    with pytest.raises(ProjectError, match="the request is not valid JSON"):
        load_project(bad)


def test_the_iris_example_carries_its_smoke_test() -> None:
    spec = load_project(REPO / "examples" / "iris-sklearn").smoke
    assert spec is not None
    assert json.loads(spec.body or "") == {"data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}
    assert spec.has_json and spec.json == {"predictions": ["setosa", "virginica"]}


# ---- signed in the manifest ----------------------------------------------------------------

SPEC = SmokeSpec(
    body='{"action": "size"}',
    json={"size": 18},
    has_json=True,
    headers=(("Content-Type", "application/json"),),
    json_keys=("size",),
)


def test_the_smoke_test_is_signed_in_the_manifest_and_left_out_when_absent(
    make_bundle: MakeBundle, publisher: KeyPair
) -> None:
    with_smoke = open_verified(make_bundle(smoke=SPEC), [publisher.pub], now=NOW)
    assert with_smoke.manifest.smoke == SPEC
    assert json.loads(with_smoke.manifest_bytes)["smoke"]["json"] == {"size": 18}
    without = open_verified(make_bundle(), [publisher.pub], now=NOW)
    assert without.manifest.smoke is None
    assert "smoke" not in json.loads(without.manifest_bytes)  # same bytes as before the key


def test_an_invalid_smoke_key_in_a_manifest_is_refused_naming_every_problem(
    make_bundle: MakeBundle, publisher: KeyPair
) -> None:
    data = json.loads(
        open_verified(make_bundle(smoke=SPEC), [publisher.pub], now=NOW).manifest_bytes
    )
    data["smoke"]["status"] = "200"
    data["smoke"]["method"] = 1
    with pytest.raises(ManifestError, match=r"smoke\.method 1 .*; smoke\.status '200'"):
        parse_manifest(json.dumps(data).encode())
    data["smoke"] = [1]
    with pytest.raises(ManifestError, match="'smoke' must be a JSON object"):
        parse_manifest(json.dumps(data).encode())


# ---- judging an answer (pure) --------------------------------------------------------------


def test_evaluate_checks_status_keys_exact_json_and_substrings() -> None:
    spec = SmokeSpec(
        json_keys=("a", "b"), has_json=True, json={"a": 1, "b": [1.0]}, contains=("b",)
    )
    assert evaluate(spec, 200, b'{"b": [1], "a": 1.0}') == []
    problems = evaluate(spec, 500, b'{"a": true, "c": 1}')
    assert len(problems) == 4
    assert problems[0].startswith("status 500, expected 200")
    assert problems[1] == "JSON key(s) b missing (has: a, c)"
    assert problems[2].startswith("the JSON answer differs")  # true is not 1
    assert problems[3].startswith("the answer does not contain 'b'")
    assert evaluate(spec, 200, b"<html>") == [
        "the answer is not JSON: '<html>'",
        "the answer does not contain 'b': '<html>'",
    ]
    assert evaluate(SmokeSpec(json_keys=("a",)), 200, b"[1]")[0].startswith("the answer is not a")
    assert evaluate(SmokeSpec(has_json=True, json=None), 200, b"null") == []


def test_target_url_keeps_a_prefix_and_drops_a_trailing_score() -> None:
    spec = SmokeSpec(path="/score?x=1")
    assert target_url("http://h:1", spec) == "http://h:1/score?x=1"
    assert target_url("http://h:1/score", spec) == "http://h:1/score?x=1"
    assert target_url("https://h/models/iris/", spec) == "https://h/models/iris/score?x=1"


# ---- against a real server -----------------------------------------------------------------

MakeDest = Callable[..., Path]


@pytest.fixture(scope="module")
def keys(publisher: KeyPair) -> KeyPair:
    return publisher


def _host_package(name: str) -> list[SourceFile]:
    import importlib.util

    from bundler.pack.assemble import collect_tree

    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations
    return collect_tree(Path(next(iter(spec.submodule_search_locations))), f"runtime/lib/{name}")


@pytest.fixture(scope="module")
def make_dest(tmp_path_factory: pytest.TempPathFactory, keys: KeyPair) -> MakeDest:
    """A real bundle around tests/entry_scripts/probe.py with ``smoke``, unpacked; or the
    bundle file itself with ``unpacked=False``."""
    from bundler.formats.manifest import Target

    target = Target(PY, "cp", f"cp{PY.replace('.', '')}", ("manylinux_2_17_x86_64",))
    files = [
        SourceFile("app/score.py", HERE / "probe.py", 0o644),
        SourceFile("model/linear.json", MODEL_DIR / "linear.json", 0o644),
        *runtime_sources(),
        *_host_package("gunicorn"),
        *_host_package("packaging"),
    ]

    def make(smoke: SmokeSpec | None, *, unpacked: bool = True) -> Path:
        work = tmp_path_factory.mktemp("smoke")
        bundle = work / "probe.airgap"
        write_bundle(
            bundle, files, tiny_meta(name="probe", target=target, smoke=smoke), keys.private
        )
        if not unpacked:
            return bundle
        unpack(bundle, work / "dest", [keys.pub])
        return work / "dest"

    return make


def _airgap(*args: str | Path, netns: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [*AIRGAP, *map(str, args)]
    if netns:
        require_netns()
        cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


FAILING = SmokeSpec(
    body='{"action": "fail", "message": "model missing"}', json_keys=("predictions",)
)


def test_airgap_smoke_passes_and_fails_against_a_real_server(
    make_dest: MakeDest, keys: KeyPair, tmp_path: Path
) -> None:
    dest = make_dest(SPEC)
    with LocalServer(dest, port=free_port(), log=tmp_path / "server.log") as server:
        ok = _airgap("smoke", dest, "--url", server.url, "--json")
        assert ok.returncode == 0, ok.stderr
        result: dict[str, Any] = json.loads(ok.stdout)["smoke"]
        assert result["ok"] is True and result["status"] == 200 and result["problems"] == []
        assert result["url"] == server.url + "/score" and result["method"] == "POST"
        assert 0 < result["latency_ms"] < 30_000
        human = _airgap("smoke", dest, "--url", server.url + "/score")
        assert human.returncode == 0
        assert human.stdout.startswith(f"smoke test passed: POST {server.url}/score -> 200 in ")

        # Another bundle's (signed) smoke test against the same server: the answer is wrong.
        failing = make_dest(FAILING, unpacked=False)
        bad = _airgap("smoke", failing, "--trust", keys.pub, "--url", server.url, "--json")
        assert bad.returncode == EXIT_SMOKE, bad.stderr
        got = json.loads(bad.stdout)["smoke"]
        assert got["ok"] is False and got["status"] == 500
        assert got["problems"][0].startswith("status 500, expected 200")
        assert "JSON key(s) predictions missing" in got["problems"][1]
        line = _airgap("smoke", failing, "--trust", keys.pub, "--url", server.url)
        assert line.returncode == EXIT_SMOKE
        assert line.stderr.startswith("smoke test failed: POST ")
        # A bundle file is trusted only when verified.
        unverified = _airgap("smoke", failing, "--url", server.url)
        assert unverified.returncode == 2 and "pass --trust" in unverified.stderr
    # Nothing listens any more: no answer is a failure too, with the latency.
    gone = _airgap("smoke", dest, "--url", server.url, "--json")
    assert gone.returncode == EXIT_SMOKE
    assert json.loads(gone.stdout)["smoke"]["status"] is None
    assert "no answer" in json.loads(gone.stdout)["smoke"]["problems"][0]


def test_a_bundle_without_a_smoke_test_is_an_error(make_dest: MakeDest) -> None:
    proc = _airgap("smoke", make_dest(None), "--url", "http://127.0.0.1:9")
    assert proc.returncode == EXIT_ERROR
    assert "carries no smoke test; add a [smoke] table" in proc.stderr


def _serve(dest: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*AIRGAP, "serve", str(dest), "--port", str(port), "--smoke", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.netns
def test_serve_smoke_passes_and_keeps_serving_with_no_network(
    make_dest: MakeDest, tmp_path: Path
) -> None:
    require_netns()
    dest = make_dest(SPEC)
    client = tmp_path / "client.py"
    cmd = [*AIRGAP, "serve", str(dest), "--port", "5001", "--smoke", "--json"]
    client.write_text(
        "import json, subprocess, sys, urllib.request\n"
        f"proc = subprocess.Popen({cmd!r}, stdout=subprocess.PIPE, text=True)\n"
        "try:\n"
        "    ready = json.loads(proc.stdout.readline())\n"
        "    with urllib.request.urlopen(ready['url'] + '/', timeout=10) as r:\n"
        "        ready['still_serving'] = r.status == 200\n"
        "    print(json.dumps(ready))\n"
        "finally:\n"
        "    proc.terminate()\n"
        "sys.exit(proc.wait(60))\n"
    )
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", f"ip link set lo up && {sys.executable} {client}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    ready = json.loads(proc.stdout.strip().splitlines()[-1])
    assert ready["still_serving"] is True
    assert ready["smoke"]["ok"] is True and ready["smoke"]["status"] == 200


def test_serve_smoke_failure_stops_the_server_and_exits_4(make_dest: MakeDest) -> None:
    dest = make_dest(FAILING)
    port = free_port()
    proc = _serve(dest, port)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(60)
    assert proc.returncode == EXIT_SMOKE, err
    assert out == ""
    assert f"smoke test failed: POST http://127.0.0.1:{port}/score -> 500 in " in err
    time.sleep(0.2)
    with pytest.raises(OSError):
        http("GET", f"http://127.0.0.1:{port}/", timeout=5)


def test_serve_smoke_without_a_smoke_test_fails_before_starting(make_dest: MakeDest) -> None:
    dest = make_dest(None)
    proc = _serve(dest, free_port())
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_ERROR
    assert "carries no smoke test" in err
    assert not (dest / ".airgap" / "venv").exists()  # refused before any venv work


def test_auth_key_file_sends_the_first_key_as_a_bearer_token_and_the_query_is_kept(
    make_dest: MakeDest, keys: KeyPair, tmp_path: Path
) -> None:
    import http.server
    import threading

    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.path)
            seen.append(self.headers.get("Authorization"))
            self.rfile.read(int(self.headers["Content-Length"]))
            body = b'{"size": 18}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        key_file = tmp_path / "keys.txt"
        key_file.write_text("k-primary\nk-secondary\n")  # two keys while rotating
        spec = dataclasses.replace(SPEC, path="/score?verbose=1")
        bundle = make_dest(spec, unpacked=False)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        args = ["smoke", bundle, "--trust", keys.pub, "--url", url, "--auth-key-file", key_file]
        proc = _airgap(*args)
        assert proc.returncode == 0, proc.stderr
        assert seen == ["/score?verbose=1", "Bearer k-primary"]  # the query string kept
        # The key is never printed.
        assert "k-primary" not in proc.stdout + proc.stderr
    finally:
        server.shutdown()
        server.server_close()


# ---- deploy swarm --smoke: a balancer that has not yet found the replicas --------------------


def _scripted_server(answers: list[tuple[int, bytes]]) -> tuple[Any, list[int]]:
    """A real HTTP server on 127.0.0.1 answering ``answers`` in turn (the last one forever)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    served: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, body = answers[min(len(served), len(answers) - 1)]
            served.append(status)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, served


def test_smoke_through_a_balancer_retries_only_while_no_replica_answers() -> None:
    from bundler.deploy.smoke import run_through_balancer

    spec = SmokeSpec(body='{"x": 1}', has_json=True, json={"ok": True})
    good = (200, b'{"ok": true}')
    server, served = _scripted_server([(503, b"no server"), (502, b""), good])
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = run_through_balancer(spec, url, wait=10)
        assert result.ok and served == [503, 502, 200]
    finally:
        server.shutdown()
    # A wrong answer is judged at once, never retried into a pass.
    server, served = _scripted_server([(404, b"not found"), good])
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = run_through_balancer(spec, url, wait=10)
        assert not result.ok and result.status == 404 and served == [404]
    finally:
        server.shutdown()
    # A balancer that never finds a replica: the last 503 is the failure, after the wait.
    server, served = _scripted_server([(503, b"no server")])
    try:
        start = time.monotonic()
        result = run_through_balancer(spec, f"http://127.0.0.1:{server.server_address[1]}", wait=1)
        assert not result.ok and result.status == 503 and 1 <= time.monotonic() - start < 5
        assert len(served) >= 2
    finally:
        server.shutdown()
