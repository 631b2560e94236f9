"""What every router needs: the app's state, and bearer-token parsing / admin authorisation.

The state lives on `app.state.fleet` (set by the app factory), never in module globals.
"""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

from fleet_server.errors import NotAuthenticated
from fleet_server.ingest import IngestService
from fleet_server.metrics import FleetMetrics
from fleet_server.settings import ServerSettings
from fleet_server.store.base import Store

if TYPE_CHECKING:
    from fleet_server.mqtt_bridge import MqttBridge

__all__ = ["FleetState", "bearer_token", "fleet", "require_admin"]


@dataclass
class FleetState:
    settings: ServerSettings
    store: Store
    metrics: FleetMetrics
    ingest: IngestService
    bridge: MqttBridge | None = None
    # Set by the lifespan while the bridge runs; owned and awaited there.
    bridge_task: asyncio.Task[None] | None = field(default=None, repr=False)


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


def require_admin(request: Request) -> None:
    """Dependency: the request carries the admin token (compared in constant time)."""
    token = bearer_token(request)
    expected = fleet(request).settings.admin_token
    if token is None or not hmac.compare_digest(token.encode(), expected.encode()):
        raise NotAuthenticated("admin endpoint: missing or wrong admin bearer token")
