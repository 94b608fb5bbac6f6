"""HTTP/1.1 request parsing on buffered bytes: the request head and chunked bodies (no I/O)."""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

# RFC 9110 token characters (method and header names).
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])\Z")
# A header value may hold visible characters, spaces, tabs and obs-text; never CR, LF or NUL.
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}\Z")
_CHUNK_LINE_LIMIT = 4096  # bytes of one chunk-size line (with its extensions)


class HttpError(Exception):
    """The request cannot be served: answer ``status`` with ``message``, then close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Limits(NamedTuple):
    """Bounds on a request head (gunicorn's limit_request_* settings carry the same meaning)."""

    line: int = 4094  # bytes of the request line; longer: 414
    fields: int = 100  # header fields; more: 431
    field_size: int = 8190  # bytes of one header line; longer: 431


class Head(NamedTuple):
    """A parsed request head."""

    method: str
    target: str  # the request-target as sent (RAW_URI)
    path: str  # percent-decoded, as latin-1 text (PEP 3333)
    query: str
    version: tuple[int, int]
    headers: tuple[tuple[str, str], ...]  # (upper-case name, value), in order
    content_length: int | None  # None: no Content-Length
    chunked: bool
    keep_alive: bool  # what the client asked for (HTTP/1.1 default yes, 1.0 default no)
    expect_continue: bool


def find_head_end(buf: bytes | bytearray, limits: Limits) -> int:
    """The offset just past the blank line that ends the head in ``buf``, or -1 if more bytes
    are needed.

    Raises:
        HttpError: the head is already over a limit (414 or 431).
    """
    end = buf.find(b"\r\n\r\n")
    if end >= 0:
        return end + 4
    first = buf.find(b"\r\n")
    if first < 0 and len(buf) > limits.line + 2:
        raise HttpError(414, f"request line is longer than {limits.line} bytes")
    if len(buf) > _head_limit(limits):
        raise HttpError(431, "request header fields are too large")
    return -1


def _head_limit(limits: Limits) -> int:
    return limits.line + 2 + (limits.fields + 1) * (limits.field_size + 2) + 2


def parse_head(raw: bytes, limits: Limits) -> Head:
    """Parse a request head (request line and header fields, ending in a blank line).

    Raises:
        HttpError: malformed (400), too large (414, 431), an HTTP version other than 1.x
            (505) or a transfer coding other than chunked (501).
    """
    lines = raw.split(b"\r\n")
    # RFC 9112 2.2: ignore empty lines before the request line (a client's stray CRLF).
    while lines and lines[0] == b"":
        lines.pop(0)
    if not lines:
        raise HttpError(400, "empty request")
    line = lines[0]
    if len(line) > limits.line:
        raise HttpError(414, f"request line is longer than {limits.line} bytes")
    parts = line.split(b" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method_b, target_b, version_b = parts
    if not _TOKEN.match(method_b):
        raise HttpError(400, "malformed request method")
    match = _VERSION.match(version_b)
    if match is None:
        raise HttpError(400, "malformed HTTP version")
    version = (int(match.group(1)), int(match.group(2)))
    if version[0] != 1:
        raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are supported")
    if not target_b or _BAD_VALUE.search(target_b) or b" " in target_b or b"\t" in target_b:
        raise HttpError(400, "malformed request target")
    target = target_b.decode("latin-1")
    path_b, _, query_b = target_b.partition(b"?")
    path_b = path_b.partition(b"#")[0]
    if path_b.startswith((b"http://", b"https://")):  # absolute-form: keep the path only
        rest = path_b.split(b"//", 1)[1]
        slash = rest.find(b"/")
        path_b = rest[slash:] if slash >= 0 else b"/"
    elif not path_b.startswith(b"/") and path_b != b"*":
        raise HttpError(400, "malformed request target")

    headers: list[tuple[str, str]] = []
    fields = [x for x in lines[1:] if x]
    if len(fields) > limits.fields:
        raise HttpError(431, f"more than {limits.fields} header fields")
    lengths: set[bytes] = set()
    codings: list[bytes] = []
    connection: list[bytes] = []
    expect = b""
    for field in fields:
        if len(field) > limits.field_size:
            raise HttpError(431, f"a header field is longer than {limits.field_size} bytes")
        if field[:1] in (b" ", b"\t"):
            raise HttpError(400, "obsolete line folding in a header field")
        name_b, colon, value_b = field.partition(b":")
        if not colon or not _TOKEN.match(name_b):
            raise HttpError(400, "malformed header field")
        value_b = value_b.strip(b" \t")
        if _BAD_VALUE.search(value_b):
            raise HttpError(400, "invalid character in a header value")
        name = name_b.decode("ascii").upper()
        if name == "CONTENT-LENGTH":
            lengths.update(v.strip(b" \t") for v in value_b.split(b","))
        elif name == "TRANSFER-ENCODING":
            codings.extend(v.strip(b" \t").lower() for v in value_b.split(b",") if v.strip())
        elif name == "CONNECTION":
            connection.extend(v.strip(b" \t").lower() for v in value_b.split(b","))
        elif name == "EXPECT":
            expect = value_b.lower()
        headers.append((name, value_b.decode("latin-1")))

    content_length: int | None = None
    if lengths:
        if len(lengths) > 1 or not all(v.isdigit() for v in lengths):
            raise HttpError(400, "Content-Length is not a non-negative number")
        content_length = int(lengths.pop())
    chunked = False
    if codings:
        # Both headers at once is how requests are smuggled past proxies: refuse it.
        if content_length is not None:
            raise HttpError(400, "both Content-Length and Transfer-Encoding are set")
        if version < (1, 1):
            raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
        if codings != [b"chunked"]:
            raise HttpError(501, "only the chunked transfer coding is supported")
        chunked = True
    if expect and expect != b"100-continue":
        raise HttpError(417, "only Expect: 100-continue is supported")
    keep_alive = b"close" not in connection if version >= (1, 1) else b"keep-alive" in connection
    return Head(
        method=method_b.decode("ascii"),
        target=target,
        path=unquote_to_bytes(path_b).decode("latin-1"),
        query=query_b.decode("latin-1"),
        version=version,
        headers=tuple(headers),
        content_length=content_length,
        chunked=chunked,
        keep_alive=keep_alive,
        expect_continue=bool(expect) and version >= (1, 1),
    )


class ChunkedDecoder:
    """Decodes a chunked body incrementally from a growing buffer.

    ``feed(buf, pos)`` consumes what it can from ``buf[pos:]`` and returns the new position;
    ``done`` turns true after the last chunk and its trailers. Raises HttpError (400) on
    malformed framing and (413) once more than ``limit`` body bytes arrived.
    """

    def __init__(self, limit: int) -> None:
        self.body = bytearray()
        self.done = False
        self._limit = limit
        self._left = 0  # bytes of the current chunk still to come
        self._state = "size"  # size | data | data-crlf | trailer

    def feed(self, buf: bytes | bytearray, pos: int) -> int:
        while not self.done:
            if self._state == "size":
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    if len(buf) - pos > _CHUNK_LINE_LIMIT:
                        raise HttpError(400, "chunk size line too long")
                    return pos
                size_b = buf[pos:end].split(b";", 1)[0].strip(b" \t")
                if not _CHUNK_SIZE.match(bytes(size_b)):
                    raise HttpError(400, "malformed chunk size")
                self._left = int(size_b, 16)
                pos = end + 2
                self._state = "data" if self._left else "trailer"
                if len(self.body) + self._left > self._limit:
                    raise HttpError(413, "request body is over the limit")
            elif self._state == "data":
                take = min(self._left, len(buf) - pos)
                if take <= 0:
                    return pos
                self.body += buf[pos : pos + take]
                pos += take
                self._left -= take
                if self._left == 0:
                    self._state = "data-crlf"
            elif self._state == "data-crlf":
                if len(buf) - pos < 2:
                    return pos
                if buf[pos : pos + 2] != b"\r\n":
                    raise HttpError(400, "chunk data not followed by CRLF")
                pos += 2
                self._state = "size"
            else:  # trailer fields, ignored, up to the blank line
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    if len(buf) - pos > _CHUNK_LINE_LIMIT:
                        raise HttpError(431, "chunked trailer too long")
                    return pos
                if end == pos:
                    self.done = True
                pos = end + 2
        return pos
