"""An entry script whose run() asks for the request headers."""

import json


def init():
    pass


def run(raw_data, request_headers):
    return {
        "echo": json.loads(raw_data),
        "custom": request_headers.get("X-Custom-Header"),
        "content_type": request_headers.get("Content-Type"),
        "request_id": request_headers.get("X-Request-Id"),
    }
