"""A typical Azure ML entry script: JSON text in, a JSON-serialisable list out."""

import json
import logging
import os

model = None


def init():
    global model
    # Azure ML's convention: the model sits under AZUREML_MODEL_DIR.
    path = os.path.join(os.getenv("AZUREML_MODEL_DIR"), "linear.json")
    with open(path) as f:
        model = json.load(f)
    logging.info("model %s loaded", model["name"])


def run(raw_data):
    rows = json.loads(raw_data)["data"]
    weights, bias = model["weights"], model["bias"]
    return [sum(w * x for w, x in zip(weights, row)) + bias for row in rows]  # noqa: B905
