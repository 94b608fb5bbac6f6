"""A @rawhttp script as Azure ML's documentation writes them: run() gets the request object
(method, args, headers, files) and answers with an AMLResponse it controls, here a PNG."""

import json
import os
import struct
import zlib

from azureml.contrib.services.aml_request import AMLRequest, rawhttp
from azureml.contrib.services.aml_response import AMLResponse

colour = None


def init():
    global colour
    with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model.json")) as f:
        colour = bytes(json.load(f)["colour"])


def _png(width: int, height: int, rgb: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + rgb * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@rawhttp
def run(request):
    assert isinstance(request, AMLRequest), type(request)
    if request.method == "GET":
        body = {"method": "GET", "args": request.args.to_dict(flat=False)}
        return AMLResponse(body, 200, {"X-Raw": "yes"}, json_str=True)
    if request.method == "POST":
        upload = request.files["image"]
        data = upload.stream.read()
        width = int(request.form.get("width", "1"))
        png = _png(width, max(1, len(data) % 7), colour)
        headers = {
            "Content-Type": "image/png",
            "X-Upload-Name": upload.filename,
            "X-Upload-Bytes": str(len(data)),
        }
        return AMLResponse(png, 201, headers)
    return AMLResponse("method not allowed here", 405)
