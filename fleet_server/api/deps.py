"""What every router needs: the app's state, bearer-token parsing and the role checks.

The state lives on `app.state.fleet` (set by the app factory), never in module globals.

Role checks: `require_viewer`, `require_operator`, `require_admin` (route or router
dependencies). `fleet_server.api.auth.AuthMiddleware` has already resolved the caller (401 before
the body otherwise); these answer 403 naming the role a call needs, and declare the HTTP bearer
security scheme ("apiToken") in the OpenAPI for every route that uses them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fleet_server.access import Principal, Role
from fleet_server.api.auth import API_TOKEN_SCHEME, principal_of
from fleet_server.errors import Forbidden, NotAuthenticated
from fleet_server.ingest import IngestService
from fleet_server.metrics import FleetMetrics
from fleet_server.settings import ServerSettings
from fleet_server.store.base import Store

if TYPE_CHECKING:
    from fleet_server.mqtt_bridge import MqttBridge

__all__ = [
    "FleetState", "bearer_token", "caller", "fleet", "require_admin", "require_operator", "require_viewer",
]


@dataclass
class FleetState:
    settings: ServerSettings
    store: Store
    metrics: FleetMetrics
    ingest: IngestService
    bridge: MqttBridge | None = None
    # Set by the lifespan while the bridge runs; owned and awaited there.
    bridge_task: asyncio.Task[None] | None = field(default=None, repr=False)
    # The app's clock (unix seconds; `create_app(clock=...)`), for routes that stamp times.
    clock: Callable[[], float] = field(default=time.time, repr=False)


def fleet(request: Request) -> FleetState:
    state: FleetState = request.app.state.fleet
    return state


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None when absent/malformed."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


# Declares the scheme in the OpenAPI; the token itself was checked by AuthMiddleware.
_api_token = HTTPBearer(
    scheme_name=API_TOKEN_SCHEME, auto_error=False,
    description="An API user's token (`quanedge fleet user create`) or the server's admin token.",
)


def caller(request: Request) -> Principal:
    """Dependency: the request's authenticated principal (resolved by AuthMiddleware)."""
    principal = principal_of(request.scope)
    if principal is None:  # a route outside the user-facing paths asked for a user
        raise NotAuthenticated("this call needs an API token: Authorization: Bearer <token>")
    return principal


def _require(role: Role) -> Callable[..., Principal]:
    def dependency(
        request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(_api_token)]
    ) -> Principal:
        principal = caller(request)
        if not principal.role.allows(role):
            raise Forbidden(f"this call needs the {role.value} role; {principal.name!r} has the "
                            f"{principal.role.value} role")
        return principal

    dependency.__name__ = dependency.__qualname__ = f"require_{role.value}"
    dependency.__doc__ = f"Dependency: the caller has at least the {role.value} role (401 / 403 otherwise)."
    return dependency


require_viewer = _require(Role.VIEWER)
require_operator = _require(Role.OPERATOR)
require_admin = _require(Role.ADMIN)
