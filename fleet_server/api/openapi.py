"""The OpenAPI document says what the server really answers on a 422.

A 422 comes in one of two shapes: FastAPI's own for a body or parameter its models refuse
({"detail": [{"loc", "msg", "type", ...}]}, documented by FastAPI as HTTPValidationError), and
the API's error shape for a refusal by our own validators (fleet_server.app maps the FleetError
tree: {"error", "detail", "row"?, "field"?}). `document_errors(app)` adds `ErrorBody` to the
components and documents every 422 as either shape, so clients (and schemathesis) can rely on it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

__all__ = ["ERROR_BODY", "document_errors"]

ERROR_BODY: dict[str, Any] = {
    "title": "ErrorBody",
    "type": "object",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string", "description": "machine-readable reason (bad_json, bad_row, ...)"},
        "detail": {"type": "string", "description": "human message"},
        "row": {"type": "integer", "description": "index of the refused row, when one is"},
        "field": {"type": "string", "description": "name of the refused field, when known"},
    },
}


def document_errors(app: FastAPI) -> None:
    """Wrap `app.openapi` so the generated document carries both 422 shapes (generated once)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        document.setdefault("components", {}).setdefault("schemas", {})["ErrorBody"] = ERROR_BODY
        for path in document.get("paths", {}).values():
            for operation in path.values():
                response = operation.get("responses", {}).get("422")
                if response is None:
                    continue
                response["content"] = {"application/json": {"schema": {"anyOf": [
                    {"$ref": "#/components/schemas/HTTPValidationError"},
                    {"$ref": "#/components/schemas/ErrorBody"},
                ]}}}
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
