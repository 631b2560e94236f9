"""Who is calling: the bearer principal of every user-facing API request, resolved before the body.

`AuthMiddleware` is a pure ASGI middleware. For a user-facing route (everything under /api/v1/
except the box-facing ones below) it reads only the `Authorization: Bearer <token>` header and
resolves the principal: the server's configured admin token (compared in constant time) is the
bootstrap admin; any other token must belong to an active API user (looked up in the store on
every request: no cache, so a revocation counts from the next request). Without a valid token the
request is answered 401 at once: not one body byte is read. Otherwise the principal is put in the
ASGI scope (`principal_of`) and the route's role dependency (`deps.require_*`) decides 403 or go.
Refusals are counted: `quanedge_api_auth_refusals_total{reason="no_token"|"bad_token"|"role"}`.

Box-facing routes (telemetry, enrollment, check-in, inventory, commands, action status) carry a box's own
credential or an enrollment token and are checked by their routes; /tuf/, /healthz, /metrics and
the docs are outside /api/v1 and pass untouched.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from anyio import to_thread
from fastapi import FastAPI
from prometheus_client import Counter
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleet_server.access import BOOTSTRAP_ADMIN, Principal, Role
from fleet_server.errors import FleetError, NotAuthenticated

if TYPE_CHECKING:
    from fleet_server.api.deps import FleetState

__all__ = [
    "API_TOKEN_SCHEME", "BOX_CREDENTIAL_SCHEME", "BOX_FACING", "AuthMiddleware", "bearer_of", "document_auth",
    "is_user_facing", "principal_of", "route_path",
]

#: Routes under /api/v1 that a box (or an installer's enrollment token) calls, not an API user.
BOX_FACING = re.compile(
    r"^/api/v1/(?:telemetry|enroll(?:/status)?|boxes/[^/]+/(?:checkin|inventory|commands|actions/[^/]+/status))/?$"
)
_SCOPE_KEY = "quanedge.principal"
#: The OpenAPI name of the API users' bearer scheme (declared by the `deps.require_*` dependencies).
API_TOKEN_SCHEME = "apiToken"
#: The OpenAPI name of the boxes' credential scheme (box-facing routes; see `document_auth`).
BOX_CREDENTIAL_SCHEME = "boxCredential"

ErrorRenderer = Callable[[FleetError, Scope], Response]


def is_user_facing(path: str) -> bool:
    """True for the API users' routes: /api/v1/... except the box-facing ones."""
    return path.startswith("/api/v1/") and BOX_FACING.match(path) is None


def route_path(scope: Scope) -> str:
    """The path the router matches: the request path without the app's root_path (mount prefix).
    Were the two ever to disagree, the result fails closed: a route's role check finds no
    principal (401)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def principal_of(scope: Scope) -> Principal | None:
    """The principal `AuthMiddleware` resolved for this request (None: not resolved)."""
    principal: Principal | None = scope.get(_SCOPE_KEY)
    return principal


def bearer_of(scope: Scope) -> str | None:
    """The token of the request's `Authorization: Bearer <token>` header, or None."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


class AuthMiddleware:
    """Resolve the principal of user-facing requests; refuse (401) those without one, unread.

    `render_error` turns a FleetError into the app's error response (the one mapping, in app.py).
    """

    def __init__(self, app: ASGIApp, *, state: FleetState, render_error: ErrorRenderer) -> None:
        self.app = app
        self.state = state
        self.render_error = render_error
        self.refused = Counter(
            "quanedge_api_auth_refusals_total",
            "User-facing API calls refused: no_token / bad_token (401), role (403: below the role needed)",
            ["reason"], registry=state.metrics.registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_user_facing(route_path(scope)):
            await self.app(scope, receive, send)
            return
        token = bearer_of(scope)
        try:
            principal = await self._resolve(token)
        except FleetError as exc:   # NotAuthenticated, or StoreError while looking the token up
            if isinstance(exc, NotAuthenticated):
                self.refused.labels("no_token" if token is None else "bad_token").inc()
            await self.render_error(exc, scope)(scope, receive, send)
            return
        scope[_SCOPE_KEY] = principal

        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 403:
                self.refused.labels("role").inc()
            await send(message)

        await self.app(scope, receive, counting)

    async def _resolve(self, token: str | None) -> Principal:
        if token is None:
            raise NotAuthenticated("this call needs an API token: Authorization: Bearer <token>")
        expected = self.state.settings.admin_token
        if hmac.compare_digest(token.encode("utf-8"), expected.encode("utf-8")):
            return Principal(BOOTSTRAP_ADMIN, Role.ADMIN)
        user = await to_thread.run_sync(self.state.store.user_for_token, token)
        if user is None:
            raise NotAuthenticated("unknown or revoked API token")
        return Principal(user.name, user.role)


_ERROR_SCHEMA = {
    "type": "object", "required": ["error", "detail"],
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
}


def document_auth(app: FastAPI) -> None:
    """Complete the OpenAPI's security: 401 / 403 answers (with their {"error", "detail"} body) on
    every operation that uses the API token scheme, whoever's router it comes from; and the box
    credential scheme ("boxCredential", HTTP bearer) on the box-facing routes that take one
    (all of them except /api/v1/enroll, which spends an enrollment token from its body)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {})["Error"] = _ERROR_SCHEMA
        components.setdefault("securitySchemes", {})[BOX_CREDENTIAL_SCHEME] = {
            "type": "http", "scheme": "bearer",
            "description": "A box's own credential, returned once by POST /api/v1/enroll.",
        }
        body = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        for path, item in schema.get("paths", {}).items():
            box_route = BOX_FACING.match(path) is not None and not path.startswith("/api/v1/enroll")
            for operation in item.values():
                responses = operation.setdefault("responses", {})
                if box_route:
                    operation.setdefault("security", [{BOX_CREDENTIAL_SCHEME: []}])
                    responses.setdefault("401", {"description": "Unknown or revoked box credential",
                                                 "content": body})
                elif any(API_TOKEN_SCHEME in req for req in operation.get("security", ())):
                    responses.setdefault("401", {"description": "No valid API token", "content": body})
                    responses.setdefault("403", {"description": "The token's role is below the one this call needs",
                                                 "content": body})
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
