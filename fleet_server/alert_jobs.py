"""The "alert-rules" job: evaluate the rules (fleet_server.alert_rules) and sync the alerts with them.

A leased job (one replica at a time, fleet_server.leases) runs `AlertRulesJob.step` every
`--alert-rules-interval` seconds: it reads the facts from the store (boxes' last_seen, recent
ALARM readings, the health figures the boxes sent with their check-ins within HEALTH_STALE_S:
fleet_server.box_health), evaluates the rules at `clock()`, raises the alerts that newly hold
and resolves the unresolved alerts of the rules' kinds that no longer hold, in one store transaction (their
webhook events queued with them). Repeating a round changes nothing: a key already unresolved is
not raised again.

Without a webhook nobody drains the alert outbox, so this job empties it (`keep_outbox=0`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

from anyio import to_thread

from core.box_health import BoxHealthReport
from fleet_server.alert_rules import RULE_KINDS, BoxHealth, Thresholds, evaluate, reconcile
from fleet_server.store.base import Store

__all__ = ["AlertRulesJob"]

log = logging.getLogger(__name__)

#: Health reports older than this are not used: a box that stopped checking in is `box_silent`.
HEALTH_STALE_S = 900.0


def health_facts(stored: list[tuple[str, float, BoxHealthReport]]) -> tuple[BoxHealth, ...]:
    """The rules' view of the stored reports: the box's ages turned into fleet-clock times
    (received_at - age), so no box clock is trusted."""
    return tuple(BoxHealth(
        box_id,
        oldest_unsent=None if r.oldest_unsent_age_s is None else received_at - r.oldest_unsent_age_s,
        disk_used_pct=r.disk_used_pct,
        devices_last_ok={dev: 0.0 if age is None else received_at - age for dev, age in r.devices_offline.items()},
    ) for box_id, received_at, r in stored)


class AlertRulesJob:
    """Raise and resolve the rules' alerts (module doc). `keep_outbox` None: leave the outbox to the
    webhook delivery; a number: trim the outbox to that many entries each round."""

    def __init__(self, store: Store, thresholds: Thresholds, *, clock: Callable[[], float] = time.time,
                 keep_outbox: int | None = None) -> None:
        self.store, self.thresholds, self.clock, self.keep_outbox = store, thresholds, clock, keep_outbox

    async def step(self) -> None:
        now = self.clock()
        facts = await to_thread.run_sync(self.store.alert_rule_facts, now - self.thresholds.alarm_quiet_s)
        stored = await to_thread.run_sync(self.store.box_health, now - HEALTH_STALE_S)
        facts = replace(facts, health=health_facts(stored), health_fed=True)
        unresolved = await to_thread.run_sync(self.store.unresolved_alerts, RULE_KINDS)
        to_raise, to_resolve = reconcile(evaluate(facts, now, self.thresholds), unresolved, facts.kinds())
        if to_raise or to_resolve:
            raised, resolved = await to_thread.run_sync(self.store.apply_alert_changes, list(to_raise.items()),
                                                        to_resolve, now)
            log.info("alert rules: %d alert(s) raised, %d resolved", raised, resolved)
        if self.keep_outbox is not None:
            await to_thread.run_sync(self.store.trim_alert_outbox, self.keep_outbox)
