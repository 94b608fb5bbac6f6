"""A @rawhttp entry script, as Azure ML documents them: AMLRequest in, AMLResponse out."""

import importlib
import struct
import zlib

from azureml.contrib.services.aml_request import AMLRequest, rawhttp
from azureml.contrib.services.aml_response import AMLResponse


def init():
    pass


def _png(width, height, rgb):
    """A solid-colour PNG, built by hand (no imaging library)."""

    def chunk(kind, data):
        body = kind + data
        return (
            struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
        )

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


@rawhttp
def run(request):
    if request.method == "GET":
        return {"method": "GET", "args": request.args.to_dict(flat=False)}
    if request.method == "OPTIONS":
        return AMLResponse("", 204, {"Allow": "GET, POST, OPTIONS"})
    if request.method != "POST":
        return AMLResponse("only GET and POST", 405)
    mode = request.args.get("mode", "")
    if mode == "echo":
        data = request.get_data()
        return AMLResponse(data, 200, {"Content-Type": "application/octet-stream"})
    if mode == "fail":
        raise ValueError("raw failure")
    if mode == "teapot":
        return AMLResponse({"short": "stout"}, 418, json_str=True)
    if mode == "broken":
        return AMLResponse("backend down", 503)
    if mode == "json":
        return {"json": request.get_json(), "content_type": request.content_type}
    if mode == "isinstance":
        # True here (the runtime builds an AMLRequest); Azure ML passes a plain Flask request.
        return {"isinstance": isinstance(request, AMLRequest)}
    if mode == "none":
        return None
    if mode == "import":
        module = importlib.import_module(request.args["module"])
        return {"value": getattr(module, "VALUE", None), "file": module.__file__}
    upload = request.files["image"]
    content = upload.stream.read()
    width = int(request.form.get("width", "2"))
    # No commas: AMLResponse splits header values on them (repeated headers), as Azure ML does.
    reply = f"{upload.filename};{len(content)};{upload.content_type};{request.form.get('label')}"
    return AMLResponse(
        _png(width, 1, content[:3].ljust(3, b"\x00")),
        200,
        {"Content-Type": "image/png", "X-Upload": reply},
    )
