"""The smoke test a bundle carries: the request to send and the answer to expect. No I/O.

One value (:class:`SmokeSpec`) with one validator shared by bundle.toml's ``[smoke]`` table
(bundler/pack/project.py) and the manifest's optional ``smoke`` key (docs/format.md §3),
which is how the test is signed with everything else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

METHODS: Final = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
# Keys of the manifest's `smoke` object (bundle.toml adds `request` and `request_file`).
KEYS: Final = frozenset(
    {"method", "path", "headers", "body", "status", "json_keys", "json", "contains", "timeout"}
)
MAX_BODY: Final = 1024 * 1024  # bytes: a sample request, not a data set (it is in the manifest)
MAX_TIMEOUT: Final = 3600  # seconds
DEFAULT_TIMEOUT: Final = 30  # seconds
_HEADER_NAME_RE: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class SmokeSpec:
    """One request and the predicate its answer must meet (every given check must hold)."""

    method: str = "POST"
    path: str = "/score"
    headers: tuple[tuple[str, str], ...] = ()
    body: str | None = None  # sent as UTF-8
    status: int = 200
    json_keys: tuple[str, ...] = ()  # top-level keys of a JSON object answer
    has_json: bool = False  # whether ``json`` is checked (it may itself be null)
    json: Any = None  # the exact JSON answer expected
    contains: tuple[str, ...] = ()  # substrings of the answer body
    timeout: int = DEFAULT_TIMEOUT  # seconds for the whole request

    def to_json_dict(self) -> dict[str, Any]:
        """The manifest's ``smoke`` object (``json`` only when it is checked)."""
        out: dict[str, Any] = {
            "method": self.method,
            "path": self.path,
            "headers": dict(self.headers),
            "body": self.body,
            "status": self.status,
            "json_keys": list(self.json_keys),
            "contains": list(self.contains),
            "timeout": self.timeout,
        }
        if self.has_json:
            out["json"] = self.json
        return out


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate(obj: Mapping[str, Any], where: str = "smoke") -> tuple[SmokeSpec | None, list[str]]:
    """Check a ``smoke`` mapping; return the spec and every problem (the spec is None if any).

    ``obj`` holds only :data:`KEYS` (unknown keys are problems); absent keys take the
    defaults of :class:`SmokeSpec`.
    """
    problems: list[str] = []
    unknown = sorted(set(obj) - KEYS)
    if unknown:
        problems.append(f"unknown key(s) {where}.{', '.join(unknown)}")
    method = obj.get("method", "POST")
    if not isinstance(method, str) or method.upper() not in METHODS:
        problems.append(f"{where}.method {method!r} must be one of {', '.join(sorted(METHODS))}")
    path = obj.get("path", "/score")
    if (
        not isinstance(path, str)
        or not path.startswith("/")
        or _CONTROL_RE.search(path)
        or (" " in path)
    ):
        problems.append(f"{where}.path {path!r} must start with '/' and have no spaces")
    headers_raw = obj.get("headers", {})
    headers: list[tuple[str, str]] = []
    if not isinstance(headers_raw, Mapping):
        problems.append(f'{where}.headers must be a table: {{ "Content-Type" = "..." }}')
    else:
        for name, value in sorted(headers_raw.items()):
            if not isinstance(name, str) or not _HEADER_NAME_RE.match(name):
                problems.append(f"{where}.headers: {name!r} is not a header name")
            elif not isinstance(value, str) or _CONTROL_RE.search(value):
                problems.append(f"{where}.headers.{name} must be a one-line string")
            elif name.lower() == "authorization":
                # The bundle is signed, not secret: a key in it would be readable by anyone.
                problems.append(
                    f"{where}.headers.{name}: no credentials in the bundle; pass "
                    "--auth-key-file to `airgap smoke` instead"
                )
            else:
                headers.append((name, value))
    body = obj.get("body")
    if body is not None and not isinstance(body, str):
        problems.append(f"{where}.body must be a string")
    elif body is not None and len(body.encode("utf-8", "surrogatepass")) > MAX_BODY:
        problems.append(f"{where}: the request is over {MAX_BODY} bytes; use a smaller sample")
    status = obj.get("status", 200)
    if not _is_int(status) or not 100 <= status <= 599:
        problems.append(f"{where}.status {status!r} must be an HTTP status such as 200")
    json_keys = obj.get("json_keys", [])
    if not isinstance(json_keys, list) or not all(isinstance(k, str) for k in json_keys):
        problems.append(f'{where}.json_keys must be a list of strings, e.g. ["predictions"]')
        json_keys = []
    contains = obj.get("contains", [])
    if isinstance(contains, str):
        contains = [contains]
    if not isinstance(contains, list) or not all(isinstance(c, str) and c for c in contains):
        problems.append(f"{where}.contains must be a non-empty string or a list of them")
        contains = []
    has_json = "json" in obj
    expected = obj.get("json")
    if has_json:
        try:
            json.dumps(expected, allow_nan=False)
        except (TypeError, ValueError):
            problems.append(f"{where}.json must be plain JSON (no dates, NaN or infinity)")
    timeout = obj.get("timeout", DEFAULT_TIMEOUT)
    if not _is_int(timeout) or not 1 <= timeout <= MAX_TIMEOUT:
        problems.append(f"{where}.timeout {timeout!r} must be whole seconds, 1 to {MAX_TIMEOUT}")
    if problems:
        return None, problems
    return (
        SmokeSpec(
            method=str(method).upper(),
            path=str(path),
            headers=tuple(headers),
            body=body,
            status=int(status),
            json_keys=tuple(json_keys),
            has_json=has_json,
            json=expected,
            contains=tuple(contains),
            timeout=int(timeout),
        ),
        [],
    )
