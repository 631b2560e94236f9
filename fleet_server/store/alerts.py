"""The storage seam for alerts (fleet_server.alerts): a small Protocol that `Store` includes.

Contract every backend keeps: ids only grow and are never reused; an alert is never deleted; at
most one unresolved (open or acknowledged) alert per key (kind, box_id, subject), the database's
own rule, so concurrent raisers make one; an alert changes only by a re-raise (count,
last_raised_at, detail), its one acknowledgement (the first acknowledger and time are kept) and its
one resolution; every raise that made a row, acknowledgement and resolution queues its webhook
event in the alert outbox in the same transaction; alerts of seq tracking are written in the
transaction that stores the batch which revealed them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from fleet_server.alert_rules import RuleFacts
from fleet_server.alerts import Alert, AlertKey, AlertQuery, OutboxEntry

__all__ = ["AlertStore"]


@runtime_checkable
class AlertStore(Protocol):
    def raise_alert(self, box_id: str | None, kind: str, detail: dict[str, Any], now: float,
                    subject: str = "") -> int:
        """Raise the key (kind, box_id, subject): a new open alert, or, while the key has an
        unresolved one, that one bumped (count + 1, last_raised_at, detail). Returns its id."""
        ...

    def resolve_alert(self, key: AlertKey, now: float) -> Alert | None:
        """Resolve the key's unresolved alert and return it; None when it has none."""
        ...

    def apply_alert_changes(self, raise_: Iterable[tuple[AlertKey, dict[str, Any]]], resolve: Iterable[AlertKey],
                            now: float) -> tuple[int, int]:
        """Raise and resolve in one transaction; (alerts newly raised, alerts resolved)."""
        ...

    def unresolved_alerts(self, kinds: Sequence[str]) -> list[Alert]:
        """Every open or acknowledged alert of these kinds, oldest first."""
        ...

    def alerts(self, query: AlertQuery) -> list[Alert]:
        """Alerts matching the query, oldest (lowest id) first, at most `query.limit`."""
        ...

    def ack_alert(self, alert_id: int, by: str, now: float) -> Alert:
        """Acknowledge an open alert and return it; one already acknowledged or resolved is
        returned unchanged (idempotent). `UnknownAlert` when there is no such alert."""
        ...

    def alert_outbox(self, limit: int) -> list[OutboxEntry]:
        """The oldest `limit` webhook events not yet delivered, in order."""
        ...

    def delete_alert_outbox(self, entry_id: int) -> None:
        """Forget a delivered event."""
        ...

    def trim_alert_outbox(self, keep: int) -> int:
        """Drop the oldest events beyond the newest `keep`; return how many were dropped."""
        ...

    def alert_outbox_depth(self) -> int:
        ...

    def alert_rule_facts(self, alarms_since: float, max_points: int = 10_000) -> RuleFacts:
        """What the alert rules read (fleet_server.alert_rules): boxes' last_seen, recent alarms."""
        ...
