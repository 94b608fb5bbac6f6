"""The runtime's worker against slow, abusive and malformed clients, keep-alive and graceful
stop: a real server process, real sockets (tests/entry_scripts/harness.py)."""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from entry_scripts.harness import HERE, MODEL_DIR, Server

from bundler.runtime.http11 import ChunkedDecoder, HttpError, Limits, parse_head

PROBE = json.dumps({"action": "echo"}).encode()


def _start(workdir: Path, script: str = "probe.py", **env: str) -> Server:
    server = Server(
        workdir,
        {
            "AZUREML_ENTRY_SCRIPT": str(HERE / script),
            "AZUREML_MODEL_DIR": str(MODEL_DIR),
            **env,
        },
    )
    try:
        server.wait_healthy()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = _start(
        tmp_path_factory.mktemp("conn"),
        AIRGAP_HEADER_TIMEOUT="2",
        AIRGAP_BODY_TIMEOUT="1",
        AIRGAP_MIN_BODY_RATE="1000",
        AIRGAP_MAX_CONNECTIONS="100",
    )
    yield srv
    srv.stop()


def _connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def _read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP answer read off ``sock`` (Content-Length framed)."""
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    body = resp.read()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


class _Stream:
    """Hands http.client the same buffered reader for each answer on a connection."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader

    def makefile(self, mode: str) -> Any:
        return self

    def close(self) -> None:  # http.client closes its reader after each body
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


def _score_ok(server: Server) -> float:
    started = time.perf_counter()
    status, _, body = server.score(b'{"action": "sleep", "seconds": 0}', timeout=10)
    assert status == 200, body
    return time.perf_counter() - started


def test_normal_requests_pass_64_slow_header_clients(server: Server) -> None:
    baseline = [_score_ok(server) for _ in range(20)]
    slow = [_connect(server) for _ in range(64)]
    try:
        for sock in slow:
            sock.sendall(b"POST /score HTTP/1.1\r\n")
        stop = threading.Event()

        def trickle() -> None:  # one header byte per connection every 0.1 s
            while not stop.wait(0.1):
                for sock in slow:
                    with contextlib.suppress(OSError):
                        sock.sendall(b"X")

        feeder = threading.Thread(target=trickle, daemon=True)
        feeder.start()
        try:
            under_attack = [_score_ok(server) for _ in range(40)]
        finally:
            stop.set()
            feeder.join()
        # Every normal request was answered while all 64 slow clients were still connected
        # (well inside their 2 s header deadline): a worker that served connections one at a
        # time would have held each of them until a slow client's deadline passed. The
        # latency target itself (p99 under 3x) is measured by bench/bench_runtime.py.
        assert max(under_attack) < 1.0, (under_attack, baseline)
        # Past the header deadline every slow client gets a JSON 408 and is closed.
        time.sleep(2.5)
        for sock in slow[:4]:
            status, headers, body = _read_answer(sock)
            assert status == 408
            assert headers["content-type"] == "application/json"
            assert "headers" in json.loads(body)["message"]
    finally:
        for sock in slow:
            sock.close()
    _score_ok(server)


def test_slow_body_is_cut_off(server: Server) -> None:
    with _connect(server) as sock:
        sock.sendall(
            b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n" + b"{" * 100
        )
        started = time.monotonic()
        # 100 bytes at 1000 B/s buy 0.1 s past the 1 s grace period.
        status, _, body = _read_answer(sock)
        elapsed = time.monotonic() - started
    assert status == 408
    assert json.loads(body) == {"message": "request body arrived too slowly"}
    assert 0.9 < elapsed < 3.0


def test_body_at_the_minimum_rate_is_served(server: Server) -> None:
    payload = json.dumps({"action": "echo", "pad": "x" * 1500}).encode()
    with _connect(server) as sock:
        sock.sendall(
            b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        )
        # 1.5 s for ~1500 bytes: past the 1 s grace, but each byte buys 1 ms.
        for i in range(0, len(payload), 300):
            sock.sendall(payload[i : i + 300])
            time.sleep(0.3)
        status, _, body = _read_answer(sock)
    assert status == 200, body


def test_connection_cap_answers_503_json(tmp_path: Path) -> None:
    srv = _start(tmp_path, AIRGAP_MAX_CONNECTIONS="3", AIRGAP_HEADER_TIMEOUT="5")
    held = [_connect(srv) for _ in range(3)]
    try:
        for sock in held:
            sock.sendall(b"GET / HTTP/1.1\r\n")  # open and unfinished
        time.sleep(0.3)
        with _connect(srv) as extra:
            status, headers, body = _read_answer(extra)
        assert status == 503
        assert headers["content-type"] == "application/json"
        assert "3 open connections" in json.loads(body)["message"]
        for sock in held:
            sock.close()
        time.sleep(0.3)
        assert _score_ok(srv) < 5
    finally:
        for sock in held:
            sock.close()
        srv.stop()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n folded: x\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"POST /score HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST /score HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST /score HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST /score HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431),
    ],
)
def test_malformed_requests_answer_json(server: Server, raw: bytes, status: int) -> None:
    with _connect(server) as sock:
        sock.sendall(raw)
        got, headers, body = _read_answer(sock)
        assert got == status
        assert headers["content-type"] == "application/json"
        assert headers["connection"] == "close"
        assert isinstance(json.loads(body)["message"], str)
        assert sock.recv(10) == b""  # closed after the answer


def test_system_exit_and_keyboard_interrupt_in_run_answer_500(server: Server) -> None:
    for action in ("exit", "interrupt"):
        status, headers, body = server.score(json.dumps({"action": action}).encode())
        assert status == 500
        assert headers["content-type"] == "application/json"
        assert json.loads(body) == {
            "message": "An unexpected internal error occurred. Check the logs for more info."
        }
    # The same worker (one worker: the pid in the environment answer) is still serving.
    assert _score_ok(server) < 5
    assert "SystemExit" in server.stderr and "KeyboardInterrupt" in server.stderr


def test_keep_alive_serves_many_requests_on_one_connection(server: Server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", "/")
        first = conn.getresponse()
        assert first.read() == b"Healthy"
        assert first.getheader("Connection") == "keep-alive"
        sock = conn.sock
        for i in range(5):
            body = json.dumps({"action": "echo", "i": i}).encode()
            conn.request("POST", "/score", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200
            resp.read()
        assert conn.sock is sock  # never reconnected
    finally:
        conn.close()


def test_pipelined_and_chunked_requests(server: Server) -> None:
    body = b'{"action": "sleep", "seconds": 0}'
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    with _connect(server) as sock:
        sock.sendall(
            b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunked + b"GET / HTTP/1.1\r\nHost: x\r\n"
            b"Connection: close\r\n\r\n"
        )
        stream = _Stream(sock.makefile("rb"))  # one buffer for both answers
        status, _, got = _read_answer(stream)  # type: ignore[arg-type]
        assert (status, json.loads(got)) == (200, {"slept": 0})
        status, headers, got = _read_answer(stream)  # type: ignore[arg-type]
        assert (status, got, headers["connection"]) == (200, b"Healthy", "close")


def test_expect_100_continue(server: Server) -> None:
    body = b'{"action": "sleep", "seconds": 0}'
    with _connect(server) as sock:
        sock.sendall(
            b"POST /score HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        status, _, got = _read_answer(sock)
    assert status == 200 and json.loads(got) == {"slept": 0}


def test_keepalive_off_answers_connection_close(tmp_path: Path) -> None:
    srv = _start(tmp_path, AIRGAP_KEEPALIVE_TIMEOUT="0")
    try:
        with _connect(srv) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, _ = _read_answer(sock)
            assert (status, headers["connection"]) == (200, "close")
            assert sock.recv(10) == b""
    finally:
        srv.stop()


def test_graceful_stop_finishes_in_flight_request(tmp_path: Path) -> None:
    srv = _start(tmp_path)
    idle = _connect(srv)
    result: list[tuple[int, dict[str, str], bytes]] = []
    worker = threading.Thread(
        target=lambda: result.append(srv.score(b'{"action": "sleep", "seconds": 1.5}'))
    )
    worker.start()
    time.sleep(0.5)
    srv.proc.send_signal(signal.SIGTERM)
    worker.join(10)
    assert result and result[0][0] == 200 and json.loads(result[0][2]) == {"slept": 1.5}
    assert srv.wait_exit(30) == 0
    assert idle.recv(10) == b""  # the idle connection was closed, not left hanging
    idle.close()


# ---- the parser on its own ---------------------------------------------------------------


def test_parse_head_reads_the_request() -> None:
    head = parse_head(
        b"POST /a%20b?x=1 HTTP/1.1\r\nHost: h\r\ncontent-length: 5\r\nX-Two: a\r\n\r\n",
        Limits(),
    )
    assert (head.method, head.path, head.query, head.target) == (
        "POST",
        "/a b",
        "x=1",
        "/a%20b?x=1",
    )
    assert head.content_length == 5 and not head.chunked and head.keep_alive
    assert ("X-TWO", "a") in head.headers
    assert not parse_head(b"GET / HTTP/1.0\r\n\r\n", Limits()).keep_alive
    with pytest.raises(HttpError) as e:
        parse_head(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", Limits())
    assert e.value.status == 400


def test_chunked_decoder_incremental_and_limit() -> None:
    raw = b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nTrailer: x\r\n\r\n"
    decoder = ChunkedDecoder(100)
    buf = bytearray()
    pos = 0
    for byte in raw:  # one byte at a time
        buf.append(byte)
        pos = decoder.feed(buf, pos)
    assert decoder.done and bytes(decoder.body) == b"abcde" and pos == len(raw)
    with pytest.raises(HttpError) as e:
        ChunkedDecoder(4).feed(b"5\r\nabcde\r\n0\r\n\r\n", 0)
    assert e.value.status == 413


def test_oversized_body_gets_the_apps_413(server: Server) -> None:
    with _connect(server) as sock:
        sock.sendall(
            b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 209715200\r\n\r\n" + b"x" * 1000
        )
        status, headers, body = _read_answer(sock)
    assert status == 413
    assert "larger than the limit" in json.loads(body)["message"]
    assert headers.get("x-request-id")


def test_a_client_that_never_reads_stalls_no_one(tmp_path: Path) -> None:
    srv = _start(tmp_path, AIRGAP_WRITE_TIMEOUT="1")
    reader = _connect(srv)
    try:
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.setblocking(False)
        pipelined = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 50_000  # ~7 MB of answers
        sent = 0
        with contextlib.suppress(BlockingIOError):
            while sent < len(pipelined):
                sent += reader.send(pipelined[sent : sent + 65536])
        assert sent > 0
        time.sleep(0.3)  # the worker now holds answers the client does not read
        started = time.perf_counter()
        for _ in range(10):
            _score_ok(srv)
        assert time.perf_counter() - started < 2
        time.sleep(2.0)  # no progress for AIRGAP_WRITE_TIMEOUT: the server disconnects it
        reader.setblocking(True)
        reader.settimeout(5)
        # Closed: EOF after what was already in flight, or a reset. A connection still open
        # would time out here instead.
        with contextlib.suppress(ConnectionResetError):
            while reader.recv(1 << 20):
                pass
    finally:
        reader.close()
        srv.stop()


def test_connection_settings_are_read_and_checked(tmp_path: Path) -> None:
    from bundler.runtime import config

    base = {"AZUREML_ENTRY_SCRIPT": str(HERE / "probe.py")}
    defaults = config.load_settings(base, tmp_path)
    assert (defaults.header_timeout, defaults.min_body_rate, defaults.max_connections) == (
        10.0,
        4096,
        256,
    )
    assert defaults.keepalive_timeout == 5.0 and defaults.tls_cert is None
    given = config.load_settings(
        {
            **base,
            "AIRGAP_HEADER_TIMEOUT": "2.5",
            "AIRGAP_KEEPALIVE_TIMEOUT": "0",
            "AIRGAP_MAX_CONNECTIONS": "7",
            "AIRGAP_MIN_BODY_RATE": "0",
        },
        tmp_path,
    )
    assert (given.header_timeout, given.keepalive_timeout, given.max_connections) == (2.5, 0, 7)
    for name, value in (
        ("AIRGAP_HEADER_TIMEOUT", "soon"),
        ("AIRGAP_HEADER_TIMEOUT", "0"),
        ("AIRGAP_WRITE_TIMEOUT", "inf"),
        ("AIRGAP_MAX_CONNECTIONS", "0"),
        ("AIRGAP_TLS_CERT", str(HERE / "probe.py")),
    ):
        with pytest.raises(config.ConfigError, match=name.split("_CERT")[0]):
            config.load_settings({**base, name: value}, tmp_path)
