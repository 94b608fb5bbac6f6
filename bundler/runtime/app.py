"""The WSGI application: routes, limits, the scoring timeout, request ids and the access log."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import time
import traceback
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .entry import EntryScript

log = logging.getLogger("airgap_runtime")

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
# A client's request id is echoed only if it is short and plain: it is written to the log and
# into response headers, so anything else (newlines, quotes) would let a client forge lines.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,100}")
_STATUS = {
    200: "200 OK",
    400: "400 Bad Request",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    413: "413 Content Too Large",
    500: "500 Internal Server Error",
    504: "504 Gateway Timeout",
}
_HEALTHY = b"Healthy"

StartResponse = Any  # the WSGI start_response callable
# A body over the limit is still read and discarded up to this many bytes (16 MiB), so the
# client receives the 413 instead of a connection reset; past it the connection is dropped.
_DRAIN_LIMIT = 16 * 1024 * 1024


class ScoringTimeout(BaseException):
    """Raised inside run() by SIGALRM. A BaseException, so a bare ``except Exception`` in a
    scoring script does not swallow the cut-off."""


def _error(message: str, request_id: str) -> bytes:
    return json.dumps({"message": message, "request_id": request_id}).encode("utf-8")


def _printable(text: str, limit: int = 200) -> str:
    if len(text) > limit:
        text = text[:limit] + "..."
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _drain(stream: Any, size: int) -> None:
    """Read and drop up to ``size`` bytes (at most _DRAIN_LIMIT) of a refused body."""
    left = min(size, _DRAIN_LIMIT)
    while left > 0:
        chunk = stream.read(min(left, 65536))
        if not chunk:
            return
        left -= len(chunk)


def request_headers(environ: dict[str, Any]) -> dict[str, str]:
    """The request's headers as Azure ML passes them to run(): a dict, Title-Case names."""
    headers = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers[key[5:].replace("_", "-").title()] = value
    if environ.get("CONTENT_TYPE"):
        headers["Content-Type"] = environ["CONTENT_TYPE"]
    if environ.get("CONTENT_LENGTH"):
        headers["Content-Length"] = environ["CONTENT_LENGTH"]
    return headers


class ScoringApp:
    """The WSGI callable one worker serves: ``GET /`` health and ``POST /score``.

    The scoring timeout uses SIGALRM, so the app must run in a worker's main thread (the
    runtime uses gunicorn's sync workers); ``install_timeout_handler`` sets it up.
    """

    def __init__(
        self,
        entry: EntryScript,
        *,
        scoring_timeout_ms: int,
        max_request_bytes: int,
        access_log_fd: int | None = 1,
    ) -> None:
        self._run = entry.run
        self._wants_headers = entry.wants_headers
        self._timeout_s = scoring_timeout_ms / 1000.0
        self._timeout_ms = scoring_timeout_ms
        self._max = max_request_bytes
        self._log_fd = access_log_fd
        self._armed = False

    def install_timeout_handler(self) -> None:
        """Make SIGALRM cut off a run() that is past SCORING_TIMEOUT_MS."""
        if self._timeout_s > 0:
            signal.signal(signal.SIGALRM, self._on_alarm)

    def _on_alarm(self, signum: int, frame: object) -> None:
        # An alarm that lands after run() returned is stale: ignore it.
        if self._armed:
            raise ScoringTimeout

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        rid = environ.get("HTTP_X_REQUEST_ID") or environ.get("HTTP_X_MS_REQUEST_ID")
        if rid is None or _REQUEST_ID.fullmatch(rid) is None:
            rid = str(uuid.uuid4())
        path = environ.get("PATH_INFO") or "/"
        method = environ["REQUEST_METHOD"]
        extra: list[tuple[str, str]] | None = None
        if path == "/score":
            if method == "POST":
                status, body, ctype = self._score(environ, rid)
            elif method == "OPTIONS":
                status, body, ctype = 200, b"", TEXT
                extra = [("Allow", "POST, OPTIONS")]
            else:
                status, body, ctype = 405, _error("use POST on /score", rid), JSON
                extra = [("Allow", "POST, OPTIONS")]
        elif path == "/":
            if method in ("GET", "HEAD"):
                status, body, ctype = 200, _HEALTHY, TEXT
            else:
                status, body, ctype = 405, _error("use GET on /", rid), JSON
                extra = [("Allow", "GET, HEAD")]
        else:
            status, body, ctype = 404, _error(f"no route {_printable(path)}", rid), JSON

        headers = [
            ("Content-Type", ctype),
            ("Content-Length", str(len(body))),
            ("x-request-id", rid),
            ("x-ms-request-id", rid),
        ]
        if extra:
            headers.extend(extra)
        start_response(_STATUS[status], headers)
        if self._log_fd is not None:
            self._access_log(environ, method, path, status, len(body), rid, started)
        return [b""] if method == "HEAD" else [body]

    def _access_log(
        self,
        environ: dict[str, Any],
        method: str,
        path: str,
        status: int,
        size: int,
        rid: str,
        started: float,
    ) -> None:
        ms = (time.perf_counter() - started) * 1000.0
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        line = (
            f"{stamp}Z access {environ.get('REMOTE_ADDR', '-')} {_printable(method, 16)} "
            f"{_printable(path)} {status} {size}B {ms:.3f}ms id={rid}\n"
        )
        # One os.write of a short line on the raw fd: lines from concurrent workers never
        # interleave (pipe writes under PIPE_BUF are atomic) and nothing is buffered at a crash.
        try:
            assert self._log_fd is not None
            os.write(self._log_fd, line.encode("utf-8", "replace"))
        except OSError:
            pass  # a closed log must not fail the request

    def _read_body(self, environ: dict[str, Any]) -> bytes | int:
        """The body, or the status code to answer with instead."""
        stream = environ["wsgi.input"]
        length = environ.get("CONTENT_LENGTH")
        if length:
            try:
                size = int(length)
            except ValueError:
                return 400
            if size < 0:
                return 400
            if size > self._max:
                _drain(stream, size)
                return 413
            data: bytes = stream.read(size)
            return data
        # No Content-Length (chunked): read one byte past the limit to know it was passed.
        data = stream.read(self._max + 1)
        if len(data) > self._max:
            _drain(stream, _DRAIN_LIMIT)
            return 413
        return data

    def _score(self, environ: dict[str, Any], rid: str) -> tuple[int, bytes, str]:
        body = self._read_body(environ)
        if isinstance(body, int):
            if body == 413:
                message = f"request body is larger than the limit of {self._max} bytes"
            else:
                message = "Content-Length is not a non-negative number"
            return body, _error(message, rid), JSON
        # Azure ML hands run() the body as text; undecodable bytes are replaced, as Flask does.
        text = body.decode("utf-8", "replace")
        try:
            result = self._call_run(text, environ)
        except ScoringTimeout:
            log.error("run() cut off after %d ms (request %s)", self._timeout_ms, rid)
            return 504, _error(f"Scoring timeout after {self._timeout_ms} ms", rid), JSON
        except Exception as e:
            log.error("run() raised (request %s):\n%s", rid, traceback.format_exc().rstrip())
            return 500, _error(f"run() raised {type(e).__name__}: {e}", rid), JSON
        try:
            out = json.dumps(result).encode("utf-8")
        except (TypeError, ValueError) as e:
            log.error("run() returned a value that is not JSON (request %s): %s", rid, e)
            message = f"run() returned a value that cannot be sent as JSON: {e}"
            return 500, _error(message, rid), JSON
        return 200, out, JSON

    def _call_run(self, text: str, environ: dict[str, Any]) -> Any:
        run = self._run
        if self._timeout_s <= 0:
            if self._wants_headers:
                return run(text, request_headers=request_headers(environ))
            return run(text)
        try:
            try:
                self._armed = True
                # Repeats every second after the first expiry, in case run() swallows one.
                signal.setitimer(signal.ITIMER_REAL, self._timeout_s, 1.0)
                if self._wants_headers:
                    return run(text, request_headers=request_headers(environ))
                return run(text)
            finally:
                self._armed = False
                signal.setitimer(signal.ITIMER_REAL, 0.0, 0.0)
        except ScoringTimeout:
            # The alarm may have landed inside the finally clause, before the timer was off.
            self._armed = False
            signal.setitimer(signal.ITIMER_REAL, 0.0, 0.0)
            raise


def make_app(entry: EntryScript, settings_timeout_ms: int, max_request_bytes: int) -> ScoringApp:
    """Build the app for one worker and arm its timeout handler (main thread only)."""
    app = ScoringApp(
        entry, scoring_timeout_ms=settings_timeout_ms, max_request_bytes=max_request_bytes
    )
    app.install_timeout_handler()
    return app
