"""The OpenAPI document and the 422 answer, made to agree with what the API really sends.

FastAPI documents only what it generates itself: the JSON body of POST /torrents,
which that route parses by hand (it also takes multipart), was a reference to a
schema that did not exist, and every 4xx this API sends as {"detail": "text"}
contradicted the documented list-only validation error.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

#: What every error answer of the API looks like (README: Errors are JSON {"detail": ...}).
ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["detail"],
    "properties": {
        "detail": {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}},
            ]
        }
    },
}
#: Statuses any API operation may answer besides its own (auth, rate limit, size, busy).
COMMON_ERRORS = {
    "4XX": "client error: bad input, no or wrong key, unknown, duplicate, too large, too many",
    "503": "database busy or unavailable; retry after Retry-After seconds",
}


def complete_openapi(schema: dict[str, Any], body_models: list[type[BaseModel]]) -> dict[str, Any]:
    """Add the hand-parsed body models and the error answers to FastAPI's document, in place."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in body_models:
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in body.pop("$defs", {}).items():
            components.setdefault(name, definition)
        components.setdefault(model.__name__, body)
    components["Error"] = ERROR_SCHEMA
    # One shape for every 422: pydantic's list of errors, or one sentence.
    validation = components.get("HTTPValidationError")
    if validation is not None:
        validation["properties"]["detail"] = ERROR_SCHEMA["properties"]["detail"]
        validation["required"] = ["detail"]
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in schema.get("paths", {}).items():
        if not path.startswith("/api/"):
            continue
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for status, response in responses.items():
                if status.startswith("4") and not response.get("content"):
                    response["content"] = error
                response.setdefault("description", "error")
            for status, description in COMMON_ERRORS.items():
                responses.setdefault(status, {"description": description, "content": error})
    return schema


def _printable(part: object) -> object:
    # A location may be a key the client sent: no lone surrogate may reach the encoder.
    return part.encode("utf-8", "replace").decode() if isinstance(part, str) else part


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 with {loc, msg, type} per error: never the input (it could be anything, and big)."""
    assert isinstance(exc, RequestValidationError)
    detail = [
        {
            "loc": [_printable(p) for p in error.get("loc", ())],
            "msg": str(_printable(str(error.get("msg", "")))),
            "type": str(error.get("type", "value_error")),
        }
        for error in exc.errors()
    ]
    return JSONResponse(status_code=422, content={"detail": detail})


__all__ = ["COMMON_ERRORS", "ERROR_SCHEMA", "complete_openapi", "validation_error"]
