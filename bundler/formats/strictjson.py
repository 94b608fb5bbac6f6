"""Strict JSON (docs/format.md §3), the one parser of every signed JSON document: the
manifest, a split bundle's part index, a delta's descriptor and a detached signature file.
No I/O."""

from __future__ import annotations

import json
from typing import Any


class StrictJSONError(Exception):
    """Why the bytes are not strict JSON, as one line without a member; each format turns it
    into its own rejection (``raise ManifestError(str(e), ...) from e``)."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of two equal keys; two readers could then disagree about a
    # signed document, so a repeat is refused.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise StrictJSONError(f"duplicate key {key!r}: not strict JSON")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not allowed: not strict JSON")


def loads(data: bytes) -> Any:
    """Parse ``data``: UTF-8 only (no BOM), no repeated key, no NaN or Infinity.

    Raises:
        StrictJSONError: not UTF-8, not JSON, a repeated key, a non-finite constant, an
            integer past Python's digit limit, or nesting too deep for the parser.
    """
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as e:
        raise StrictJSONError("not valid UTF-8") from e
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise StrictJSONError(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    except ValueError as e:  # an integer past Python's 4300-digit conversion limit
        raise StrictJSONError("not valid JSON: a number is too long") from e
    except RecursionError as e:
        raise StrictJSONError("not valid JSON: nested too deeply") from e
