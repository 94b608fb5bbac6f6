"""Key auth and error bodies, over real HTTP against the real server (bundler/runtime/auth.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest
from entry_scripts.harness import HERE, MODEL_DIR, Server, http

from bundler.runtime import auth

PROBE = str(HERE / "probe.py")


def _key() -> str:
    return secrets.token_urlsafe(32)  # 43 characters


def _write_keys(path: Path, *keys: str, mode: int = 0o600) -> Path:
    """Rewrite ``path`` in place (same inode, as a bind mount needs), then set ``mode``."""
    with open(path, "w") as f:
        f.write("".join(f"{k}\n" for k in keys))
    os.chmod(path, mode)
    return path


def _start(tmp_path: Path, keys: Path, **extra: str) -> Server:
    env = {
        "AZUREML_ENTRY_SCRIPT": PROBE,
        "AZUREML_MODEL_DIR": str(MODEL_DIR),
        "AIRGAP_AUTH_KEY_FILE": str(keys),
        **extra,
    }
    server = Server(tmp_path, env)
    server.wait_healthy()
    return server


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _sleep0(server: Server, headers: dict[str, str]) -> int:
    return server.score(b'{"action": "sleep", "seconds": 0}', headers)[0]


def _process_tree(root: int) -> list[int]:
    pids = [root]
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == root:
                pids.append(int(pid))
    return pids


def test_key_accepted_refused_and_open_routes(tmp_path: Path) -> None:
    one, two = _key(), _key()
    keys = _write_keys(tmp_path / "keys", one, two)
    server = _start(tmp_path, keys, AML_CORS_ORIGINS="https://app.example")
    try:
        # Both keys of a rotation are accepted; the scheme is case-insensitive (RFC 7235).
        assert _sleep0(server, _bearer(one)) == 200
        assert _sleep0(server, _bearer(two)) == 200
        assert _sleep0(server, {"Authorization": f"bearer {one}"}) == 200

        refusals = {
            "none": {},
            "wrong key": _bearer(_key()),
            "prefix of a key": _bearer(one[:-1]),
            "key and more": _bearer(one + "x"),
            "wrong scheme": {"Authorization": f"Basic {one}"},
            "no scheme": {"Authorization": one},
            "empty bearer": {"Authorization": "Bearer "},
        }
        for what, headers in refusals.items():
            status, got, body = server.score(b'{"action": "sleep", "seconds": 0}', headers)
            assert status == 401, what
            assert got["content-type"] == "application/json", what
            assert json.loads(body) == {
                "message": 'Unauthorized: send the endpoint key as "Authorization: Bearer <key>".'
            }, what
            assert got["www-authenticate"].startswith("Bearer "), what
            assert got["x-request-id"], what
        status, got, _ = server.score(b"{}", _bearer(_key()))
        assert got["www-authenticate"] == 'Bearer realm="airgap", error="invalid_token"'
        assert server.score(b"{}")[1]["www-authenticate"] == 'Bearer realm="airgap"'

        # Open: the health route (probes carry no key) and OPTIONS (CORS preflight).
        assert http("GET", server.url + "/")[::2] == (200, b"Healthy")
        assert http("HEAD", server.url + "/")[0] == 200
        status, got, _ = http(
            "OPTIONS",
            server.url + "/score",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert status == 200
        assert got["access-control-allow-origin"] == "https://app.example"
        # A browser can read the 401 itself (CORS headers on it).
        status, got, _ = http(
            "POST", server.url + "/score", b"{}", {"Origin": "https://app.example"}
        )
        assert status == 401
        assert got["access-control-allow-origin"] == "https://app.example"

        # Covered: the swagger document, GET /score, and paths that do not exist (no 404
        # without a key: nothing is learned about the routes).
        assert http("GET", server.url + "/swagger.json")[0] == 401
        assert http("GET", server.url + "/swagger.json", headers=_bearer(one))[0] in (200, 404)
        assert http("GET", server.url + "/score?action=sleep&seconds=0")[0] == 401
        assert http("GET", server.url + "/nowhere")[0] == 401
        assert http("GET", server.url + "/nowhere", headers=_bearer(one))[0] == 404
        assert http("POST", server.url + "/", b"")[0] == 401
    finally:
        assert server.stop() == 0
    # The keys are nowhere in the logs (access log on stdout, server log on stderr).
    for text in (server.stdout, server.stderr):
        assert one not in text and two not in text
    assert " 401 " in server.stdout
    assert "key auth on" in server.stderr


def test_key_is_not_in_any_process_command_line_or_environment(tmp_path: Path) -> None:
    key = _key()
    keys = _write_keys(tmp_path / "keys", key)
    server = _start(tmp_path, keys, WORKER_COUNT="2")
    try:
        deadline = time.monotonic() + 30
        while len(pids := _process_tree(server.proc.pid)) < 3:  # the master and two workers
            assert time.monotonic() < deadline, pids
            time.sleep(0.05)
        listing = subprocess.run(
            ["ps", "-e", "-ww", "-o", "pid=,args="], capture_output=True, text=True, check=True
        ).stdout
        assert str(server.proc.pid) in listing
        assert key not in listing
        for pid in pids:
            for name in ("cmdline", "environ"):
                data = Path(f"/proc/{pid}/{name}").read_bytes()
                assert key.encode() not in data, (pid, name)
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert f"AIRGAP_AUTH_KEY_FILE={keys}".encode() in environ
    finally:
        server.stop()


def test_rotation_rereads_the_file_and_a_bad_rewrite_keeps_the_keys(tmp_path: Path) -> None:
    old, new = _key(), _key()
    keys = _write_keys(tmp_path / "keys", old)
    server = _start(tmp_path, keys, WORKER_COUNT="2")

    def settle(headers: dict[str, str], want: int) -> None:
        # Each worker re-reads within a second; ask until both have (many requests in a row).
        deadline = time.monotonic() + 10
        streak = 0
        while streak < 12:
            assert time.monotonic() < deadline, f"still not {want} with {headers}"
            streak = streak + 1 if _sleep0(server, headers) == want else 0

    try:
        assert _sleep0(server, _bearer(new)) == 401
        _write_keys(keys, old, new)  # 1. add the new key beside the old one
        settle(_bearer(new), 200)
        assert _sleep0(server, _bearer(old)) == 200
        _write_keys(keys, new)  # 2. clients moved to the new key: drop the old one
        settle(_bearer(old), 401)
        assert _sleep0(server, _bearer(new)) == 200
        # A rewrite that fails the checks (a short key) keeps the keys in force, logged.
        _write_keys(keys, "too-short")
        time.sleep(1.5)
        settle(_bearer(new), 200)
        _write_keys(keys, new, mode=0o644)  # readable by others: refused the same way
        time.sleep(1.5)
        settle(_bearer(new), 200)
    finally:
        assert server.stop() == 0
    assert "fewer than the minimum" in server.stderr
    assert "mode 0644" in server.stderr
    assert "the keys read before stay in force" in server.stderr
    assert "key file" in server.stderr and "re-read" in server.stderr
    for text in (server.stdout, server.stderr):
        assert old not in text and new not in text and "too-short" not in text


@pytest.mark.parametrize(
    ("content", "mode", "message"),
    [
        ("{key}\n", 0o644, "mode 0644 lets its group or others read or change it"),
        ("{key}\n", 0o640, "chmod 600"),
        ("short-key\n", 0o600, "fewer than the minimum of 32"),
        ("{key}\n{key}\n{key}\n", 0o600, "at most 2"),
        ("# only a comment\n\n", 0o600, "no key in the file"),
        ("{key} {key}\n", 0o600, "printable ASCII without spaces"),
    ],
)
def test_an_unusable_key_file_stops_the_start(
    tmp_path: Path, content: str, mode: int, message: str
) -> None:
    key = _key()
    path = tmp_path / "keys"
    path.write_text(content.format(key=key))
    path.chmod(mode)
    env = {"AZUREML_ENTRY_SCRIPT": PROBE, "AIRGAP_AUTH_KEY_FILE": str(path)}
    server = Server(tmp_path, env)
    assert server.wait_exit(30) == 2
    assert "configuration error: AIRGAP_AUTH_KEY_FILE:" in server.stderr
    assert message in server.stderr
    assert key not in server.stderr and "short-key" not in server.stderr


def test_a_missing_key_file_stops_the_start(tmp_path: Path) -> None:
    env = {"AZUREML_ENTRY_SCRIPT": PROBE, "AIRGAP_AUTH_KEY_FILE": str(tmp_path / "absent")}
    server = Server(tmp_path, env)
    assert server.wait_exit(30) == 2
    assert "cannot open the key file" in server.stderr


def test_every_key_is_compared_whatever_matches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = _key(), _key()
    checker = auth.KeyAuth(str(_write_keys(tmp_path / "keys", one, two)))
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    for presented, allowed in ((one, True), (two, True), (_key(), False), ("", False)):
        calls.clear()
        assert checker.allows(f"Bearer {presented}") is allowed
        # Both keys, each time, as fixed-length digests: no early exit, no length leak.
        assert len(calls) == 2
        assert {len(a) for a, _ in calls} == {len(b) for _, b in calls} == {32}
        assert calls[0][0] == hashlib.sha256(presented.encode()).digest()


# ---- error bodies -------------------------------------------------------------------------


def _error_server(tmp_path: Path, **extra: str) -> Server:
    env = {"AZUREML_ENTRY_SCRIPT": PROBE, **extra}
    server = Server(tmp_path, env)
    server.wait_healthy()
    return server


def test_error_bodies_are_generic_and_the_log_has_the_detail_with_the_id(tmp_path: Path) -> None:
    server = _error_server(tmp_path)
    try:
        status, _, body = server.score(
            b'{"action": "fail", "message": "secret at /srv/private/path"}',
            {"x-request-id": "fail-1"},
        )
        assert status == 500
        assert json.loads(body) == {
            "message": "An unexpected error occurred in scoring script. Check the logs for more "
            "info."
        }
        status, _, body = server.score(b'{"action": "not_json"}', {"x-request-id": "notjson-1"})
        assert status == 500
        assert json.loads(body) == {
            "message": "An unexpected internal error occurred. Check the logs for more info."
        }
    finally:
        server.stop()
    log = server.stderr
    assert "run() raised (request fail-1):\nTraceback" in log
    assert "ValueError: secret at /srv/private/path" in log
    assert "run() returned a value that is not JSON (request notjson-1)" in log


def test_debug_errors_send_the_detail_to_the_client(tmp_path: Path) -> None:
    server = _error_server(tmp_path, AIRGAP_DEBUG_ERRORS="1")
    try:
        status, _, body = server.score(b'{"action": "fail", "message": "visible detail"}')
        answer = json.loads(body)
        assert status == 500
        assert answer["message"].startswith("An unexpected error occurred in scoring script")
        assert answer["detail"].startswith("Traceback (most recent call last):")
        assert answer["detail"].endswith("ValueError: visible detail")
        status, _, body = server.score(b'{"action": "not_json"}')
        assert status == 500
        assert "TypeError" in json.loads(body)["detail"]
    finally:
        server.stop()
    assert "AIRGAP_DEBUG_ERRORS=1: error answers carry tracebacks" in server.stderr


def test_a_response_that_fails_to_render_answers_generic_json_with_the_id_logged(
    tmp_path: Path,
) -> None:
    # The Response is rendered under run()'s own guard: its failure is run()'s failure.
    script = tmp_path / "bad_response.py"
    script.write_text(
        "from azureml.contrib.services.aml_response import AMLResponse\n"
        "def init():\n    pass\n"
        "def run(raw_data):\n"
        "    def body():\n"
        "        raise RuntimeError('secret while rendering')\n"
        "        yield b''\n"
        "    return AMLResponse(body(), 200)\n"
    )
    for debug in ("0", "1"):
        server = Server(
            tmp_path, {"AZUREML_ENTRY_SCRIPT": str(script), "AIRGAP_DEBUG_ERRORS": debug}
        )
        server.wait_healthy()
        try:
            status, headers, body = server.score(b"{}", {"x-request-id": f"render-{debug}"})
        finally:
            server.stop()
        assert status == 500
        assert headers["content-type"] == "application/json"
        assert headers["x-request-id"] == f"render-{debug}"
        answer = json.loads(body)
        assert answer["message"] == (
            "An unexpected error occurred in scoring script. Check the logs for more info."
        )
        assert headers["x-ms-run-function-failed"] == "True"
        assert ("detail" in answer) is (debug == "1")
        assert ("secret while rendering" in body.decode()) is (debug == "1")
        assert f"run() raised (request render-{debug}):\nTraceback" in server.stderr
        assert "RuntimeError: secret while rendering" in server.stderr
        assert " 500 " in server.stdout
