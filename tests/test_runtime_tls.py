"""TLS in the runtime's worker with Python's ssl module as the client: the protocol floor, a
plain-HTTP client on the TLS port, handshakes that never finish, and bad key material."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from _tlscert import make_cert
from entry_scripts.harness import HERE, MODEL_DIR, Server

from bundler.runtime.tls import server_context


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_cert(tmp_path_factory.mktemp("cert"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, cert: tuple[Path, Path]) -> Iterator[Server]:
    srv = Server(
        tmp_path_factory.mktemp("tls"),
        {
            "AZUREML_ENTRY_SCRIPT": str(HERE / "probe.py"),
            "AZUREML_MODEL_DIR": str(MODEL_DIR),
            "AIRGAP_TLS_CERT": str(cert[0]),
            "AIRGAP_TLS_KEY": str(cert[1]),
            "AIRGAP_HEADER_TIMEOUT": "2",
        },
    )
    try:
        _wait_https(srv, cert[0])
        yield srv
    finally:
        srv.stop()


def _client(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def _wait_https(srv: Server, cert: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert srv.proc.poll() is None, srv.stderr
        try:
            if _get(srv, cert, "/")[0] == 200:
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(srv.stderr)


def _get(
    srv: Server, cert: Path, path: str, body: bytes | None = None
) -> tuple[int, bytes, str | None]:
    conn = http.client.HTTPSConnection("localhost", srv.port, context=_client(cert), timeout=10)
    try:
        conn.request("POST" if body is not None else "GET", path, body)
        resp = conn.getresponse()
        version = conn.sock.version() if conn.sock else None
        return resp.status, resp.read(), version
    finally:
        conn.close()


def test_https_serves_health_and_score(server: Server, cert: tuple[Path, Path]) -> None:
    assert _get(server, cert[0], "/")[:2] == (200, b"Healthy")
    status, body, version = _get(server, cert[0], "/score", b'{"action": "size"}')
    assert (status, json.loads(body)) == (200, {"size": 18})
    assert version == "TLSv1.3"


def test_keep_alive_over_tls(server: Server, cert: tuple[Path, Path]) -> None:
    conn = http.client.HTTPSConnection("localhost", server.port, context=_client(cert[0]))
    try:
        for _ in range(3):
            conn.request("POST", "/score", b'{"action": "size"}')
            resp = conn.getresponse()
            assert resp.status == 200 and json.loads(resp.read()) == {"size": 18}
        first = conn.sock
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"Healthy"
        assert conn.sock is first
    finally:
        conn.close()


def _handshake(port: int, context: ssl.SSLContext) -> str:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return str(tls.version())


def _legacy_client(cert: Path, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(cert))
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer what it is told to
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is, on purpose
        context.minimum_version = version
        context.maximum_version = version
    return context


def test_tls_1_2_is_accepted_and_1_1_refused(server: Server, cert: tuple[Path, Path]) -> None:
    assert _handshake(server.port, _legacy_client(cert[0], ssl.TLSVersion.TLSv1_2)) == "TLSv1.2"
    with pytest.raises(ssl.SSLError) as e:
        _handshake(server.port, _legacy_client(cert[0], ssl.TLSVersion.TLSv1_1))
    # Refused by the server (the alert it sent), not by this client's own policy.
    assert "ALERT_PROTOCOL_VERSION" in str(e.value), e.value


def test_plain_http_to_the_tls_port_fails_cleanly(server: Server, cert: tuple[Path, Path]) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            data = sock.recv(4096)
        except ConnectionResetError:
            data = b""
    assert not data.startswith(b"HTTP/")  # closed (at most a TLS alert), never served
    assert _get(server, cert[0], "/")[0] == 200


def test_stalled_handshakes_do_not_block_others(server: Server, cert: tuple[Path, Path]) -> None:
    stalled = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(64)]
    try:
        started = time.perf_counter()
        for _ in range(10):
            assert _get(server, cert[0], "/score", b'{"action": "size"}')[0] == 200
        assert time.perf_counter() - started < 5
        time.sleep(2.5)  # past the 2 s header deadline: all closed by the server
        for sock in stalled[:4]:
            sock.settimeout(5)
            assert sock.recv(10) == b""
    finally:
        for sock in stalled:
            sock.close()


def test_context_floor_and_options(cert: tuple[Path, Path]) -> None:
    context = server_context(*cert)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all("ECDHE" in c["name"] or "DHE" in c["name"] for c in tls12)
    assert all(c["aead"] for c in tls12)


def test_mismatched_key_is_a_config_error(tmp_path: Path, cert: tuple[Path, Path]) -> None:
    _, other_key = make_cert(tmp_path / "other")
    proc = subprocess.run(
        [sys.executable, "-m", "bundler.runtime", "--port", "0"],
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
            "AZUREML_ENTRY_SCRIPT": str(HERE / "probe.py"),
            "AIRGAP_TLS_CERT": str(cert[0]),
            "AIRGAP_TLS_KEY": str(other_key),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "cannot load the TLS certificate" in proc.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "bundler.runtime", "--port", "0"],
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
            "AZUREML_ENTRY_SCRIPT": str(HERE / "probe.py"),
            "AIRGAP_TLS_CERT": str(cert[0]),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2
    assert "AIRGAP_TLS_KEY" in missing.stderr
