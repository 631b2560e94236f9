"""The app factory: `create_app(settings, store=None) -> FastAPI`. No module-level state.

Wiring: one Store (SQLite at settings.db_path unless one is passed in), one FleetMetrics with its
own registry, one IngestService shared by the telemetry router and the MQTT bridge. The lifespan
starts the bridge (when settings.mqtt_host is set) as a task it owns and awaits on shutdown, then
closes the store if the app created it.

This is also the ONE place where the FleetError tree becomes HTTP: every error body is
    {"error": "<code>", "detail": "<human message>"[, "row": i, "field": "<name>"]}
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from fleet_server.api import boxes, enrollment, health, telemetry
from fleet_server.api.deps import FleetState
from fleet_server.errors import (
    BatchTooLarge,
    BoxIdTaken,
    EnrollmentRefused,
    FleetError,
    Forbidden,
    NotAuthenticated,
    PayloadError,
    StoreError,
    UnknownBox,
)
from fleet_server.ingest import IngestService
from fleet_server.metrics import FleetMetrics
from fleet_server.mqtt_bridge import MqttBridge
from fleet_server.settings import ServerSettings
from fleet_server.store.base import Store
from fleet_server.store.sqlite import SqliteStore

__all__ = ["create_app", "status_for"]

log = logging.getLogger(__name__)

# Most specific first.
_STATUS: tuple[tuple[type[FleetError], int], ...] = (
    (NotAuthenticated, 401),
    (Forbidden, 403),
    (BoxIdTaken, 409),
    (EnrollmentRefused, 403),
    (UnknownBox, 404),
    (BatchTooLarge, 413),
    (StoreError, 503),
)


def status_for(exc: FleetError) -> int:
    """The HTTP status of a FleetError (400 for unparseable JSON, 422 for other bad payloads)."""
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    if isinstance(exc, PayloadError):
        return 400 if exc.code == "bad_json" else 422
    return 500


async def _fleet_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FleetError)
    body: dict[str, object] = {"error": exc.code, "detail": str(exc)}
    if isinstance(exc, PayloadError):
        body.update({k: v for k, v in (("row", exc.row), ("field", exc.field)) if v is not None})
    headers = {}
    if isinstance(exc, NotAuthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, StoreError):
        log.error("store failure on %s %s: %s", request.method, request.url.path, exc)
        headers["Retry-After"] = "5"
    return JSONResponse(body, status_code=status_for(exc), headers=headers)


def create_app(settings: ServerSettings, store: Store | None = None) -> FastAPI:
    """Build the fleet server app. A passed-in `store` stays the caller's to close."""
    owns_store = store is None
    the_store: Store = SqliteStore(settings.db_path) if store is None else store
    metrics = FleetMetrics(the_store)
    ingest = IngestService(
        the_store, metrics, max_batch=settings.max_batch, max_body_bytes=settings.max_body_bytes
    )
    state = FleetState(
        settings=settings, store=the_store, metrics=metrics, ingest=ingest,
        bridge=MqttBridge(settings, ingest) if settings.mqtt_enabled else None,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if state.bridge is not None:
            state.bridge_task = asyncio.create_task(state.bridge.run(), name="mqtt-bridge")
            state.bridge_task.add_done_callback(_report_bridge_end)
        try:
            yield
        finally:
            await _stop_bridge(state)
            if owns_store:
                the_store.close()

    app = FastAPI(title="Quanedge fleet server", version="0.1.0", lifespan=lifespan)
    app.state.fleet = state
    app.add_exception_handler(FleetError, _fleet_error)
    for module in (enrollment, telemetry, boxes, health):
        app.include_router(module.router)
    return app


def _report_bridge_end(task: asyncio.Task[None]) -> None:
    """A bridge that ends before shutdown is a bug: log it loudly (healthz turns 503)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("MQTT bridge stopped", exc_info=task.exception())


async def _stop_bridge(state: FleetState) -> None:
    task = state.bridge_task
    if task is None:
        return
    task.cancel()
    await asyncio.wait({task})  # the bridge's own failure was already logged by the done-callback
    state.bridge_task = None
