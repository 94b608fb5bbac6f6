"""An inference_schema script as Azure ML's documentation writes them: run() gets its
parameters by name from the JSON body (or the query string of GET /score), already parsed into
a numpy array, a pandas DataFrame and plain Python values."""

import json
import os

import numpy as np
import pandas as pd
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.parameter_types.pandas_parameter_type import PandasParameterType
from inference_schema.parameter_types.standard_py_parameter_type import (
    StandardPythonParameterType,
)
from inference_schema.schema_decorators import input_schema, output_schema

offset = None


def init():
    global offset
    with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model.json")) as f:
        offset = json.load(f)["offset"]


@input_schema("data", NumpyParameterType(np.array([[1.0, 2.0, 3.0]])))
@input_schema("frame", PandasParameterType(pd.DataFrame({"a": [1], "b": [2.5]})))
@input_schema("scale", StandardPythonParameterType(2.0))
@output_schema(StandardPythonParameterType({"row_sums": [1.0], "frame_sum": 1.0, "types": ["x"]}))
def run(data, frame, scale=1.0):
    return {
        "row_sums": [float(v) for v in (data.sum(axis=1) * scale + offset)],
        "frame_sum": float(frame["a"].sum() + frame["b"].sum()),
        "types": [type(data).__name__, type(frame).__name__, type(scale).__name__],
    }
