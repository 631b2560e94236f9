"""The storage seam for alerts (fleet_server.alerts): a small Protocol that `Store` includes.

Contract every backend keeps: ids only grow and are never reused; an alert is never deleted or
changed except by its one acknowledgement (the first acknowledger and time are kept); alerts of
seq tracking are written in the transaction that stores the batch which revealed them.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from fleet_server.alerts import Alert, AlertQuery

__all__ = ["AlertStore"]


@runtime_checkable
class AlertStore(Protocol):
    def raise_alert(self, box_id: str | None, kind: str, detail: dict[str, Any], now: float) -> int:
        """Store a new open alert; return its id."""
        ...

    def alerts(self, query: AlertQuery) -> list[Alert]:
        """Alerts matching the query, oldest (lowest id) first, at most `query.limit`."""
        ...

    def ack_alert(self, alert_id: int, by: str, now: float) -> Alert:
        """Acknowledge an alert and return it; one already acknowledged is returned unchanged
        (idempotent). `UnknownAlert` when there is no such alert."""
        ...
