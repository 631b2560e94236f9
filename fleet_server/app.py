"""The app factory: `create_app(settings, store=None) -> FastAPI`. No module-level state.

Wiring: one Store (settings.db_path: a SQLite file or a PostgreSQL URL, unless one is passed in),
one FleetMetrics with its own registry, one IngestService shared by the telemetry router and the
MQTT bridge, one
RolloutEngine (`app.state.rollouts`) behind the check-in and rollout routers, one
AdmissionService (`app.state.admission`: enrolment, admission and revocation, together with the
broker's per-box accounts). The lifespan loads the engine's memory from the store, then starts
under one `Supervisor` (`app.state.supervisor`: a task that dies is restarted with capped backoff
and /healthz is 503 until it runs again) the MQTT bridge (when settings.mqtt_host is set), the
rollout writer and sweeper (per-box timeouts) and, with an update repository, the TUF timestamp
keeper, and on PostgreSQL the readings upkeep (partitions made ahead, expired ones dropped);
on shutdown it cancels them all, then closes the store if the app created it.
Store-wide periodic work runs on one replica at a time, under a lease that fails over
(`fleet_server.leases`, `app.state.leases`, shown by /healthz): "rollout-timeouts" (the sweeper's
expiry of timed-out actions; its refresh of this process's memory runs on every replica),
"tuf-timestamp" (the keeper), "readings-upkeep", "alert-rules" (fleet_server.alert_jobs) and, with
settings.alert_webhook, "alert-webhook" (fleet_server.alert_webhook). Each replica's id is settings.replica.
Three pure ASGI middlewares guard the API, outermost first: `BodyCap` (a body over its route's
limit is refused before anything reads it), `AuditMiddleware` (records every state-changing call
and its outcome) and `AuthMiddleware` (resolves the bearer principal, 401 before the body is
read); the routes' `require_*` dependencies check the role.

This is also the ONE place where the FleetError tree becomes HTTP: every error body is
    {"error": "<code>", "detail": "<human message>"[, "row": i, "field": "<name>"]}
An exception outside that tree is a bug: it is logged with its traceback and answered
500 {"error": "internal", "detail": "internal server error"} (nothing of the exception leaks).
Request bodies are capped by `api.limits.BodyCap`, the outermost middleware (before parsing, before
any credential check): settings.max_body_bytes for telemetry, 8 MiB for creating a rollout, 64 KiB
for every other route.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from anyio import to_thread
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import Scope

from fleet_server.access import UnknownUser, UserExists
from fleet_server.admission import AdmissionService
from fleet_server.alert_jobs import AlertRulesJob
from fleet_server.alert_webhook import WebhookDelivery
from fleet_server.alerts import UnknownAlert
from fleet_server.api import (
    admission,
    alerts,
    audit,
    boxes,
    checkin,
    enrollment,
    health,
    quarantine,
    readings,
    rollouts,
    telemetry,
    tuf,
    users,
)
from fleet_server.api import commands as commands_api
from fleet_server.api.audit_trail import AuditMiddleware
from fleet_server.api.auth import AuthMiddleware, document_auth
from fleet_server.api.deps import FleetState
from fleet_server.api.limits import DEFAULT_LIMIT, ROLLOUT_LIMIT, BodyCap
from fleet_server.api.openapi import document_errors
from fleet_server.api.telemetry import TELEMETRY_PATH
from fleet_server.box_health import HealthBook
from fleet_server.broker import accounts_from_settings
from fleet_server.command_service import CommandService
from fleet_server.commands import UnknownCommand
from fleet_server.errors import (
    BadParameter,
    BatchTooLarge,
    BrokerRefused,
    BrokerUnavailable,
    ClientGone,
    EnrollmentRefused,
    FleetError,
    Forbidden,
    NotAuthenticated,
    PayloadError,
    StoreError,
    UnknownAdmission,
    UnknownBox,
)
from fleet_server.ingest import IngestService
from fleet_server.leases import Leases
from fleet_server.metrics import FleetMetrics
from fleet_server.mqtt_bridge import MqttBridge
from fleet_server.rollout.engine import RolloutEngine
from fleet_server.rollout.errors import (
    ActionClosed,
    RepositoryUnavailable,
    RolloutConflict,
    UnknownAction,
    UnknownRollout,
)
from fleet_server.settings import ServerSettings
from fleet_server.store.base import ReadingsUpkeep, Store
from fleet_server.store.open import open_store
from fleet_server.supervisor import Supervisor

__all__ = ["create_app", "status_for"]

log = logging.getLogger(__name__)

#: How often the "readings-upkeep" job runs (PostgreSQL): partitions are made 7 days ahead and
#: retention counts in days, so hourly is plenty (its lease ttl: 3 h; see fleet_server.leases).
READINGS_UPKEEP_S = 3600.0
COMMAND_DISPATCH_S = 1.0   # commands: expiry and re-sends (fleet_server.command_service)

#: How often the "alert-webhook" job looks at the outbox (its backoff while the receiver is down
#: is its own, fleet_server.alert_webhook).
ALERT_WEBHOOK_S = 1.0

# Most specific first.
_STATUS: tuple[tuple[type[FleetError], int], ...] = (
    (NotAuthenticated, 401),
    (Forbidden, 403),
    (EnrollmentRefused, 403),
    (UnknownBox, 404),
    (UnknownAdmission, 404),
    (UnknownRollout, 404),
    (UnknownAction, 404),
    (UnknownUser, 404),
    (UnknownAlert, 404),
    (UnknownCommand, 404),
    (UserExists, 409),
    (RolloutConflict, 409),
    (ActionClosed, 409),
    (RepositoryUnavailable, 503),
    (BatchTooLarge, 413),
    (BadParameter, 400),
    (ClientGone, 400),
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
    return error_response(exc, request.scope)


def error_response(exc: FleetError, scope: Scope) -> JSONResponse:
    """The HTTP answer to a FleetError (also used by the middlewares, which answer before routing)."""
    body: dict[str, object] = {"error": exc.code, "detail": str(exc)}
    if isinstance(exc, PayloadError):
        body.update({k: v for k, v in (("row", exc.row), ("field", exc.field)) if v is not None})
    if isinstance(exc, ActionClosed):
        body.update(exc.extra())
    headers = {}
    if isinstance(exc, NotAuthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, (StoreError, BrokerUnavailable, BrokerRefused)):
        log.error("%s on %s %s: %s", exc.code, scope.get("method"), scope.get("path"), exc)
        headers["Retry-After"] = "5"
    if isinstance(exc, BatchTooLarge):
        headers["Connection"] = "close"  # the rest of an unread body is not worth reading
    return _AsciiJSON(body, status_code=status_for(exc), headers=headers)


class _AsciiJSON(JSONResponse):
    """JSON escaped to ASCII: an error may quote what the client sent, lone surrogates included,
    which UTF-8 cannot encode (the default rendering would turn a 422 into a 500)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own 422 (the shape its OpenAPI documents: loc, msg, type, ctx), rendered safely:
    without echoing the refused `input` (up to 64 KiB, and NaN or a lone surrogate in it would not
    render), and with any non-finite number in `ctx` as text."""
    assert isinstance(exc, RequestValidationError)
    errors = [{k: v for k, v in error.items() if k != "input"} for error in exc.errors()]
    return _AsciiJSON({"detail": _finite(jsonable_encoder(errors))}, status_code=422)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """Any other exception: a bug. Logged in full here; the client learns nothing of it."""
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": "internal", "detail": "internal server error"}, status_code=500)


def create_app(
    settings: ServerSettings, store: Store | None = None, *, clock: Callable[[], float] = time.time
) -> FastAPI:
    """Build the fleet server app. A passed-in `store` stays the caller's to close; `clock` (unix
    seconds) drives rollout deadlines and maintenance windows (injectable for tests)."""
    owns_store = store is None
    the_store: Store = open_store(settings.db_path) if store is None else store
    metrics = FleetMetrics(the_store)
    ingest = IngestService(
        the_store, metrics, max_batch=settings.max_batch, max_body_bytes=settings.max_body_bytes
    )
    state = FleetState(
        settings=settings, store=the_store, metrics=metrics, ingest=ingest,
        bridge=MqttBridge(settings, ingest) if settings.mqtt_enabled else None, clock=clock,
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

    health_book = HealthBook(the_store, clock=clock)
    commands = CommandService(the_store, clock=clock,
                              publish=None if state.bridge is None else state.bridge.publish_command)
    supervisor = Supervisor(metrics.registry)
    # Store-wide periodic work: one replica at a time, under leases (fleet_server.leases).
    leases = Leases(the_store, settings.replica, registry=metrics.registry, clock=clock)
    timeouts = leases.job("rollout-timeouts", engine.expire, period_s=settings.rollout_sweep_s)
    dispatch = leases.job("command-dispatch", commands.dispatch, period_s=COMMAND_DISPATCH_S)
    tuf_job = None if keeper is None else leases.job("tuf-timestamp", keeper.check, period_s=settings.tuf_check_s)
    # Alerts: the rules every settings.alert_rules_s, and with a webhook its delivery every second.
    webhook = None if settings.alert_webhook is None else WebhookDelivery(
        the_store, settings.alert_webhook, registry=metrics.registry, clock=clock,
        max_outbox=settings.alert_outbox_max)
    rules = AlertRulesJob(the_store, settings.alert_thresholds, clock=clock,
                          keep_outbox=0 if webhook is None else None)
    rules_job = leases.job("alert-rules", rules.step, period_s=settings.alert_rules_s)
    webhook_job = None if webhook is None else leases.job("alert-webhook", webhook.step, period_s=ALERT_WEBHOOK_S)
    upkeep_job = None
    if isinstance(the_store, ReadingsUpkeep):  # PostgreSQL: daily readings partitions
        upkeep_job = leases.job("readings-upkeep", _readings_upkeep(the_store, settings.retention_days, clock),
                                period_s=READINGS_UPKEEP_S)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await engine.load()
            if state.bridge is not None:
                state.bridge_task = supervisor.start("mqtt-bridge", state.bridge.run)
            supervisor.start("rollout-writer", engine.run_writer)
            supervisor.start("credential-cache", engine.credentials.run)
            supervisor.start("command-dispatch", dispatch.run)
            supervisor.start("box-health-writer", health_book.run)
            # every replica: its own memory's refresh; the timeouts only while it holds their lease
            supervisor.start("rollout-sweeper", functools.partial(engine.run_sweeper, timeouts))
            if tuf_job is not None:
                supervisor.start("tuf-timestamp-keeper", tuf_job.run)
            if upkeep_job is not None:
                supervisor.start("readings-upkeep", upkeep_job.run)
            supervisor.start("alert-rules", rules_job.run)
            if webhook_job is not None:
                supervisor.start("alert-webhook", webhook_job.run)
            yield
        finally:
            await supervisor.stop()
            state.bridge_task = None
            if owns_store:
                the_store.close()

    app = FastAPI(title="Quanedge fleet server", version="0.1.0", lifespan=lifespan)
    app.state.fleet = state
    app.state.rollouts = engine
    app.state.commands = commands
    app.state.health = health_book
    app.state.timestamps = keeper
    app.state.supervisor = supervisor
    app.state.leases = leases
    app.state.admission = AdmissionService(the_store, accounts_from_settings(settings), settings)
    if settings.mqtt_enabled and not settings.broker_accounts_enabled:
        log.warning("MQTT bridge on, but no broker admin account: enrolled boxes get no MQTT identity "
                    "(run the broker from deploy/mosquitto and pass --broker-admin-username)")
    app.add_exception_handler(FleetError, _fleet_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(Exception, _unexpected)
    # The box's check-in first: it is the hot path and routes are matched in order.
    app.include_router(checkin.router)
    for module in (enrollment, admission, telemetry, boxes, readings, health, rollouts, tuf, quarantine, users, audit,
                   alerts, commands_api):
        app.include_router(module.router)
    app.include_router(rollouts.sites_router)
    document_errors(app)
    document_auth(app)
    # The last added runs first: body cap (a body is refused before any other layer touches the
    # request) -> audit (records every outcome) -> auth (401 before the body is read) -> routes.
    app.add_middleware(AuthMiddleware, state=state, render_error=error_response)
    app.add_middleware(AuditMiddleware, state=state, clock=clock)
    app.add_middleware(BodyCap, refuse=_body_refusal(metrics), default=DEFAULT_LIMIT,
                       limits={TELEMETRY_PATH: settings.max_body_bytes, "/api/v1/rollouts": ROLLOUT_LIMIT})
    return app


def _readings_upkeep(store: ReadingsUpkeep, retention_days: dict[str, int],
                     clock: Callable[[], float]) -> Callable[[], Awaitable[None]]:
    """The "readings-upkeep" job's step: the coming days' partitions, the expired ones dropped."""

    async def upkeep() -> None:
        created, dropped = await to_thread.run_sync(store.upkeep, clock(), retention_days)
        if created or dropped:
            log.info("readings upkeep: %d partition(s) created, %d dropped past retention", len(created),
                     len(dropped))

    return upkeep


def _body_refusal(metrics: FleetMetrics) -> Callable[[Any, FleetError], JSONResponse]:
    def refuse(scope: Any, exc: FleetError) -> JSONResponse:
        if scope["path"] == TELEMETRY_PATH:
            metrics.rejected("http", exc.code)
        return error_response(exc, scope)

    return refuse
