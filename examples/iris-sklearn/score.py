"""Entry script in the Azure ML style: init() loads the model once, run() scores a request.

Request:  {"data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}
            (sepal length, sepal width, petal length, petal width, in cm)
Response: {"predictions": ["setosa", "virginica"]}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import joblib

model: Any = None
N_FEATURES = 4


def init() -> None:
    """Load the model as Azure ML lays it out: the registered folder ``model`` keeps its name
    under AZUREML_MODEL_DIR, so the file is $AZUREML_MODEL_DIR/model/model.joblib."""
    global model
    model_dir = Path(os.environ["AZUREML_MODEL_DIR"])
    model = joblib.load(model_dir / "model" / "model.joblib")


def run(raw_data: str | bytes | dict[str, Any]) -> dict[str, Any]:
    """Predict the species of each row of ``data``; raise ValueError for a malformed request."""
    request = json.loads(raw_data) if isinstance(raw_data, (str, bytes)) else raw_data
    rows = request.get("data") if isinstance(request, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ValueError('expected {"data": [[f1, f2, f3, f4], ...]} with at least one row')
    for i, row in enumerate(rows):
        if not (
            isinstance(row, list)
            and len(row) == N_FEATURES
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row)
        ):
            raise ValueError(f"row {i} must be a list of {N_FEATURES} numbers")
    predictions = model.predict(rows)
    return {"predictions": [str(p) for p in predictions]}
