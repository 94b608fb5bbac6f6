"""A model registered from one file: it is at $AZUREML_MODEL_DIR/clf.json, as in Azure ML."""

import json
import os

threshold = None


def init():
    global threshold
    with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "clf.json")) as f:
        threshold = json.load(f)["threshold"]


def run(raw_data):
    values = json.loads(raw_data)["data"]
    return {"labels": ["high" if v > threshold else "low" for v in values]}
