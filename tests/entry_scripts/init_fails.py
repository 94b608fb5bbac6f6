"""An entry script whose init() fails: the server must exit non-zero with the traceback."""

import os


def init():
    path = os.path.join(os.getenv("AZUREML_MODEL_DIR", "."), "missing-model.pkl")
    raise FileNotFoundError(f"model file not found: {path}")


def run(raw_data):
    return raw_data
