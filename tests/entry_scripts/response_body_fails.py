"""A @rawhttp script whose Response bodies are generators that fail or block while rendered."""

import json
import time

from azureml.contrib.services.aml_request import rawhttp
from azureml.contrib.services.aml_response import AMLResponse


def init():
    pass


def _raising():
    yield b"partial "
    raise RuntimeError("secret detail from the body generator")


def _blocking():
    yield b"start "
    time.sleep(30)
    yield b"never"


@rawhttp
def run(request):
    mode = json.loads(request.get_data() or b"{}").get("mode")
    if mode == "raise":
        return AMLResponse(_raising(), 200)
    if mode == "block":
        return AMLResponse(_blocking(), 200)
    return AMLResponse("ok", 200)
