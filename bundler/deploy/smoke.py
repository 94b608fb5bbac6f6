"""The smoke test after start: judge an answer against the bundle's SmokeSpec (pure), and
send the request (the one HTTP edge, :func:`run`).

`airgap serve --smoke`, `airgap run --smoke` and `airgap smoke DEST --url URL` call
:func:`run` once the server is healthy and raise SmokeTestError (exit 4) on a wrong answer.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from ..errors import BundleError, SmokeTestError, UsageError
from ..formats.manifest import Manifest
from ..formats.smoke import SmokeSpec

MAX_ANSWER: Final = 16 * 1024 * 1024  # bytes read of the answer; a longer one is a failure
_EXCERPT: Final = 200  # characters of the answer quoted in a failure


@dataclass(frozen=True)
class SmokeResult:
    """What one smoke request got, and every way it missed the spec (none: it passed)."""

    url: str
    method: str
    status: int | None  # None: no answer (refused, timed out, cut off)
    latency_ms: float  # from sending the request to the last byte of the answer
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "url": self.url,
            "method": self.method,
            "status": self.status,
            "latency_ms": round(self.latency_ms, 3),
            "problems": list(self.problems),
        }

    def summary(self) -> str:
        """One line: ``smoke test passed: POST /score -> 200 in 12.3 ms``."""
        got = "no answer" if self.status is None else str(self.status)
        head = f"{self.method} {self.url} -> {got} in {self.latency_ms:.1f} ms"
        if self.ok:
            return f"smoke test passed: {head}"
        return f"smoke test failed: {head}: {'; '.join(self.problems)}"

    def raise_for_failure(self) -> None:
        """Raises: SmokeTestError (exit 4) unless the test passed."""
        if not self.ok:
            raise SmokeTestError(
                f"{self.method} {self.url} -> "
                f"{'no answer' if self.status is None else self.status} in "
                f"{self.latency_ms:.1f} ms: {'; '.join(self.problems)}",
                remedy="check the server's log (the request id is in the answer's "
                "x-ms-request-id header) and the [smoke] table in bundle.toml",
            )


def _excerpt(text: str) -> str:
    return repr(text if len(text) <= _EXCERPT else text[:_EXCERPT] + "...")


def evaluate(spec: SmokeSpec, status: int, body: bytes) -> list[str]:
    """Every way an answer of ``status`` and ``body`` misses ``spec`` (empty: it passed)."""
    problems: list[str] = []
    text = body.decode("utf-8", errors="replace")
    if status != spec.status:
        problems.append(f"status {status}, expected {spec.status} (answer {_excerpt(text)})")
    if spec.json_keys or spec.has_json:
        try:
            answer = json.loads(text)
        except ValueError:
            problems.append(f"the answer is not JSON: {_excerpt(text)}")
        else:
            if spec.json_keys:
                if not isinstance(answer, dict):
                    problems.append(f"the answer is not a JSON object: {_excerpt(text)}")
                else:
                    missing = [k for k in spec.json_keys if k not in answer]
                    if missing:
                        problems.append(
                            f"JSON key(s) {', '.join(missing)} missing (has: "
                            f"{', '.join(sorted(answer)) or 'none'})"
                        )
            if spec.has_json and not _same_json(answer, spec.json):
                problems.append(
                    f"the JSON answer differs: expected "
                    f"{_excerpt(json.dumps(spec.json, sort_keys=True))}, got {_excerpt(text)}"
                )
    for needle in spec.contains:
        if needle not in text:
            problems.append(f"the answer does not contain {needle!r}: {_excerpt(text)}")
    return problems


def _same_json(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0 as JSON numbers, but true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def spec_of(manifest: Manifest) -> SmokeSpec:
    """The bundle's smoke test.

    Raises:
        BundleError: the bundle carries none.
    """
    if manifest.smoke is None:
        raise BundleError(
            f"bundle {manifest.name} {manifest.version} carries no smoke test",
            remedy="add a [smoke] table to bundle.toml (docs/project-file.md) and pack again",
        )
    return manifest.smoke


def target_url(base_url: str, spec: SmokeSpec) -> str:
    """The URL the request goes to: the server's base URL (a path prefix is kept, a
    trailing ``/score`` dropped, so the scoring URI works too) joined with ``spec.path``.

    Raises:
        UsageError: ``base_url`` is not an http(s) URL with a host.
    """
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"--url {base_url!r} is not an http:// or https:// URL",
            remedy="pass the server's base URL, e.g. http://127.0.0.1:5001",
        )
    prefix = parts.path.rstrip("/")
    if prefix.endswith("/score"):
        prefix = prefix[: -len("/score")]
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, prefix + spec.path, "", ""))


def run(
    spec: SmokeSpec,
    base_url: str,
    *,
    headers: Mapping[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> SmokeResult:
    """Send ``spec``'s request to the server at ``base_url`` and judge the answer.

    ``headers`` are added to the spec's (the CLI's ``Authorization`` from --auth-key-file:
    credentials never live in the bundle). Never raises for a wrong or missing answer: that
    is a failed result.

    Raises:
        UsageError: ``base_url`` is not an http(s) URL.
    """
    url = target_url(base_url, spec)
    parts = urllib.parse.urlsplit(url)
    send = {**dict(spec.headers), **(headers or {})}
    body = spec.body.encode("utf-8") if spec.body is not None else None
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            parts.netloc, timeout=spec.timeout, context=ssl_context or ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(parts.netloc, timeout=spec.timeout)
    start = time.perf_counter()
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request(spec.method, target, body=body, headers=send)
        resp = conn.getresponse()
        data = resp.read(MAX_ANSWER + 1)
        status = resp.status
    except (OSError, http.client.HTTPException) as e:
        elapsed = (time.perf_counter() - start) * 1000
        return SmokeResult(
            url, spec.method, None, elapsed, (f"no answer: {e or type(e).__name__}",)
        )
    finally:
        conn.close()
    elapsed = (time.perf_counter() - start) * 1000
    if len(data) > MAX_ANSWER:
        return SmokeResult(url, spec.method, status, elapsed, (f"answer over {MAX_ANSWER} bytes",))
    return SmokeResult(url, spec.method, status, elapsed, tuple(evaluate(spec, status, data)))


_BALANCER_NOT_READY: Final = (502, 503, 504)  # a balancer that sees no replica (yet)


def run_through_balancer(
    spec: SmokeSpec,
    base_url: str,
    *,
    wait: float,
    headers: Mapping[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> SmokeResult:
    """:func:`run`, for a service behind a load balancer that has just converged.

    A balancer finds new replicas by its own health checks and DNS, seconds after the
    orchestrator calls them healthy: while the answer is none at all or 502/503/504 (a
    balancer with no replica to send to), ask again for up to ``wait`` seconds. Any other
    answer is judged at once, so a wrong answer is never retried into a pass.

    Raises:
        UsageError: ``base_url`` is not an http(s) URL.
    """
    deadline = time.monotonic() + wait
    while True:
        result = run(spec, base_url, headers=headers, ssl_context=ssl_context)
        waiting = result.status is None or result.status in _BALANCER_NOT_READY
        if result.ok or not waiting or time.monotonic() >= deadline:
            return result
        time.sleep(0.5)
