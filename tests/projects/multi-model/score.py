"""A multi-model deployment: each model at $AZUREML_MODEL_DIR/<name>/<version>/<file or
folder>, exactly as Azure ML lays out several registered models."""

import json
import os

factor = None
vocab = None


def init():
    global factor, vocab
    root = os.environ["AZUREML_MODEL_DIR"]
    with open(os.path.join(root, "scaler", "2", "scaler.json")) as f:
        factor = json.load(f)["factor"]
    with open(os.path.join(root, "tokenizer", "7", "tok", "vocab.txt")) as f:
        vocab = f.read().split()


def run(raw_data):
    words = json.loads(raw_data)["words"]
    return {"ids": [vocab.index(w) * factor for w in words]}
