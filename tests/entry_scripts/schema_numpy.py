"""An inference-schema entry script: numpy, pandas and standard parameter types (Azure ML docs)."""

import numpy as np
import pandas as pd
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.parameter_types.pandas_parameter_type import PandasParameterType
from inference_schema.parameter_types.standard_py_parameter_type import StandardPythonParameterType
from inference_schema.schema_decorators import input_schema, output_schema


def init():
    pass


@input_schema("data", NumpyParameterType(np.array([[1.0, 2.0, 3.0]])))
@input_schema("frame", PandasParameterType(pd.DataFrame({"a": [1], "b": ["x"]})))
@input_schema("scale", StandardPythonParameterType(2.0))
@output_schema(StandardPythonParameterType({"sums": [6.0], "rows": 1, "scale": 2.0}))
def run(data, frame, scale=1.0):
    return {
        "sums": [float(v) for v in (data.sum(axis=1) * scale)],
        "rows": len(frame),
        "columns": list(frame.columns),
        "scale": scale,
        "types": [type(data).__name__, type(frame).__name__],
    }
