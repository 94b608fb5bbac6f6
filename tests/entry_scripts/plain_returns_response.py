"""A plain run(raw_data) that answers with an AMLResponse: Azure ML sends it as it is."""

import json

from azureml.contrib.services.aml_response import AMLResponse


def init():
    pass


def run(raw_data):
    request = json.loads(raw_data)
    if request.get("none"):
        return None
    headers = {"X-Multi": "a, b", "Cache-Control": "no-store"}
    return AMLResponse(request.get("text", "made"), request.get("status", 201), headers)
