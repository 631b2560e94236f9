"""The agent's metrics and its health endpoint.

`Metrics` owns its own prometheus CollectorRegistry (never the process-global one), so two agents
in one test process, or a restart, never collide. Its methods match the scheduler's, pipeline's and
drain's observer Protocols. The buffer's figures are pulled at scrape time from a plain callable
(``metrics.buffer_stats = buffer.stats``), so the buffer knows nothing of prometheus:

    buffer_stats() -> {"depth": int, "bytes": int, "oldest_unsent_ts": float | None,
                       "dropped": {(reason, cls): count, ...}}

It runs on the event loop at every scrape, so it must be cheap (cached counters, no disk scan).

`serve_health` serves, on the box's one small HTTP listener (core.http_listener; no web framework):
``GET /metrics`` (prometheus text), ``GET /healthz`` (JSON from `ready()`, 200 when its "status" is
"ok", else 503), 404 elsewhere, 405 for other methods, 400 for malformed requests, 431 for an
oversized head. One request per connection; a client gets `REQUEST_TIMEOUT_S` to send it (408 otherwise).

Control hook: `post={"/commands": handler}` adds POST endpoints for local tools (`quanedge agent
command`). They answer only to loopback peers (403 otherwise, whatever address the server listens
on); the handler gets the request headers (lower-case names) and body and returns (status, JSON
body). Authorisation beyond that (the control token) is the handler's job (agent.commands).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from core.http_listener import HttpServer, Request, Response

__all__ = ["Metrics", "serve_health", "REQUEST_TIMEOUT_S", "health_header", "uplink_status"]

log = logging.getLogger(__name__)

BufferStats = Callable[[], Mapping[str, Any]]
PostHandler = Callable[[Mapping[str, str], bytes], Awaitable[tuple[int, bytes]]]
REQUEST_TIMEOUT_S = 5.0
_MAX_HEAD = 16_384
_MAX_HEADERS = 64
_MAX_BODY = 65536


class Metrics:
    """Every figure the agent exports. Methods are cheap; counters are thread-safe."""

    def __init__(self, buffer_stats: BufferStats | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._read = Counter("quanedge_readings_read", "Readings read from devices.", ["device"], registry=r)
        self._stored = Counter("quanedge_readings_stored", "Readings committed to the durable buffer.", registry=r)
        self._sent = Counter("quanedge_readings_sent", "Readings confirmed by an uplink.", ["uplink"], registry=r)
        self._online = Gauge("quanedge_device_online", "1 when the device answers, 0 when offline.", ["device"],
                             registry=r)
        self._errors = Counter("quanedge_device_errors", "Failed device polls by kind.", ["device", "kind"],
                               registry=r)
        self._uplink = Gauge("quanedge_uplink_connected", "1 when the uplink is connected.", ["uplink"], registry=r)
        self._refused = Counter("quanedge_readings_refused", "Readings refused before the buffer (bad text, "
                                "non-finite value): never stored.", registry=r)
        self._quarantined = Counter("quanedge_readings_quarantined", "Rows the uplink refused as malformed, "
                                    "moved to the buffer's quarantine table.", ["uplink"], registry=r)
        self._receiver_refused = Counter("quanedge_receiver_refused", "Pushes a device receiver refused, by "
                                         "reason (unauthenticated, forbidden_source, identity_mismatch, "
                                         "bad_event).", ["device", "reason"], registry=r)
        # The supervisor's status callable ({name: {"state", "restarts", ...}}), pulled at each scrape.
        self.components: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None
        # The buffer's stats callable, pulled at each scrape; set it once the buffer exists. Without
        # it the buffer gauges are absent (not zero) and drops come from `dropped()` pushes.
        self.buffer_stats: BufferStats | None = buffer_stats
        self._pushed_drops: dict[tuple[str, str], int] = {}
        self._drops_lock = threading.Lock()
        r.register(_BufferCollector(self, clock))

    def device_read(self, device: str, n: int = 1) -> None:
        self._read.labels(device=device).inc(n)

    def device_state(self, device: str, online: bool) -> None:
        self._online.labels(device=device).set(1 if online else 0)

    def device_error(self, device: str, kind: str) -> None:
        self._errors.labels(device=device, kind=kind).inc()

    def stored(self, n: int) -> None:
        self._stored.inc(n)

    def sent(self, uplink: str, n: int) -> None:
        self._sent.labels(uplink=uplink).inc(n)

    def uplink_state(self, uplink: str, connected: bool) -> None:
        self._uplink.labels(uplink=uplink).set(1 if connected else 0)

    def refused(self, n: int) -> None:
        self._refused.inc(n)

    def quarantined(self, uplink: str, n: int) -> None:
        self._quarantined.labels(uplink=uplink).inc(n)

    def receiver_refused(self, device: str, reason: str) -> None:
        self._receiver_refused.labels(device=device, reason=reason).inc()

    def dropped(self, reason: str, cls: str, n: int) -> None:
        """Push hook for a buffer's on_drop callback (may be called from the buffer's writer thread).

        The exported quanedge_readings_dropped_total comes from ONE source: `buffer_stats()["dropped"]`
        when a stats callable is set (the buffer's durable counts, which already include these drops),
        else the drops pushed here. Never both, so nothing is counted twice.
        """
        if n < 0:
            raise ValueError(f"dropped count must be >= 0, got {n}")
        with self._drops_lock:
            self._pushed_drops[(reason, cls)] = self._pushed_drops.get((reason, cls), 0) + n

    def pushed_drops(self) -> dict[tuple[str, str], int]:
        with self._drops_lock:
            return dict(self._pushed_drops)

    def render(self) -> bytes:
        """The prometheus text exposition of this registry."""
        return generate_latest(self.registry)


class _BufferCollector(Collector):
    def __init__(self, metrics: Metrics, clock: Callable[[], float]) -> None:
        self._metrics = metrics
        self._clock = clock

    def describe(self) -> list[Metric]:
        # Without describe() the registry would call collect() (and so buffer_stats) at registration.
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        extra: list[Metric] = []
        if self._metrics.components is not None:
            up = GaugeMetricFamily("quanedge_component_up", "1 while a supervised agent task runs, 0 while it is "
                                   "restarting or stopped.", labels=["component"])
            restarts = CounterMetricFamily("quanedge_component_restarts", "Restarts of a supervised agent task.",
                                           labels=["component"])
            for name, st in self._metrics.components().items():
                up.add_metric([name], 1.0 if st["state"] == "running" else 0.0)
                restarts.add_metric([name], float(st["restarts"]))
            extra = [up, restarts]
        return iter(list(self._collect()) + extra)

    def _collect(self) -> Iterator[Metric]:
        depth, size, dropped, age = self._families()
        stats_fn = self._metrics.buffer_stats
        if stats_fn is None:
            for (reason, cls), count in sorted(self._metrics.pushed_drops().items()):
                dropped.add_metric([reason, cls], float(count))
            return iter((dropped,))
        stats = stats_fn()
        oldest = stats["oldest_unsent_ts"]
        depth.add_metric([], float(stats["depth"]))
        size.add_metric([], float(stats["bytes"]))
        age.add_metric([], 0.0 if oldest is None else max(0.0, self._clock() - float(oldest)))
        for (reason, cls), count in sorted(stats["dropped"].items()):
            dropped.add_metric([str(reason), str(cls)], float(count))
        quarantine = GaugeMetricFamily("quanedge_quarantine_rows", "Rows kept in the buffer's quarantine table.")
        quarantine.add_metric([], float(stats.get("quarantined", 0)))
        return iter((depth, size, dropped, age, quarantine))

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("quanedge_buffer_depth", "Readings in the buffer not yet confirmed by an uplink."),
            GaugeMetricFamily("quanedge_buffer_bytes", "Bytes the buffer occupies on disk."),
            CounterMetricFamily("quanedge_readings_dropped", "Readings evicted or refused by the buffer.",
                                labels=["reason", "cls"]),
            GaugeMetricFamily("quanedge_oldest_unsent_age_seconds", "Age of the oldest unsent reading (0 if none)."),
        )


class UplinkState(Protocol):
    """What /healthz reads of the drain (agent.drain.Drain)."""

    name: str
    connected: bool
    sent_total: int
    last_error: str | None
    last_error_at: float | None
    quarantined: int
    last_quarantine: str | None


def uplink_status(drain: UplinkState, pending: int) -> dict[str, Any]:
    """The uplink's part of /healthz; "healthy" says whether it may count as up.

    Healthy when connected, or when idle: no error since the last success and nothing `pending`
    (unsent rows in the buffer). An HTTP uplink is "connected" only once a batch was confirmed,
    so a box with nothing to send has no proof either way, and nothing is wrong with it. An error
    carries its time (`last_error_at`, unix seconds); the drain clears both when the uplink works
    again, so a past failure does not linger in the report."""
    idle = not drain.connected and drain.last_error is None and pending == 0
    return {"name": drain.name, "connected": drain.connected, "idle": idle, "healthy": drain.connected or idle,
            "sent": drain.sent_total, "last_error": drain.last_error, "last_error_at": drain.last_error_at,
            "quarantined": drain.quarantined, "last_quarantine": drain.last_quarantine}


async def serve_health(
    metrics: Metrics,
    host: str,
    port: int,
    ready: Callable[[], Mapping[str, Any]],
    *,
    on_ready: Callable[[int], None] | None = None,
    post: Mapping[str, PostHandler] | None = None,
) -> None:
    """Serve /metrics and /healthz until cancelled; `on_ready(bound_port)` once listening (port 0 = any).

    `post` maps paths to loopback-only POST handlers (see the module docstring)."""
    routes = _Routes(metrics, ready, post or {})
    server = HttpServer(routes.handle, name="health", max_header=_MAX_HEAD, max_headers=_MAX_HEADERS,
                        max_body=_MAX_BODY, idle_timeout_s=REQUEST_TIMEOUT_S, first_request_timeout_s=REQUEST_TIMEOUT_S,
                        keep_alive=False, strict=True)
    await server.start(host, port)
    try:
        log.info("health endpoint on http://%s:%d (/metrics, /healthz)", host, server.port)
        if on_ready is not None:
            on_ready(server.port)
        await asyncio.Future()  # until cancelled
    finally:
        await server.stop()


_TEXT = "text/plain; charset=utf-8"
_NO_STORE = (("Cache-Control", "no-store"),)


class _Routes:
    """GET/HEAD /metrics and /healthz, and the loopback-only POST endpoints."""

    def __init__(self, metrics: Metrics, ready: Callable[[], Mapping[str, Any]],
                 post: Mapping[str, PostHandler]) -> None:
        self.metrics, self.ready, self.post = metrics, ready, post

    async def handle(self, req: Request) -> Response:
        if req.path in self.post:
            return await self._post(req, self.post[req.path])
        if req.path not in ("/metrics", "/healthz"):
            return Response(404, b"not found; try /metrics or /healthz\n", _TEXT, _NO_STORE)
        if req.method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n", _TEXT, (*_NO_STORE, ("Allow", "GET, HEAD")))
        try:
            if req.path == "/metrics":
                return Response(200, self.metrics.render(), CONTENT_TYPE_LATEST, _NO_STORE)
            report = self.ready()
            body = json.dumps(report, allow_nan=False).encode()
            return Response(200 if report.get("status") == "ok" else 503, body, "application/json", _NO_STORE)
        except Exception as exc:  # a broken stats/ready callable must show up as a 500, not kill the server
            log.exception("health endpoint failed to render %s", req.path)
            return Response(500, f"internal error: {type(exc).__name__}\n".encode(), _TEXT, _NO_STORE)

    async def _post(self, req: Request, handler: PostHandler) -> Response:
        if req.method != "POST":
            return Response(405, b"method not allowed\n", _TEXT, (*_NO_STORE, ("Allow", "POST")))
        try:
            loopback = ipaddress.ip_address(req.peer_host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            return Response(403, b"control endpoints answer only on loopback\n", _TEXT, _NO_STORE)
        try:
            status, reply = await handler(req.headers, req.body)
        except Exception as exc:  # a broken handler is a 500, never a dead server
            log.exception("control handler failed")
            return Response(500, f"internal error: {type(exc).__name__}\n".encode(), _TEXT, _NO_STORE)
        return Response(status, reply, "application/json", _NO_STORE)


def health_header(devices: Any, buffer: Any, data_dir: Path, clock: Callable[[], float] = time.time) -> str:
    """The box's key health figures for the check-in header (core.box_health): buffer depth, age of
    the oldest unsent reading, disk use of the data directory, and the devices offline now with
    the seconds since their last good read."""
    from core.box_health import BoxHealthReport

    now = clock()
    stats = buffer.stats()
    oldest = stats["oldest_unsent_ts"]
    try:
        usage = shutil.disk_usage(data_dir)
        disk = 100.0 * (usage.total - usage.free) / usage.total if usage.total else None
    except OSError:
        disk = None
    offline = {name: None if d.get("last_success") is None else max(0.0, now - d["last_success"])
               for name, d in devices.status().items() if d.get("online") is False}
    return BoxHealthReport(now, int(stats["depth"]), None if oldest is None else max(0.0, now - oldest), disk,
                           offline).to_header()
