"""The "alert-rules" job: evaluate the rules (fleet_server.alert_rules) and sync the alerts with them.

A leased job (one replica at a time, fleet_server.leases) runs `AlertRulesJob.step` every
`--alert-rules-interval` seconds: it reads the facts from the store (boxes' last_seen, recent
ALARM readings), evaluates the rules at `clock()`, raises the alerts that newly hold and resolves
the unresolved alerts of the rules' kinds that no longer hold, in one store transaction (their
webhook events queued with them). Repeating a round changes nothing: a key already unresolved is
not raised again.

Without a webhook nobody drains the alert outbox, so this job empties it (`keep_outbox=0`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from anyio import to_thread

from fleet_server.alert_rules import RULE_KINDS, Thresholds, evaluate, reconcile
from fleet_server.store.base import Store

__all__ = ["AlertRulesJob"]

log = logging.getLogger(__name__)


class AlertRulesJob:
    """Raise and resolve the rules' alerts (module doc). `keep_outbox` None: leave the outbox to the
    webhook delivery; a number: trim the outbox to that many entries each round."""

    def __init__(self, store: Store, thresholds: Thresholds, *, clock: Callable[[], float] = time.time,
                 keep_outbox: int | None = None) -> None:
        self.store, self.thresholds, self.clock, self.keep_outbox = store, thresholds, clock, keep_outbox

    async def step(self) -> None:
        now = self.clock()
        facts = await to_thread.run_sync(self.store.alert_rule_facts, now - self.thresholds.alarm_quiet_s)
        unresolved = await to_thread.run_sync(self.store.unresolved_alerts, RULE_KINDS)
        to_raise, to_resolve = reconcile(evaluate(facts, now, self.thresholds), unresolved, facts.kinds())
        if to_raise or to_resolve:
            raised, resolved = await to_thread.run_sync(self.store.apply_alert_changes, list(to_raise.items()),
                                                        to_resolve, now)
            log.info("alert rules: %d alert(s) raised, %d resolved", raised, resolved)
        if self.keep_outbox is not None:
            await to_thread.run_sync(self.store.trim_alert_outbox, self.keep_outbox)
