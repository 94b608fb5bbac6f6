"""How run() takes its input: the body as text, inference-schema parameters, or the raw request.

Detected the way Azure ML's server does it, after the entry script was imported: ``@rawhttp``
sets a flag in ``azureml.contrib.services.aml_request``; ``@input_schema`` registers run() with
``inference_schema.schema_util``. Neither module is imported here: if the script did not import
it, it cannot have used it, and plain scripts pay nothing.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

PLAIN = "plain"  # run(raw_data): the body as text
SCHEMA = "schema"  # run(**params) from the JSON body's keys (inference-schema)
RAW = "raw"  # run(request): an AMLRequest (@rawhttp)

RAW_MODULE = "azureml.contrib.services.aml_request"
SCHEMA_MODULE = "inference_schema.schema_util"
# inference-schema's answer for an undecorated run(), and Azure ML's schemas for it.
ALL_SWAGGER_VERSIONS = ("2.0", "3.0", "3.1")
EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "example": {}}
NO_DEFAULT = inspect.Parameter.empty


class InterfaceError(Exception):
    """run() is declared in a way the server cannot call."""


@dataclass(frozen=True)
class RunInterface:
    """What the server passes to run(), and what /swagger.json describes."""

    kind: str  # PLAIN, SCHEMA or RAW
    input_name: str  # run()'s first parameter other than request_headers
    # SCHEMA: every parameter but request_headers, with its default (NO_DEFAULT if none).
    params: tuple[tuple[str, Any], ...]
    input_schema: Any
    output_schema: Any
    swagger_versions: tuple[str, ...]  # inference-schema's spelling: "2.0", "3.0", "3.1"


def raw_requested() -> bool:
    """Whether the entry script used @rawhttp (ours, or an Azure package's own copy)."""
    module = sys.modules.get(RAW_MODULE)
    return bool(getattr(module, "_rawHttpRequested", False))


def analyze(run: Callable[..., Any]) -> RunInterface:
    """Decide how to call ``run`` (a loaded entry script's run()).

    Raises:
        InterfaceError: run() uses both @rawhttp and @input_schema, or a schema-decorated
            run() has no parameter the body could name.
    """
    try:
        params = [p for p in inspect.signature(run).parameters.values()]
    except (TypeError, ValueError):
        params = []
    named = [
        p
        for p in params
        if p.name != "request_headers" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    first = next((p.name for p in params if p.name != "request_headers"), "raw_data")

    schema_util = sys.modules.get(SCHEMA_MODULE)
    decorated = schema_util is not None and bool(schema_util.is_schema_decorated(run))
    raw = raw_requested()
    if raw and decorated:
        raise InterfaceError("run() cannot be decorated with both @rawhttp and @input_schema")

    input_schema: Any = EMPTY_SCHEMA
    output_schema: Any = EMPTY_SCHEMA
    versions = ALL_SWAGGER_VERSIONS
    if decorated:
        assert schema_util is not None
        if not named:
            raise InterfaceError("run() decorated with @input_schema takes no named parameter")
        input_schema = schema_util.get_input_schema(run)
        output_schema = schema_util.get_output_schema(run)
        versions = tuple(schema_util.get_supported_versions(run))
    kind = RAW if raw else SCHEMA if decorated else PLAIN
    return RunInterface(
        kind=kind,
        input_name=first,
        params=tuple((p.name, p.default) for p in named) if decorated else (),
        input_schema=input_schema,
        output_schema=output_schema,
        swagger_versions=versions,
    )
