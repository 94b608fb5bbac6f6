"""``AMLResponse``: the response a run() returns to choose its status, headers and body."""

from __future__ import annotations

import json
from typing import Any

from werkzeug.wrappers import Response


class AMLResponse(Response):
    """werkzeug's Response with Azure ML's constructor.

    ``AMLResponse(message, status_code, response_headers={}, json_str=False)``: with
    ``json_str`` the message is sent as JSON (``application/json``); otherwise it is the body
    as given (``str``, ``bytes`` or an iterable of them). A ``None`` message sends ``{}``.
    A header value with commas becomes one header per comma-separated part, as in Azure ML
    (repeated headers). Every AMLResponse carries ``x-ms-run-function-failed``.
    """

    # Azure ML's AMLResponse is a Flask Response, whose bodies default to HTML (werkzeug's to
    # plain text): clients see the same Content-Type for a body given without one.
    default_mimetype = "text/html"

    def __init__(
        self,
        message: Any,
        status_code: int,
        response_headers: dict[str, str] | None = None,
        json_str: bool = False,
        run_function_failed: bool = False,
    ) -> None:
        headers = response_headers or {}
        if message is None:
            super().__init__(json.dumps({}), status=status_code, mimetype="application/json")
        elif json_str:
            super().__init__(json.dumps(message), status=status_code, mimetype="application/json")
        else:
            super().__init__(message, status=status_code)
            if "Content-Type" in headers:
                # The loop below adds the caller's; werkzeug's default must not stay beside it.
                self.headers.remove("Content-Type")
        self.headers["x-ms-run-function-failed"] = str(run_function_failed)
        for header, value in headers.items():
            for part in value.split(","):
                self.headers.add_header(header, part.strip())
