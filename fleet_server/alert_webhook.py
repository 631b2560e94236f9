"""Webhook delivery of alert events: drains the store's alert outbox, in order, at least once.

Every alert state change (raised, acknowledged, resolved) is queued in `alert_outbox` in the
transaction that made it (fleet_server.store.sql_alerts). The "alert-webhook" leased job (one
replica delivers at a time, fleet_server.leases) calls `WebhookDelivery.step` every second: it
POSTs the oldest entries one by one as JSON {"event": ..., "alert": {...}} and deletes each only
after the receiver answered 2xx. A refused connection, a timeout or any other status stops the
round and backs off exponentially (`base_s` doubling up to `cap_s`) before that same entry is tried
again, so events arrive in the order they happened. A crash between the receiver's 2xx and the
delete sends that one event again: receivers dedupe on (alert.id, event).

The outbox is bounded: each round keeps at most `max_outbox` entries, dropping the oldest (logged
with their count), so a receiver gone for weeks cannot fill the disk. httpx errors become
`WebhookUnavailable` in `post` (the one boundary of this module).
Metrics: quanedge_fleet_alert_webhook_delivered_total, quanedge_fleet_alert_webhook_failures_total,
quanedge_fleet_alert_outbox_depth.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import httpx
from anyio import to_thread
from prometheus_client import CollectorRegistry, Counter, Gauge

from fleet_server.alerts import OutboxEntry
from fleet_server.errors import WebhookUnavailable
from fleet_server.store.base import Store

__all__ = ["WebhookDelivery"]

log = logging.getLogger(__name__)


class WebhookDelivery:
    """Deliver the alert outbox to `url` (module doc); `clock` drives the backoff (injectable)."""

    def __init__(self, store: Store, url: str, *, registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.time, max_outbox: int = 100_000, batch: int = 100,
                 base_s: float = 1.0, cap_s: float = 300.0, timeout_s: float = 10.0) -> None:
        self.store, self.url, self.clock = store, url, clock
        self.max_outbox, self.batch, self.base_s, self.cap_s = max_outbox, batch, base_s, cap_s
        self.timeout_s = timeout_s
        self.failures = 0                 # consecutive failed attempts
        self.next_attempt_at = 0.0        # no POST before this (clock time) while backing off
        self.delivered = Counter("quanedge_fleet_alert_webhook_delivered",
                                 "Alert events the webhook receiver took (2xx).", registry=registry)
        self.failed = Counter("quanedge_fleet_alert_webhook_failures",
                              "Failed webhook attempts (refused, timed out, non-2xx); each is retried.",
                              registry=registry)
        self.depth = Gauge("quanedge_fleet_alert_outbox_depth", "Alert events waiting for webhook delivery.",
                           registry=registry)

    async def post(self, client: httpx.AsyncClient, entry: OutboxEntry) -> None:
        """POST one event; WebhookUnavailable unless the receiver answered 2xx."""
        try:
            response = await client.post(self.url, content=entry.body.encode(),
                                         headers={"Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            raise WebhookUnavailable(f"alert webhook {self.url}: {type(exc).__name__}: {exc}") from exc
        if not 200 <= response.status_code < 300:
            raise WebhookUnavailable(f"alert webhook {self.url} answered {response.status_code}")

    async def step(self) -> None:
        """One round: trim the outbox, then, unless backing off, deliver in order until it is empty
        or an attempt fails; then publish the outbox depth."""
        dropped = await to_thread.run_sync(self.store.trim_alert_outbox, self.max_outbox)
        if dropped:
            log.error("alert outbox over %d entries: the %d oldest dropped undelivered", self.max_outbox, dropped)
        if self.clock() >= self.next_attempt_at:
            await self._drain()
        self.depth.set(await to_thread.run_sync(self.store.alert_outbox_depth))

    async def _drain(self) -> None:
        entries = await to_thread.run_sync(self.store.alert_outbox, self.batch)
        if not entries:
            return
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            while entries:
                for entry in entries:
                    try:
                        await self.post(client, entry)
                    except WebhookUnavailable as exc:
                        self._failed(exc)
                        return
                    await to_thread.run_sync(self.store.delete_alert_outbox, entry.id)
                    self.delivered.inc()
                    if self.failures:
                        log.info("alert webhook %s takes events again after %d failed attempts", self.url,
                                 self.failures)
                    self.failures = 0
                entries = await to_thread.run_sync(self.store.alert_outbox, self.batch)

    def _failed(self, exc: WebhookUnavailable) -> None:
        self.failed.inc()
        delay = min(self.cap_s, self.base_s * 2 ** min(self.failures, 32))
        self.failures += 1
        self.next_attempt_at = self.clock() + delay
        if self.failures == 1 or self.failures % 10 == 0:
            log.warning("%s (attempt %d failed; next in %.0f s)", exc, self.failures, delay)
