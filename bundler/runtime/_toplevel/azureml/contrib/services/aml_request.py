"""``@rawhttp`` and ``AMLRequest``: what an entry script imports to receive the raw HTTP request.

Entry scripts written for Azure ML import these from ``azureml.contrib.services.aml_request``;
the runtime provides them, so no Azure package is needed in the bundle's lock.
"""

from __future__ import annotations

# typing.Callable: this file runs on Python 3.8, where collections.abc.Callable[...] fails.
from typing import Any, Callable, TypeVar  # noqa: UP035

from werkzeug.wrappers import Request

# Azure ML's server keeps the marker in this module-level flag (set by any use of @rawhttp) and
# reads it after importing the entry script; the runtime reads it the same way.
_rawHttpRequested = False
# Tells the runtime that this module is its own shim, whose AMLRequest it may instantiate.
_AIRGAP_SHIM = True

_F = TypeVar("_F", bound=Callable[..., Any])


def rawhttp(func: _F) -> _F:
    """Mark run() as wanting the request object (an AMLRequest) instead of the body as text."""
    global _rawHttpRequested
    _rawHttpRequested = True
    return func


class AMLRequest(Request):
    """The request a @rawhttp run() receives: werkzeug's Request, as in Azure ML (a Flask
    request there). ``method``, ``headers``, ``args``, ``form``, ``files`` (each a FileStorage
    with a ``stream``), ``get_data()``, ``get_json()``, ``content_type``, ``path``..."""
