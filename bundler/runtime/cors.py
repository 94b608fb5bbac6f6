"""AML_CORS_ORIGINS: the CORS headers Azure ML's server adds (flask-cors on its routes); pure.

Azure ML enables flask-cors with ``origins=<the comma-separated list>`` and
``methods=["GET", "POST"]`` and otherwise its defaults; this module computes the same headers
for a request, so browsers see the same answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ENV = "AML_CORS_ORIGINS"
METHODS = "GET, POST"
# flask-cors treats an origin containing any of these as a regular expression.
_REGEX_CHARS = frozenset("*\\]?$^[]()")


def _is_regex(pattern: str) -> bool:
    return any(c in _REGEX_CHARS for c in pattern)


def _matches(value: str, pattern: str) -> bool:
    if _is_regex(pattern):
        try:
            return re.match(pattern, value, flags=re.IGNORECASE) is not None
        except re.error:
            return False
    return value.casefold() == pattern.casefold()


@dataclass(frozen=True)
class CorsPolicy:
    """The allowed origins ("*" already rewritten to the pattern ".*", as flask-cors does)."""

    origins: tuple[str, ...]

    @classmethod
    def from_env(cls, raw: str | None) -> CorsPolicy | None:
        """The policy for ``AML_CORS_ORIGINS``; None when unset or empty (CORS off)."""
        if not raw:
            return None
        origins = [o.strip() for o in raw.split(",")]
        return cls(tuple(".*" if o == "*" else o for o in origins))

    def headers(
        self,
        method: str,
        origin: str | None,
        request_method: str | None = None,
        request_headers: str | None = None,
        private_network: str | None = None,
    ) -> list[tuple[str, str]]:
        """The CORS response headers for a request with these request headers (``Origin``,
        ``Access-Control-Request-Method``, ``-Headers`` and ``-Private-Network``)."""
        wildcard = ".*" in self.origins
        if origin:
            if not any(_matches(origin, p) for p in self.origins):
                return []
            allowed = [origin]
        elif wildcard:
            allowed = ["*"]  # flask-cors' always_send: no Origin, still answer
        else:
            allowed = sorted(o for o in self.origins if not _is_regex(o))
        if not allowed or not allowed[0]:
            return []
        # flask-cors collects these in a MultiDict and then copies only the first value.
        out = [("Access-Control-Allow-Origin", allowed[0])]
        if private_network == "true":
            out.append(("Access-Control-Allow-Private-Network", "false"))
        if method == "OPTIONS":
            wanted = (request_method or "").upper()
            # A substring test, as flask-cors does against its joined method list.
            if wanted and wanted in METHODS:
                if request_headers:
                    names = sorted(h.strip() for h in request_headers.split(","))
                    if ", ".join(names):
                        out.append(("Access-Control-Allow-Headers", ", ".join(names)))
                out.append(("Access-Control-Allow-Methods", METHODS))
        if allowed[0] != "*" and (
            len(self.origins) > 1 or len(allowed) > 1 or any(_is_regex(o) for o in self.origins)
        ):
            out.append(("Vary", "Origin"))
        return out
