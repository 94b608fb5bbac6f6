"""An inference-schema run() with a standard parameter, a defaulted one and request_headers."""

from inference_schema.parameter_types.standard_py_parameter_type import StandardPythonParameterType
from inference_schema.schema_decorators import input_schema, output_schema


def init():
    pass


@input_schema("text", StandardPythonParameterType("hello"))
@input_schema("repeat", StandardPythonParameterType(1))
@output_schema(StandardPythonParameterType(["hello"]))
def run(text, repeat=1, request_headers=None):
    if text == "fail":
        raise RuntimeError("secret detail")
    if text == "none":
        return None
    return {"out": [text] * int(repeat), "custom": (request_headers or {}).get("X-Custom")}
