"""A model registered from a folder named `model`: Azure ML keeps the folder's name, so its
files are at $AZUREML_MODEL_DIR/model/... (this script is unchanged from its Azure ML form)."""

import json
import os

model = None


def init():
    global model
    path = os.path.join(os.getenv("AZUREML_MODEL_DIR"), "model", "weights.json")
    with open(path) as f:
        model = json.load(f)


def run(raw_data):
    rows = json.loads(raw_data)["data"]
    return [
        model["bias"] + sum(w * x for w, x in zip(model["weights"], row, strict=True))
        for row in rows
    ]
