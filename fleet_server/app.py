"""The app factory: `create_app(settings, store=None) -> FastAPI`. No module-level state.

Wiring: one Store (SQLite at settings.db_path unless one is passed in), one FleetMetrics with its
own registry, one IngestService shared by the telemetry router and the MQTT bridge, one
RolloutEngine (`app.state.rollouts`) behind the check-in and rollout routers, one
AdmissionService (`app.state.admission`: enrolment, admission and revocation, together with the
broker's per-box accounts). The lifespan loads the engine's memory from the store, then starts as tasks it owns and cancels on shutdown: the
MQTT bridge (when settings.mqtt_host is set), the rollout sweeper (per-box timeouts) and, with an
update repository, the TUF timestamp keeper; then it closes the store if the app created it.

This is also the ONE place where the FleetError tree becomes HTTP: every error body is
    {"error": "<code>", "detail": "<human message>"[, "row": i, "field": "<name>"]}
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from fleet_server.admission import AdmissionService
from fleet_server.api import admission, boxes, checkin, enrollment, health, rollouts, telemetry, tuf
from fleet_server.api.deps import FleetState
from fleet_server.errors import (
    BatchTooLarge,
    BrokerRefused,
    BrokerUnavailable,
    EnrollmentRefused,
    FleetError,
    Forbidden,
    NotAuthenticated,
    PayloadError,
    StoreError,
    UnknownAdmission,
    UnknownBox,
)
from fleet_server.broker import accounts_from_settings
from fleet_server.ingest import IngestService
from fleet_server.metrics import FleetMetrics
from fleet_server.mqtt_bridge import MqttBridge
from fleet_server.rollout.engine import RolloutEngine
from fleet_server.rollout.errors import (
    ActionClosed, RepositoryUnavailable, RolloutConflict, UnknownAction, UnknownRollout,
)
from fleet_server.settings import ServerSettings
from fleet_server.store.base import Store
from fleet_server.store.sqlite import SqliteStore

__all__ = ["create_app", "status_for"]

log = logging.getLogger(__name__)

# Most specific first.
_STATUS: tuple[tuple[type[FleetError], int], ...] = (
    (NotAuthenticated, 401),
    (Forbidden, 403),
    (EnrollmentRefused, 403),
    (UnknownBox, 404),
    (UnknownAdmission, 404),
    (UnknownRollout, 404),
    (UnknownAction, 404),
    (RolloutConflict, 409),
    (ActionClosed, 409),
    (RepositoryUnavailable, 503),
    (BatchTooLarge, 413),
    (StoreError, 503),
    (BrokerUnavailable, 503),
    (BrokerRefused, 502),
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
    if isinstance(exc, ActionClosed):
        body.update(exc.extra())
    headers = {}
    if isinstance(exc, NotAuthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, (StoreError, BrokerUnavailable, BrokerRefused)):
        log.error("%s on %s %s: %s", exc.code, request.method, request.url.path, exc)
        headers["Retry-After"] = "5"
    return JSONResponse(body, status_code=status_for(exc), headers=headers)


def create_app(
    settings: ServerSettings, store: Store | None = None, *, clock: Callable[[], float] = time.time
) -> FastAPI:
    """Build the fleet server app. A passed-in `store` stays the caller's to close; `clock` (unix
    seconds) drives rollout deadlines and maintenance windows (injectable for tests)."""
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

    repo_dir = None if settings.tuf_repo_dir is None else Path(settings.tuf_repo_dir)
    engine = RolloutEngine(
        the_store, poll_interval_s=settings.checkin_interval_s, repo_dir=repo_dir,
        public_url=settings.public_url, sweep_s=settings.rollout_sweep_s, clock=clock,
        registry=metrics.registry,
    )
    keeper = None
    if repo_dir is not None:
        from fleet_server.rollout.timestamps import TimestampKeeper

        keeper = TimestampKeeper(
            repo_dir, keys_dir=None if settings.tuf_keys_dir is None else Path(settings.tuf_keys_dir),
            passphrase=settings.tuf_key_passphrase, registry=metrics.registry, check_s=settings.tuf_check_s,
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        jobs: list[asyncio.Task[None]] = []
        try:
            await engine.load()
            if state.bridge is not None:
                state.bridge_task = asyncio.create_task(state.bridge.run(), name="mqtt-bridge")
                state.bridge_task.add_done_callback(_report_bridge_end)
            jobs.append(_start(engine.run_writer, "rollout-writer"))
            jobs.append(_start(engine.run_sweeper, "rollout-sweeper"))
            if keeper is not None:
                jobs.append(_start(keeper.run, "tuf-timestamp-keeper"))
            yield
        finally:
            for job in jobs:
                job.cancel()
            if jobs:
                await asyncio.wait(jobs)
            await _stop_bridge(state)
            if owns_store:
                the_store.close()

    app = FastAPI(title="Quanedge fleet server", version="0.1.0", lifespan=lifespan)
    app.state.fleet = state
    app.state.rollouts = engine
    app.state.timestamps = keeper
    app.state.admission = AdmissionService(the_store, accounts_from_settings(settings), settings)
    if settings.mqtt_enabled and not settings.broker_accounts_enabled:
        log.warning("MQTT bridge on, but no broker admin account: enrolled boxes get no MQTT identity "
                    "(run the broker from deploy/mosquitto and pass --broker-admin-username)")
    app.add_exception_handler(FleetError, _fleet_error)
    # The box's check-in first: it is the hot path and routes are matched in order.
    app.include_router(checkin.router)
    for module in (enrollment, admission, telemetry, boxes, health, rollouts, tuf):
        app.include_router(module.router)
    app.include_router(rollouts.sites_router)
    return app


def _start(job: Callable[[], Coroutine[Any, Any, None]], name: str) -> asyncio.Task[None]:
    """A lifespan-owned background job; its unexpected end is logged loudly."""
    task = asyncio.create_task(job(), name=name)

    def report(done: asyncio.Task[None]) -> None:
        if not done.cancelled() and done.exception() is not None:
            log.error("background job %s stopped", name, exc_info=done.exception())

    task.add_done_callback(report)
    return task


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
