"""werkzeug's side: the AMLRequest a @rawhttp run() gets, and the Responses run() returns.

Imported only for @rawhttp scripts or once a script has loaded werkzeug itself, so plain
scripts never pay for it. werkzeug is whichever copy comes first on sys.path: the user's (e.g.
with Flask in their lock) or the runtime's own in runtime/lib.
"""

from __future__ import annotations

import sys
from typing import Any

from werkzeug.wrappers import Request, Response

_SHIM = "azureml.contrib.services.aml_request"


def make_request(environ: dict[str, Any], max_bytes: int) -> Request:
    """The request object for run(): the shim's AMLRequest when the script imported it (so
    ``isinstance(request, AMLRequest)`` holds), else werkzeug's Request."""
    module = sys.modules.get(_SHIM)
    cls: type[Request] = Request
    if module is not None and getattr(module, "_AIRGAP_SHIM", False):
        cls = module.AMLRequest
    request = cls(environ)
    # Bodies past the limit were refused before; this keeps werkzeug's own parsers in line.
    request.max_content_length = max_bytes
    return request


def is_response(value: object) -> bool:
    return isinstance(value, Response)


def flatten(
    response: Response, environ: dict[str, Any]
) -> tuple[int, bytes, list[tuple[str, str]]]:
    """Status, whole body and headers of a Response run() returned, as Azure ML sends it."""
    if response.status_code >= 500:
        # Azure ML marks a failing answer of run() even when run() itself returned normally.
        response.headers["x-ms-run-function-failed"] = "True"
    body = response.get_data()
    headers = response.get_wsgi_headers(environ)
    return response.status_code, body, list(headers.to_wsgi_list())
