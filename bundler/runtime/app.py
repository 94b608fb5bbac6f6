"""The WSGI application: routes, limits, the scoring timeout, request ids and the access log."""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import signal
import sys
import time
import traceback
import uuid
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qsl

from . import auth as _auth
from .interface import NO_DEFAULT, PLAIN, RAW

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .auth import KeyAuth
    from .cors import CorsPolicy
    from .entry import EntryScript
    from .metrics import Metrics
    from .swagger import SwaggerDocs

log = logging.getLogger("airgap_runtime")

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"  # what Flask answers an automatic OPTIONS with
# Azure ML refuses request ids longer than this with 431 (they go into headers and logs).
HEADER_LIMIT = 100
_STATUS = {
    200: "200 OK",
    400: "400 Bad Request",
    401: "401 Unauthorized",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    413: "413 Content Too Large",
    415: "415 Unsupported Media Type",
    431: "431 Request Header Fields Too Large",
    500: "500 Internal Server Error",
}
_HEALTHY = b"Healthy"
# Azure ML's messages, word for word: clients and their tests match on them.
NOT_FOUND = (
    "The requested URL was not found on the server. If you entered the URL manually please "
    "check your spelling and try again."
)
NOT_ALLOWED = "The method is not allowed for the requested URL."
RUN_FAILED = "An unexpected error occurred in scoring script. Check the logs for more info."
INTERNAL = "An unexpected internal error occurred. Check the logs for more info."
_ALLOW_SCORE = "GET, HEAD, OPTIONS, POST"
_ALLOW_GET = "GET, HEAD, OPTIONS"  # Flask lists the same three, in an arbitrary order
_ROUTE_METHODS = {
    "/score": ("GET", "HEAD", "OPTIONS", "POST"),
    "/": ("GET", "HEAD", "OPTIONS"),
    "/swagger.json": ("GET", "HEAD", "OPTIONS"),
}
_FAILED = ("x-ms-run-function-failed", "False")
_FAILED_TRUE = ("x-ms-run-function-failed", "True")

StartResponse = Any  # the WSGI start_response callable
# A body over the limit is still read and discarded up to this many bytes (16 MiB), so the
# client receives the 413 instead of a connection reset; past it the connection is dropped.
_DRAIN_LIMIT = 16 * 1024 * 1024


class ScoringTimeout(BaseException):
    """Raised inside run() by SIGALRM. A BaseException, so a bare ``except Exception`` in a
    scoring script does not swallow the cut-off."""


class _Refused(Exception):
    """The request cannot reach run(): answer ``status`` with ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(message: str, detail: str | None = None) -> bytes:
    # Azure ML's error body: {"message": ...} and nothing else (the id is in the headers).
    # ``detail`` (a traceback) is added only with AIRGAP_DEBUG_ERRORS=1.
    if detail is None:
        return json.dumps({"message": message}).encode("utf-8")
    return json.dumps({"message": message, "detail": detail}).encode("utf-8")


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


def request_ids(environ: dict[str, Any]) -> tuple[str, str, str, str | None]:
    """Azure ML's three ids: (x-request-id, x-ms-request-id, x-ms-client-request-id, error).

    x-request-id is the client's or a new UUID4. x-ms-client-request-id is the client's, else
    its (deprecated) x-ms-request-id. x-ms-request-id is the client's, else the client request
    id, else the request id. Empty ones are not sent. Any longer than 100 characters: 431.
    """
    rid = environ.get("HTTP_X_REQUEST_ID")
    if rid is None:
        rid = str(uuid.uuid4())
    elif len(rid) > HEADER_LIMIT:
        return "", "", "", f"x-request-id must not exceed {HEADER_LIMIT} characters"
    legacy = environ.get("HTTP_X_MS_REQUEST_ID", "")
    client = environ.get("HTTP_X_MS_CLIENT_REQUEST_ID", "")
    if legacy:
        client = client or legacy
    else:
        legacy = client or rid
    if len(legacy) > HEADER_LIMIT or len(client) > HEADER_LIMIT:
        names = "x-ms-request-id and x-ms-client-request-id"
        return rid, "", "", f"{names} must not exceed {HEADER_LIMIT} characters"
    return rid, legacy, client, None


def parse_query(environ: dict[str, Any]) -> dict[str, Any]:
    """GET /score's query as Azure ML reads it: every value parsed as JSON if it is JSON (else
    kept as text), a name given more than once becomes a list."""
    raw = environ.get("QUERY_STRING", "")
    # WSGI carries the query as latin-1; the URL's bytes are UTF-8.
    text = raw.encode("latin-1", "replace").decode("utf-8", "replace")
    grouped: dict[str, list[str]] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        grouped.setdefault(key, []).append(value)
    parsed: dict[str, Any] = {}
    for key, values in grouped.items():
        items = [_json_or_text(v) for v in values]
        parsed[key] = items[0] if len(items) == 1 else items
    return parsed


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except (ValueError, RecursionError):  # deeply nested input is text, not a crash
        return value


def _is_json_type(content_type: str) -> bool:
    # werkzeug's Request.is_json: application/json or application/*+json, parameters ignored.
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == JSON or (mime.startswith("application/") and mime.endswith("+json"))


class ScoringApp:
    """The WSGI callable one worker serves: ``GET /`` health, ``/score``, ``/swagger.json``.

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
        swagger: SwaggerDocs | None = None,
        cors: CorsPolicy | None = None,
    ) -> None:
        self._run = entry.run
        self._wants_headers = entry.wants_headers
        self._iface = entry.interface
        self._kind = entry.interface.kind
        self._timeout_s = scoring_timeout_ms / 1000.0
        self._timeout_ms = scoring_timeout_ms
        self._max = max_request_bytes
        self._log_fd = access_log_fd
        self._armed = False
        self._swagger = swagger
        self._cors = cors
        self._auth: KeyAuth | None = None
        self._metrics: Metrics | None = None
        self._debug = False

    def secure(
        self,
        *,
        auth: KeyAuth | None = None,
        metrics: Metrics | None = None,
        debug_errors: bool = False,
    ) -> None:
        """Turn on key auth (auth.py), metrics (metrics.py) and error details in bodies."""
        self._auth = auth
        self._metrics = metrics
        self._debug = debug_errors

    def install_timeout_handler(self) -> None:
        """Make SIGALRM cut off a run() that is past SCORING_TIMEOUT_MS."""
        if self._timeout_s > 0:
            signal.signal(signal.SIGALRM, self._on_alarm)

    def _on_alarm(self, signum: int, frame: object) -> None:
        # An alarm that lands after run() returned is stale: ignore it.
        if self._armed:
            raise ScoringTimeout

    # ---- dispatch -----------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        metrics = self._metrics
        if metrics is not None:
            metrics.request_started()
        try:
            return self._route(environ, start_response)
        except Exception:
            # A failure outside run()'s own handling (a Response that fails to render, a bug):
            # the client gets the generic message, the log the traceback with the request id.
            return self._internal_error(environ, start_response)
        finally:
            if metrics is not None:
                metrics.request_ended()

    def _route(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        path = environ.get("PATH_INFO") or "/"
        method = environ["REQUEST_METHOD"]
        rid, legacy, client, refused = request_ids(environ)
        extra: list[tuple[str, str]] = []
        ctype: str | None
        routed = path in _ROUTE_METHODS
        if (
            self._auth is not None
            and not _auth.is_open(method, path)
            and not self._auth.allows(environ.get("HTTP_AUTHORIZATION"))
        ):
            # Before routing: without a key nothing is learned, not even which paths exist.
            status, body, ctype = 401, _auth.REFUSED_BODY, JSON
            challenge = _auth.challenge(environ.get("HTTP_AUTHORIZATION"))
            extra += [_FAILED, ("WWW-Authenticate", challenge)]
        elif refused is not None and method in _ROUTE_METHODS.get(path, ()):
            # Azure ML checks the ids before its route handlers only: a request no route takes
            # gets its 404 or 405 below, with the ids left out.
            status, body, ctype = 431, _error(refused), JSON
            extra.append(_FAILED)
        elif path == "/score":
            if self._kind == RAW and method in ("POST", "GET", "HEAD", "OPTIONS"):
                # A raw script answers every method the route takes, as in Azure ML.
                status, body, ctype, extra = self._score_raw(environ, rid)
            elif method == "POST" and self._kind == PLAIN:
                status, body, ctype, extra = self._score(environ, rid)
            elif method in ("POST", "GET"):
                status, body, ctype, extra = self._score_other(environ, method, rid)
            elif method == "OPTIONS":
                status, body, ctype = 200, b"", HTML
                extra.append(_FAILED)
            elif method == "HEAD":
                # Azure ML routes HEAD like GET, then refuses it in its input parser.
                status, body, ctype = 405, _error("Method not allowed"), JSON
                extra.append(_FAILED)
            else:
                routed = False
                status, body, ctype = 405, _error(NOT_ALLOWED), JSON
                extra += [_FAILED, ("Allow", _ALLOW_SCORE)]
        elif path == "/":
            if method in ("GET", "HEAD"):
                status, body, ctype = 200, _HEALTHY, TEXT
            elif method == "OPTIONS":
                status, body, ctype = 200, b"", HTML
                extra.append(("Allow", _ALLOW_GET))
            else:
                routed = False
                status, body, ctype = 405, _error(NOT_ALLOWED), JSON
                extra += [_FAILED, ("Allow", _ALLOW_GET)]
        elif path == "/swagger.json":
            status, body, ctype, extra = self._swagger_route(environ, method)
            routed = status != 405
        else:
            routed = False
            status, body, ctype = 404, _error(NOT_FOUND), JSON
            extra.append(_FAILED)

        if ctype is not None:
            headers = [("Content-Type", ctype), ("Content-Length", str(len(body))), *extra]
        else:  # a Response from run(): its own headers, with the length of what is sent
            headers = [h for h in extra if h[0].lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        self._add_ids(headers, environ, rid, legacy, client)
        # flask-cors leaves a response alone that already carries its own CORS answer.
        if (
            routed
            and self._cors is not None
            and not any(h[0].lower() == "access-control-allow-origin" for h in headers)
        ):
            headers += self._cors_headers(environ, method)
        start_response(_status_line(status), headers)
        if self._log_fd is not None:
            self._access_log(environ, method, path, status, len(body), rid, started)
        if self._metrics is not None:
            self._metrics.observe(path, method, status, time.perf_counter() - started)
        return [b""] if method == "HEAD" else [body]

    def _internal_error(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        started = time.perf_counter()
        rid, legacy, client, _ = request_ids(environ)
        detail = traceback.format_exc().rstrip()
        log.error("request failed (request %s):\n%s", rid or "-", detail)
        body = _error(INTERNAL, detail if self._debug else None)
        headers = [("Content-Type", JSON), ("Content-Length", str(len(body))), _FAILED]
        self._add_ids(headers, environ, rid, legacy, client)
        start_response(_status_line(500), headers, sys.exc_info())
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "-")
        if self._log_fd is not None:
            self._access_log(environ, method, path, 500, len(body), rid, started)
        if self._metrics is not None:
            self._metrics.observe(path, method, 500, time.perf_counter() - started)
        return [b""] if method == "HEAD" else [body]

    @staticmethod
    def _add_ids(
        headers: list[tuple[str, str]], environ: dict[str, Any], rid: str, legacy: str, client: str
    ) -> None:
        if rid:
            headers.append(("x-request-id", rid))
        if legacy:
            headers.append(("x-ms-request-id", legacy))
        if client:
            headers.append(("x-ms-client-request-id", client))
        trace = environ.get("HTTP_TRACEID")
        if trace is not None:
            headers.append(("TraceId", trace))  # Office services' tracing header, echoed

    def _cors_headers(self, environ: dict[str, Any], method: str) -> list[tuple[str, str]]:
        assert self._cors is not None
        return self._cors.headers(
            method,
            environ.get("HTTP_ORIGIN"),
            environ.get("HTTP_ACCESS_CONTROL_REQUEST_METHOD"),
            environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS"),
            environ.get("HTTP_ACCESS_CONTROL_REQUEST_PRIVATE_NETWORK"),
        )

    def _swagger_route(
        self, environ: dict[str, Any], method: str
    ) -> tuple[int, bytes, str, list[tuple[str, str]]]:
        if method == "OPTIONS":
            return 200, b"", HTML, [("Allow", _ALLOW_GET)]
        if method not in ("GET", "HEAD"):
            return 405, _error(NOT_ALLOWED), JSON, [_FAILED, ("Allow", _ALLOW_GET)]
        if self._swagger is None:
            return 404, _error(NOT_FOUND), JSON, [_FAILED]
        query = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        versions = [v for k, v in query if k == "version"]
        doc, message = self._swagger.lookup(versions[0] if versions else None)
        if doc is None:
            return 404, _error(message), JSON, [_FAILED]
        return 200, doc, JSON, [_FAILED]

    # ---- the access log -----------------------------------------------------------------

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
            f"{_printable(path)} {status} {size}B {ms:.3f}ms id={_printable(rid or '-', 100)}\n"
        )
        # One os.write of a short line on the raw fd: lines from concurrent workers never
        # interleave (pipe writes under PIPE_BUF are atomic) and nothing is buffered at a crash.
        try:
            assert self._log_fd is not None
            os.write(self._log_fd, line.encode("utf-8", "replace"))
        except OSError:
            pass  # a closed log must not fail the request

    # ---- /score -------------------------------------------------------------------------

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

    def _body_or_refuse(self, environ: dict[str, Any]) -> bytes:
        body = self._read_body(environ)
        if body == 413:
            raise _Refused(413, f"request body is larger than the limit of {self._max} bytes")
        if isinstance(body, int):
            raise _Refused(400, "Content-Length is not a non-negative number")
        return body

    def _score(
        self, environ: dict[str, Any], rid: str
    ) -> tuple[int, bytes, str | None, list[tuple[str, str]]]:
        """POST /score for a plain run(raw_data): the hot path, kept short."""
        try:
            body = self._body_or_refuse(environ)
            try:
                # Azure ML refuses a body that is not UTF-8 (400); nothing is replaced.
                text = body.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _Refused(400, f"Input cannot be decoded as UTF-8: {e}") from None
        except _Refused as e:
            return e.status, _error(e.message), JSON, [_FAILED]
        return self._answer(self._plain_call(text, environ), rid, environ)

    def _score_other(
        self, environ: dict[str, Any], method: str, rid: str
    ) -> tuple[int, bytes, str | None, list[tuple[str, str]]]:
        """GET /score (any script) and POST /score for an inference-schema run()."""
        if self._kind == PLAIN:  # GET: the query as a JSON object text, passed like a body
            text = json.dumps(parse_query(environ))
            return self._answer(self._plain_call(text, environ), rid, environ)
        try:
            kwargs = self._schema_input(environ, method)
        except _Refused as e:
            return e.status, _error(e.message), JSON, [_FAILED]
        if self._wants_headers:
            kwargs["request_headers"] = request_headers(environ)
        return self._answer(functools.partial(self._run, **kwargs), rid, environ)

    def _schema_input(self, environ: dict[str, Any], method: str) -> dict[str, Any]:
        if method == "GET":
            fields = parse_query(environ)
        else:
            if not _is_json_type(environ.get("CONTENT_TYPE", "")):
                raise _Refused(415, "Expects Content-Type to be application/json")
            body = self._body_or_refuse(environ)
            try:
                # Decoded as UTF-8 first: json.loads(bytes) would also take UTF-16 and UTF-32,
                # and a body that is not UTF-8 is refused, never reinterpreted.
                fields = json.loads(body.decode("utf-8"))
            except UnicodeDecodeError as e:
                # Azure ML answers 500 here; a client error it is.
                raise _Refused(400, f"Input cannot be decoded as UTF-8: {e}") from None
            except RecursionError:
                raise _Refused(400, "POST body is nested too deeply to be read as JSON") from None
            except ValueError as e:
                if body:
                    raise _Refused(400, f"POST body could not be decoded as JSON: {e}") from None
                raise _Refused(400, "POST body is empty. Expecting a JSON dictionary.") from None
            if not isinstance(fields, dict):
                raise _Refused(400, "POST body should be a JSON dictionary.")
        kwargs: dict[str, Any] = {}
        for name, default in self._iface.params:
            value = fields.get(name, default)
            if value is NO_DEFAULT:
                raise _Refused(400, f"A value is not provided for the {name!r} parameter.")
            kwargs[name] = value
        return kwargs

    def _timed_out(self, rid: str) -> tuple[int, bytes, str, list[tuple[str, str]]]:
        log.error("run() cut off after %d ms (request %s)", self._timeout_ms, rid)
        if self._metrics is not None:
            self._metrics.run_failed("timeout")
        message = f"Scoring timeout after {self._timeout_ms} ms"
        return 500, _error(message), JSON, [_FAILED_TRUE]

    def _run_raised(self, rid: str) -> tuple[int, bytes, str, list[tuple[str, str]]]:
        # The exception's text stays in the log: it may carry data the client must not see.
        detail = traceback.format_exc().rstrip()
        log.error("run() raised (request %s):\n%s", rid, detail)
        if self._metrics is not None:
            self._metrics.run_failed("exception")
        return 500, _error(RUN_FAILED, detail if self._debug else None), JSON, [_FAILED_TRUE]

    def _result(
        self, result: Any, started: float, rid: str, environ: dict[str, Any]
    ) -> tuple[int, bytes, str | None, list[tuple[str, str]]]:
        elapsed = ("x-ms-run-fn-exec-ms", f"{(time.perf_counter() - started) * 1000.0:.3f}")
        # Any script may answer with an AMLResponse (or any werkzeug/Flask Response). werkzeug
        # is loaded only if the script loaded it: otherwise the result cannot be one.
        if isinstance(result, _Flat):
            return result.status, result.body, None, [*result.headers, elapsed]
        if result is None:
            out = b"{}"  # Azure ML sends an empty object for None, not null
        else:
            try:
                out = json.dumps(result).encode("utf-8")
            except (TypeError, ValueError) as e:
                log.error("run() returned a value that is not JSON (request %s): %s", rid, e)
                detail = f"{type(e).__name__}: {e}" if self._debug else None
                return 500, _error(INTERNAL, detail), JSON, [_FAILED]
        return 200, out, JSON, [_FAILED, elapsed]

    def _answer(
        self, call: Callable[[], Any], rid: str, environ: dict[str, Any]
    ) -> tuple[int, bytes, str | None, list[tuple[str, str]]]:
        """Call run() (``call``) under the scoring timeout and turn what it gave into an answer.

        A Response run() returned is rendered inside the same guard: a body generator that
        raises or blocks is run()'s failure (500, or the timeout), never an escaped error.
        """
        started = time.perf_counter()
        try:
            result = self._timed(lambda: _materialize(call(), environ))
        except ScoringTimeout:
            return self._timed_out(rid)
        except Exception:
            return self._run_raised(rid)
        return self._result(result, started, rid, environ)

    def _plain_call(self, text: str, environ: dict[str, Any]) -> Callable[[], Any]:
        if self._wants_headers:
            return functools.partial(self._run, text, request_headers=request_headers(environ))
        return functools.partial(self._run, text)

    def _timed(self, func: Callable[[], Any]) -> Any:
        """``func()`` with SIGALRM armed for SCORING_TIMEOUT_MS (off when it is 0)."""
        if self._timeout_s <= 0:
            return func()
        try:
            try:
                self._armed = True
                # Repeats every second after the first expiry, in case run() swallows one.
                signal.setitimer(signal.ITIMER_REAL, self._timeout_s, 1.0)
                return func()
            finally:
                self._armed = False
                signal.setitimer(signal.ITIMER_REAL, 0.0, 0.0)
        except ScoringTimeout:
            # The alarm may have landed inside the finally clause, before the timer was off.
            self._armed = False
            signal.setitimer(signal.ITIMER_REAL, 0.0, 0.0)
            raise

    # ---- @rawhttp -----------------------------------------------------------------------

    def _score_raw(
        self, environ: dict[str, Any], rid: str
    ) -> tuple[int, bytes, str | None, list[tuple[str, str]]]:
        """/score for a @rawhttp run(request), any method the route takes: run() gets an
        AMLRequest (werkzeug's Request) and may answer with a Response or any JSON value."""
        from . import rawhttp

        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if length < 0:
            return 400, _error("Content-Length is not a non-negative number"), JSON, [_FAILED]
        if length > self._max:
            _drain(environ["wsgi.input"], length)
            message = f"request body is larger than the limit of {self._max} bytes"
            return 413, _error(message), JSON, [_FAILED]
        if not length and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            # werkzeug would cut a chunked body at the limit without a word: read it here,
            # refuse it whole if too large, and hand werkzeug the bytes with their length.
            try:
                body = self._body_or_refuse(environ)
            except _Refused as e:
                return e.status, _error(e.message), JSON, [_FAILED]
            environ = {**environ, "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body))}
        kwargs: dict[str, Any] = {self._iface.input_name: rawhttp.make_request(environ, self._max)}
        if self._wants_headers:
            kwargs["request_headers"] = request_headers(environ)
        return self._answer(functools.partial(self._run, **kwargs), rid, environ)


class _Flat(NamedTuple):
    """A Response run() returned, rendered: status, whole body, headers."""

    status: int
    body: bytes
    headers: list[tuple[str, str]]


def _materialize(result: Any, environ: dict[str, Any]) -> Any:
    """Render a werkzeug/Flask Response (AMLResponse) run() returned; other values as they are.

    werkzeug is loaded only if the script loaded it: otherwise the result cannot be one.
    """
    if "werkzeug" in sys.modules:
        from . import rawhttp

        if rawhttp.is_response(result):
            return _Flat(*rawhttp.flatten(result, environ))
    return result


def _status_line(code: int) -> str:
    line = _STATUS.get(code)
    if line is None:
        try:
            line = f"{code} {HTTPStatus(code).phrase}"
        except ValueError:
            line = f"{code} Unknown"
    return line


def make_app(
    entry: EntryScript,
    settings_timeout_ms: int,
    max_request_bytes: int,
    *,
    swagger: SwaggerDocs | None = None,
    cors: CorsPolicy | None = None,
) -> ScoringApp:
    """Build the app for one worker and arm its timeout handler (main thread only)."""
    app = ScoringApp(
        entry,
        scoring_timeout_ms=settings_timeout_ms,
        max_request_bytes=max_request_bytes,
        swagger=swagger,
        cors=cors,
    )
    app.install_timeout_handler()
    return app
