"""An entry script that returns a dict, and a JSON string when asked (as old scripts do)."""

import json
import os

model = None


def init():
    global model
    with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "linear.json")) as f:
        model = json.load(f)


def run(data):
    try:
        request = json.loads(data)
        rows = request["data"]
        predictions = [
            sum(w * x for w, x in zip(model["weights"], row)) + model["bias"]  # noqa: B905
            for row in rows
        ]
        result = {"model": model["name"], "predictions": predictions}
        if request.get("as_string"):
            return json.dumps(result)
        return result
    except Exception as e:
        # The classic Azure ML sample pattern: report the error as the result.
        return {"error": str(e)}
