"""GET /swagger.json: the Swagger 2 / OpenAPI 3 documents of the service, as Azure ML serves them.

Per version, the document is the user's own file from the app root if there is one
(``swagger.json`` or ``swagger2.json`` for 2, ``swagger3.json``, ``swagger3.1.json``), else one
generated from run()'s inference-schema schemas (empty object schemas for plain scripts).
Everything is built once per worker; requests only look the encoded bytes up.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from .interface import RunInterface

# Azure ML's builders, in its order: version, the ?version= spellings it answers to, user files.
_BUILDERS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("2", ("2", "2.0"), ("swagger.json", "swagger2.json")),
    ("3", ("3", "3.0"), ("swagger3.json",)),
    ("3.1", ("3.1",), ("swagger3.1.json",)),
)
VALID_VERSIONS = frozenset(alias for _, aliases, _ in _BUILDERS for alias in aliases)
DEFAULT_VERSION = "2"

_HEALTH_DESCRIPTION = (
    "If service is up and running, this response will be returned with the content 'Healthy'"
)
_SCORE_OK = (
    "The service processed the input correctly and provided a result prediction, if applicable."
)
_FAILED = "The service failed to execute due to an error."
_PAYLOAD = "The input payload for executing the real-time machine learning service."
_BEARER = {
    "type": "apiKey",
    "name": "Authorization",
    "in": "header",
    "description": "For example: Bearer abc123",
}
_ERROR_SCHEMA = {"type": "object", "properties": {"message": {"type": "string"}}}

log = logging.getLogger("airgap_runtime")


@dataclass(frozen=True)
class ServiceInfo:
    """SERVICE_NAME, SERVICE_VERSION and SERVICE_PATH_PREFIX, as Azure ML reads them."""

    name: str = "ML service"
    version: str = "1.0"
    path_prefix: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ServiceInfo:
        return cls(
            env.get("SERVICE_NAME", "ML service"),
            env.get("SERVICE_VERSION", "1.0"),
            env.get("SERVICE_PATH_PREFIX", ""),
        )


def _info(service: ServiceInfo) -> dict[str, str]:
    return {
        "title": service.name,
        "description": f"API specification for the Azure Machine Learning service {service.name}",
        "version": service.version,
    }


def _swagger2(service: ServiceInfo, prefix: str, inp: Any, out: Any) -> dict[str, Any]:
    error = {"description": _FAILED, "schema": {"$ref": "#/definitions/ErrorResponse"}}
    return {
        "swagger": "2.0",
        "info": _info(service),
        "schemes": ["https"],
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "securityDefinitions": {"Bearer": dict(_BEARER)},
        "paths": {
            f"{prefix}/": {
                "get": {
                    "operationId": "ServiceHealthCheck",
                    "description": "Simple health check endpoint to ensure the service is up "
                    "at any given point.",
                    "responses": {
                        "200": {
                            "description": _HEALTH_DESCRIPTION,
                            "schema": {"type": "string"},
                            "examples": {"application/json": "Healthy"},
                        },
                        "default": error,
                    },
                }
            },
            f"{prefix}/score": {
                "post": {
                    "operationId": "RunMLService",
                    "description": "Run web service's model and get the prediction output",
                    "security": [{"Bearer": []}],
                    "parameters": [
                        {
                            "name": "serviceInputPayload",
                            "in": "body",
                            "description": _PAYLOAD,
                            "schema": {"$ref": "#/definitions/ServiceInput"},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": _SCORE_OK,
                            "schema": {"$ref": "#/definitions/ServiceOutput"},
                        },
                        "default": error,
                    },
                }
            },
            f"{prefix}/swagger.json": {
                "get": {
                    "operationId": "GetSwaggerSpec",
                    "description": "Get the Swagger specification.",
                    "parameters": [
                        {
                            "name": "version",
                            "in": "query",
                            "required": False,
                            "type": "integer",
                            "enum": [2, 3],
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The Swagger specification.",
                            "schema": {"type": "string"},
                        },
                        "default": error,
                    },
                }
            },
        },
        "definitions": {
            "ServiceInput": inp,
            "ServiceOutput": out,
            "ErrorResponse": _ERROR_SCHEMA,
        },
    }


def _content(media: str, schema: Any) -> dict[str, Any]:
    return {media: {"schema": schema}}


def _openapi3(
    service: ServiceInfo, prefix: str, inp: Any, out: Any, openapi: str
) -> dict[str, Any]:
    error = {
        "description": _FAILED,
        "content": _content("application/json", {"$ref": "#/components/schemas/ErrorResponse"}),
    }
    return {
        "openapi": openapi,
        "info": _info(service),
        "security": [{"Bearer": []}],
        "paths": {
            f"{prefix}/": {
                "get": {
                    "operationId": "ServiceHealthCheck",
                    "description": "Simple health check endpoint to ensure the service is up "
                    "at any given point.",
                    "responses": {
                        "200": {
                            "description": _HEALTH_DESCRIPTION,
                            "content": _content(
                                "text/plain", {"type": "string", "example": "Healthy"}
                            ),
                        },
                        "default": error,
                    },
                }
            },
            f"{prefix}/score": {
                "post": {
                    "operationId": "RunMLService",
                    "description": "Run web service's model and get the prediction output",
                    "security": [{"Bearer": []}],
                    "requestBody": {
                        "description": _PAYLOAD,
                        "content": _content(
                            "application/json", {"$ref": "#/components/schemas/ServiceInput"}
                        ),
                    },
                    "responses": {
                        "200": {
                            "description": _SCORE_OK,
                            "content": _content(
                                "application/json",
                                {"$ref": "#/components/schemas/ServiceOutput"},
                            ),
                        },
                        "default": error,
                    },
                }
            },
            f"{prefix}/swagger.json": {
                "get": {
                    "operationId": "GetSwaggerSpec",
                    "description": "Get the Swagger specification.",
                    "parameters": [
                        {
                            "name": "version",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "enum": [2, 3]},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The Swagger specification.",
                            "content": _content("text/plain", {"type": "string"}),
                        },
                        "default": error,
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "ServiceInput": inp,
                "ServiceOutput": out,
                "ErrorResponse": _ERROR_SCHEMA,
            },
            "securitySchemes": {"Bearer": dict(_BEARER)},
        },
    }


def generate(version: str, service: ServiceInfo, inp: Any, out: Any) -> dict[str, Any]:
    """The generated document for builder ``version`` ("2", "3" or "3.1"); pure."""
    prefix = f"/{service.path_prefix.strip('/')}" if service.path_prefix else ""
    if version == "2":
        return _swagger2(service, prefix, inp, out)
    return _openapi3(service, prefix, inp, out, "3.1.0" if version == "3.1" else "3.0.3")


def _read_user_file(app_root: Path, names: tuple[str, ...]) -> Any:
    """The user's own swagger document, if one of ``names`` is there and readable JSON.

    A file that is not (not UTF-8, not JSON, a folder, unreadable) is logged and skipped, so
    the generated document is served instead: a bad documentation file must not stop the
    scoring server (every worker would fail to boot).
    """
    for name in names:
        path = app_root / name
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            continue
        except (
            OSError,
            ValueError,
            RecursionError,
        ) as e:  # JSON and Unicode errors are ValueErrors
            log.warning("ignoring %s: not a readable JSON document (%s)", path, e)
            continue
    return None


class SwaggerDocs:
    """The encoded documents of one entry script, by ``?version=`` spelling."""

    def __init__(self, iface: RunInterface, app_root: Path, service: ServiceInfo) -> None:
        self._docs: dict[str, bytes] = {}
        supported = []
        for version, aliases, files in _BUILDERS:
            doc = _read_user_file(app_root, files)
            if not doc and any(a in iface.swagger_versions for a in aliases):
                doc = generate(version, service, iface.input_schema, iface.output_schema)
            if doc:
                supported.append(version)
                body = json.dumps(doc).encode("utf-8")
                for alias in aliases:
                    self._docs[alias] = body
        self.supported = sorted(supported)

    def lookup(self, version: str | None) -> tuple[bytes | None, str]:
        """The document for ``version`` (absent: 2), or None and Azure ML's 404 message."""
        version = DEFAULT_VERSION if version is None else version
        listed = ", ".join(self.supported)
        if version not in VALID_VERSIONS:
            return None, (
                f"Swagger version [{version}] is not valid. Supported versions: [{listed}]."
            )
        body = self._docs.get(version)
        if body is None:
            return None, (
                f"Swagger version [{version}] is not supported for the scoring script. "
                f"Supported swagger versions: [{listed}]."
            )
        return body, ""
