"""The gunicorn worker: many connections multiplexed in one thread, one request run at a time.

Each connection is read and written without blocking under its own deadlines, so slow or idle
clients cost a buffer, not the worker. Only a fully buffered request reaches the WSGI app, in
the main thread (the scoring timeout is SIGALRM), and its answer is flushed by the selector.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import selectors
import socket
import ssl
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from gunicorn.workers.base import Worker

from .http11 import ChunkedDecoder, Head, HttpError, Limits, find_head_end, parse_head

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger("airgap_runtime")

_READ_SIZE = 65536
_SEND_SIZE = 262144
_DRAIN_LIMIT = 16 * 1024 * 1024  # bytes of an unread body discarded before closing
_LINGER = 2.0  # seconds to keep reading (and dropping) after an error answer
_INTERNAL = "An unexpected internal error occurred. Check the logs for more info."
_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# Connection phases.
_HANDSHAKE = "handshake"  # TLS handshake under the header deadline
_HEAD = "head"  # reading the request line and headers (or idle between requests)
_BODY = "body"  # reading the body at the minimum rate
_WRITE = "write"  # flushing an answer
_LINGER_PHASE = "linger"  # answer sent, dropping what the client still sends, then close


def error_response(status: int, message: str, *, close: bool = True) -> bytes:
    """A complete HTTP/1.1 answer with the runtime's JSON error body ``{"message": ...}``."""
    body = json.dumps({"message": message}).encode("utf-8")
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        f"Date: {formatdate(usegmt=True)}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class _Conn:
    """One client connection and where it is in its current request."""

    __slots__ = (
        "addr",
        "body",
        "body_started",
        "chunked",
        "close_after",
        "deadline",
        "discard",
        "events",
        "head",
        "inbuf",
        "out",
        "phase",
        "received",
        "served",
        "sock",
        "tls",
    )

    def __init__(self, sock: socket.socket, addr: Any, tls: bool, now: float) -> None:
        self.sock = sock
        self.addr = addr
        self.tls = tls
        self.inbuf = bytearray()
        self.out = bytearray()
        self.phase = _HANDSHAKE if tls else _HEAD
        self.deadline = now
        self.head: Head | None = None
        self.body_started = now
        self.received = 0  # body bytes so far
        self.chunked: ChunkedDecoder | None = None
        self.body: bytearray | None = None
        self.close_after = False
        self.discard = 0  # body bytes the client still sends that nobody reads
        self.served = 0  # requests answered on this connection
        self.events = 0


class _Request:
    """What gunicorn's pre_request/post_request hooks read of a request."""

    def __init__(self, head: Head) -> None:
        self.method = head.method
        self.uri = head.target
        self.path = head.path
        self.query = head.query
        self.version = head.version
        self.headers = list(head.headers)


class _Response:
    """What gunicorn's post_request hook reads of an answer."""

    def __init__(self, status: str, headers: list[tuple[str, str]], length: int) -> None:
        self.status = status
        self.status_code = int(status.split(" ", 1)[0])
        self.headers = headers
        self.sent = length
        self.response_length = length


class _StartResponse:
    """The WSGI start_response callable for one request."""

    def __init__(self) -> None:
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.written: list[bytes] = []

    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None and self.status is not None:
            raise exc_info[1].with_traceback(exc_info[2])
        self.status = status
        self.headers = list(headers)
        return self.written.append


class AirgapWorker(Worker):  # type: ignore[misc]  # gunicorn ships no types
    """A selector loop over the listening sockets and every open connection."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings: Settings | None = getattr(self.app, "settings", None)
        self._settings = settings
        self.ssl_context: ssl.SSLContext | None = getattr(self.app, "ssl_context", None)
        self._quitting = False
        self._conns: dict[int, _Conn] = {}
        self._date = ""
        self._date_at = 0.0

    # ---- signals ------------------------------------------------------------------------

    def handle_quit(self, sig: int, frame: Any) -> None:
        # SIGINT/SIGQUIT: leave now. The flag tells the request loop not to take the
        # SystemExit that gunicorn raises here for one raised by run().
        self._quitting = True
        super().handle_quit(sig, frame)

    def handle_abort(self, sig: int, frame: Any) -> None:
        self._quitting = True
        super().handle_abort(sig, frame)

    # ---- the loop -----------------------------------------------------------------------

    def run(self) -> None:
        s = self._settings
        self._header_timeout = s.header_timeout if s else 10.0
        self._body_timeout = s.body_timeout if s else 10.0
        self._min_rate = s.min_body_rate if s else 4096
        self._write_timeout = s.write_timeout if s else 30.0
        self._keepalive = s.keepalive_timeout if s else 5.0
        self._max_conns = s.max_connections if s else 256
        self._max_body = s.max_request_bytes if s else 100 * 1024 * 1024
        self._limits = Limits(
            line=self.cfg.limit_request_line or 8190,
            fields=self.cfg.limit_request_fields or 100,
            field_size=self.cfg.limit_request_field_size or 8190,
        )
        self._multiprocess = self.cfg.workers > 1
        self._sel = selectors.DefaultSelector()
        for listener in self.sockets:
            listener.setblocking(False)
            self._sel.register(listener, selectors.EVENT_READ, listener)
        self._sel.register(self.PIPE[0], selectors.EVENT_READ, None)
        stop_by: float | None = None
        try:
            while True:
                self.notify()
                now = time.monotonic()
                if not self.alive and stop_by is None:
                    stop_by = now + float(self.cfg.graceful_timeout)
                    self._begin_stop()
                if stop_by is not None and (not self._conns or now >= stop_by):
                    break
                if self.ppid != os.getppid():
                    self.log.info("Parent changed, shutting down: %s", self)
                    break
                for key, mask in self._sel.select(self._select_timeout(now)):
                    data = key.data
                    if data is None:
                        self._drain_pipe()
                    elif isinstance(data, _Conn):
                        self._on_event(data, mask)
                    elif self.alive:
                        self._accept(data)
                self._expire(time.monotonic())
        finally:
            for conn in list(self._conns.values()):
                self._close(conn)
            self._sel.close()

    def _select_timeout(self, now: float) -> float:
        timeout = 1.0  # the heartbeat and the parent check run at least once a second
        for conn in self._conns.values():
            timeout = min(timeout, conn.deadline - now)
        return max(timeout, 0.0)

    def _drain_pipe(self) -> None:
        try:
            while os.read(self.PIPE[0], 4096):
                pass
        except OSError:
            pass

    def _begin_stop(self) -> None:
        for listener in self.sockets:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(listener)
        for conn in list(self._conns.values()):
            conn.close_after = True
            if conn.phase in (_HEAD, _HANDSHAKE) and not conn.inbuf:
                self._close(conn)  # idle: nothing in flight

    def _accept(self, listener: Any) -> None:
        # One connection per readiness event, not as many as are waiting: the workers share
        # the listener, and with keep-alive a connection stays with the worker that took it,
        # so a greedy accept would leave one worker with most of the clients and the other
        # idle. The listener stays readable, so the next select comes back at once (and a
        # worker busy in run() is not in select, so the idle one takes the next).
        for _ in range(1):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.log.error("cannot accept a connection: %s", e)
                    return
                raise
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if len(self._conns) >= self._max_conns:
                self._refuse(sock)
                continue
            tls = self.ssl_context is not None
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(
                    sock, server_side=True, do_handshake_on_connect=False
                )
            conn = _Conn(sock, addr, tls, time.monotonic())
            conn.deadline = conn.body_started + self._header_timeout
            self._conns[sock.fileno()] = conn
            self._set_events(conn, selectors.EVENT_READ)
            if tls:
                self._handshake(conn)

    def _refuse(self, sock: socket.socket) -> None:
        """Over the connection cap: one 503 if the socket takes it at once, then close."""
        if self.ssl_context is None:
            with contextlib.suppress(OSError):
                sock.send(
                    error_response(
                        503,
                        f"the server has {self._max_conns} open connections per worker, its "
                        "limit; retry later",
                    )
                )
        self.log.warning("connection cap of %d reached: refused a connection", self._max_conns)
        sock.close()

    # ---- per-connection I/O -------------------------------------------------------------

    def _set_events(self, conn: _Conn, events: int) -> None:
        if conn.events == events:
            return
        if conn.events == 0:
            self._sel.register(conn.sock, events, conn)
        elif events == 0:
            self._sel.unregister(conn.sock)
        else:
            self._sel.modify(conn.sock, events, conn)
        conn.events = events

    def _close(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if conn.events:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(conn.sock)
            conn.events = 0
        self._conns.pop(fd, None)
        with contextlib.suppress(OSError):
            conn.sock.close()

    def _on_event(self, conn: _Conn, mask: int) -> None:
        try:
            if conn.phase == _HANDSHAKE:
                self._handshake(conn)
            elif conn.phase == _WRITE:
                self._flush(conn)
            else:
                self._read(conn)
        except (ConnectionError, ssl.SSLError, OSError):
            self._close(conn)

    def _handshake(self, conn: _Conn) -> None:
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._set_events(conn, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._set_events(conn, selectors.EVENT_WRITE)
            return
        except (ssl.SSLError, OSError) as e:
            # Plain HTTP to the TLS port, an old protocol, or a client that went away.
            self.log.info("TLS handshake with %s failed: %s", _peer(conn.addr), e)
            self._close(conn)
            return
        conn.phase = _HEAD
        self._set_events(conn, selectors.EVENT_READ)
        if sock.pending():
            self._read(conn)

    def _recv(self, conn: _Conn) -> bytes | None:
        """Bytes available now (b"" at EOF), or None if none are."""
        try:
            data = conn.sock.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None
        except ssl.SSLError:
            return b""
        if conn.tls and data:
            sock = conn.sock
            assert isinstance(sock, ssl.SSLSocket)
            while sock.pending():  # decrypted bytes the selector cannot see
                more = sock.recv(_READ_SIZE)
                if not more:
                    break
                data += more
        return data

    def _read(self, conn: _Conn) -> None:
        data = self._recv(conn)
        if data is None:
            return
        if not data:
            self._close(conn)
            return
        now = time.monotonic()
        if conn.phase == _LINGER_PHASE:
            conn.discard -= len(data)
            if conn.discard <= 0:
                self._close(conn)
            return
        if conn.phase == _HEAD and not conn.inbuf:
            conn.deadline = now + self._header_timeout  # the request's first byte
        elif conn.phase == _BODY and not self._min_rate:
            conn.deadline = now + self._body_timeout  # no rate: a body may pause this long
        conn.inbuf += data
        self._advance(conn, now)

    def _advance(self, conn: _Conn, now: float) -> None:
        """Parse what is buffered; run the app once a request is complete."""
        try:
            if conn.phase == _HEAD:
                end = find_head_end(conn.inbuf, self._limits)
                if end < 0:
                    return
                head = parse_head(bytes(conn.inbuf[:end]), self._limits)
                del conn.inbuf[:end]
                self._start_body(conn, head, now)
                if conn.phase != _BODY:
                    return
            if conn.phase == _BODY and not self._body_complete(conn):
                return
        except HttpError as e:
            self._fail(conn, e.status, e.message)
            return
        self._serve(conn)

    def _start_body(self, conn: _Conn, head: Head, now: float) -> None:
        conn.head = head
        conn.received = 0
        conn.body_started = now
        conn.deadline = now + self._body_timeout
        conn.phase = _BODY
        conn.chunked = None
        conn.body = None
        if head.content_length is not None and head.content_length > self._max_body:
            # The app answers 413 with the request's ids; the body is never read.
            conn.body = bytearray()
            conn.discard = head.content_length
            conn.close_after = True
            self._serve(conn)
            return
        if head.chunked:
            conn.chunked = ChunkedDecoder(self._max_body)
        if head.expect_continue and (head.chunked or head.content_length):
            conn.out += _CONTINUE
            self._try_send(conn)

    def _body_complete(self, conn: _Conn) -> bool:
        head = conn.head
        assert head is not None
        if conn.chunked is not None:
            try:
                pos = conn.chunked.feed(conn.inbuf, 0)
            except HttpError as e:
                if e.status == 413:
                    conn.discard = _DRAIN_LIMIT
                    raise HttpError(
                        413, f"request body is larger than the limit of {self._max_body} bytes"
                    ) from None
                raise
            del conn.inbuf[:pos]
            conn.received = len(conn.chunked.body)
            if not conn.chunked.done:
                return False
            conn.body = conn.chunked.body
            return True
        need = head.content_length or 0
        conn.received = min(len(conn.inbuf), need)
        if len(conn.inbuf) < need:
            return False
        conn.body = conn.inbuf[:need]
        del conn.inbuf[:need]
        return True

    def _try_send(self, conn: _Conn) -> None:
        """Send what the socket takes now; a rest is flushed later by the selector."""
        while conn.out:
            try:
                sent = conn.sock.send(conn.out[:_SEND_SIZE])
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
                return
            except ssl.SSLWantReadError:
                return
            del conn.out[:sent]

    # ---- running a request --------------------------------------------------------------

    def _serve(self, conn: _Conn) -> None:
        head = conn.head
        assert head is not None and conn.body is not None
        started = time.monotonic()
        self.nr += 1
        if self.nr >= self.max_requests:
            self.log.info("Autorestarting worker after current request.")
            self.alive = False
        keep = head.keep_alive and self._keepalive > 0 and self.alive and not conn.close_after
        payload = self._call_app(conn, head, bytes(conn.body), keep)
        conn.body = None
        conn.head = None
        conn.out += payload[0]
        conn.close_after = not payload[1]
        conn.served += 1
        # The time run() took is not the other clients' fault: move their deadlines on.
        spent = time.monotonic() - started
        if spent > 0.05:
            for other in self._conns.values():
                if other is not conn:
                    other.deadline += spent
        conn.phase = _WRITE
        conn.deadline = time.monotonic() + self._write_timeout
        self._flush(conn)

    def _call_app(self, conn: _Conn, head: Head, body: bytes, keep: bool) -> tuple[bytes, bool]:
        """Run the WSGI app; return (the answer's bytes, whether to keep the connection)."""
        environ = self._environ(conn, head, body)
        request = _Request(head)
        try:
            self.cfg.pre_request(self, request)
        except Exception:
            self.log.exception("pre_request hook failed")
        start = _StartResponse()
        result: Iterable[bytes] | None = None
        try:
            result = self.wsgi(environ, start)
            chunks = list(start.written)
            chunks.extend(result)
            data = b"".join(chunks)
            if start.status is None:
                raise RuntimeError("the app returned without calling start_response")
            status, headers = start.status, start.headers
        except BaseException:
            if self._quitting:
                raise
            # Whatever escapes the app (SystemExit or KeyboardInterrupt from run() too) is
            # answered like any internal error, and the worker goes on serving.
            log.error("request failed:\n%s", traceback.format_exc().rstrip())
            status = "500 Internal Server Error"
            headers = [("Content-Type", "application/json")]
            data = json.dumps({"message": _INTERNAL}).encode("utf-8")
            keep = False
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    self.log.exception("closing the app's answer failed")
        out, length = self._render(head, status, headers, data, keep)
        if out is None:
            self.log.error("the app sent an invalid header: answered 500")
            status = "500 Internal Server Error"
            headers = [("Content-Type", "application/json")]
            data = json.dumps({"message": _INTERNAL}).encode("utf-8")
            keep = False
            out, length = self._render(head, status, headers, data, keep)
            assert out is not None
        try:
            self.cfg.post_request(self, request, environ, _Response(status, headers, length))
        except Exception:
            self.log.exception("post_request hook failed")
        return out, keep

    def _render(
        self,
        head: Head,
        status: str,
        headers: list[tuple[str, str]],
        data: bytes,
        keep: bool,
    ) -> tuple[bytes | None, int]:
        code = status[:3]
        lines = [f"HTTP/1.1 {status}\r\n", f"Date: {self._http_date()}\r\n"]
        has_length = False
        for name, value in headers:
            if not _header_ok(name, value):
                return None, 0
            lower = name.lower()
            if lower in ("connection", "transfer-encoding", "keep-alive", "date"):
                continue  # framing and connection handling are the worker's
            if lower == "content-length":
                has_length = True
            lines.append(f"{name}: {value}\r\n")
        no_body = code in ("204", "304") or code.startswith("1")
        if not has_length and not no_body:
            lines.append(f"Content-Length: {len(data)}\r\n")
        lines.append("Connection: keep-alive\r\n\r\n" if keep else "Connection: close\r\n\r\n")
        raw = "".join(lines).encode("latin-1")
        if head.method == "HEAD" or no_body:
            return raw, 0
        return raw + data, len(data)

    def _http_date(self) -> str:
        now = time.time()
        if now - self._date_at >= 1.0 or not self._date:
            self._date = formatdate(now, usegmt=True)
            self._date_at = float(int(now))
        return self._date

    def _environ(self, conn: _Conn, head: Head, body: bytes) -> dict[str, Any]:
        try:
            local = conn.sock.getsockname()
        except OSError:
            local = ("", 0)
        if isinstance(local, tuple):
            server_name, server_port = str(local[0]), str(local[1])
        else:
            server_name, server_port = str(local), ""
        environ: dict[str, Any] = {
            "REQUEST_METHOD": head.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": head.path,
            "QUERY_STRING": head.query,
            "RAW_URI": head.target,
            "SERVER_PROTOCOL": f"HTTP/{head.version[0]}.{head.version[1]}",
            "SERVER_NAME": server_name,
            "SERVER_PORT": server_port,
            "SERVER_SOFTWARE": "airgap_runtime",
            "REMOTE_ADDR": _peer(conn.addr),
            "REMOTE_PORT": str(conn.addr[1]) if isinstance(conn.addr, tuple) else "",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "https" if conn.tls else "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.input_terminated": True,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": self._multiprocess,
            "wsgi.run_once": False,
        }
        for name, value in head.headers:
            if "_" in name:
                continue  # X_Foo would pass for X-Foo in the environ (gunicorn drops them too)
            if name == "CONTENT-TYPE":
                environ["CONTENT_TYPE"] = value
                continue
            if name == "CONTENT-LENGTH":
                environ["CONTENT_LENGTH"] = value
                continue
            key = "HTTP_" + name.replace("-", "_")
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        return environ

    def _fail(self, conn: _Conn, status: int, message: str) -> None:
        """Answer a request the worker refuses itself, then linger and close."""
        self.log.warning("refused a request from %s: %d %s", _peer(conn.addr), status, message)
        conn.out += error_response(status, message)
        conn.close_after = True
        conn.head = None
        conn.body = None
        if not conn.discard:
            conn.discard = _DRAIN_LIMIT
        conn.phase = _WRITE
        conn.deadline = time.monotonic() + self._write_timeout
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        before = len(conn.out)
        self._try_send(conn)
        if conn.out:
            if len(conn.out) < before:
                conn.deadline = time.monotonic() + self._write_timeout  # progress
            self._set_events(conn, selectors.EVENT_WRITE)
            return
        if conn.phase != _WRITE:
            return
        if conn.close_after or not self.alive:
            self._linger(conn)
            return
        # Kept alive: wait for the next request (maybe already buffered: pipelining).
        conn.phase = _HEAD
        conn.deadline = time.monotonic() + (self._header_timeout if conn.inbuf else self._keepalive)
        self._set_events(conn, selectors.EVENT_READ)
        if conn.inbuf:
            self._advance(conn, time.monotonic())

    def _linger(self, conn: _Conn) -> None:
        """Half-close and drop what the client still sends, so it reads the whole answer
        instead of a reset; close at EOF, after _DRAIN_LIMIT bytes or _LINGER seconds."""
        unread = len(conn.inbuf)
        conn.inbuf = bytearray()
        if conn.tls or conn.discard - unread <= 0:
            self._close(conn)
            return
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.discard = min(conn.discard, _DRAIN_LIMIT) - unread
        conn.phase = _LINGER_PHASE
        conn.deadline = time.monotonic() + _LINGER
        self._set_events(conn, selectors.EVENT_READ)

    # ---- deadlines ----------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        for conn in list(self._conns.values()):
            if conn.phase == _BODY and self._min_rate and conn.received:
                # Each MIN_BODY_RATE bytes received buys one second past the grace period.
                allowed = conn.body_started + self._body_timeout + conn.received / self._min_rate
                conn.deadline = max(conn.deadline, allowed)
            if now < conn.deadline:
                continue
            if conn.phase == _HEAD and conn.inbuf:
                self._timeout_answer(conn, "request headers did not arrive in time")
            elif conn.phase == _BODY:
                self._timeout_answer(conn, "request body arrived too slowly")
            else:  # idle keep-alive, handshake, stalled reader, linger: just close
                self._close(conn)

    def _timeout_answer(self, conn: _Conn, message: str) -> None:
        self.log.warning("closing a connection from %s: %s", _peer(conn.addr), message)
        conn.out += error_response(408, message)
        self._try_send(conn)
        self._close(conn)


def _header_ok(name: str, value: str) -> bool:
    return not any(c in name for c in "\r\n:\0 ") and not any(c in value for c in "\r\n\0")


def _peer(addr: Any) -> str:
    if isinstance(addr, tuple) and addr:
        return str(addr[0])
    return str(addr) if addr else "-"
