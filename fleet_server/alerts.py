"""Alerts: what the server concluded an operator must look at, deduplicated and tracked to the end.

An alert is a kind, the box it concerns (None: not about one box), a subject within that box (a
device/point name, a seq range, or ""), a JSON detail object, and its state:

    open --ack--> acknowledged --resolve--> resolved        (open --resolve--> resolved too)

The dedup key is (kind, box_id, subject): while a key has an unresolved (open or acknowledged)
alert, raising it again adds no row, it bumps that alert's `count` and `last_raised_at`. Once
resolved, raising the key again makes a NEW alert (a new id). Every state change (raised,
acknowledged, resolved) is written, in the same transaction, to an outbox that the webhook
delivery drains (fleet_server.alert_webhook). Kinds:

    seq_gap        seqs of a box that will never arrive (fleet_server.seq_tracking); subject
                   "<first>..<last>" so each gap stays its own alert; detail
                   {"first", "last", "missing", "reason": "unannounced" | "buffer_replaced" | "untracked"}
    box_silent     the box has not been heard from for --alert-silent-minutes (fleet_server.alert_rules)
    alarm_reading  the box stored an ALARM-class reading; subject "<device>/<point>"
    unsent_backlog, disk_full, device_offline: health rules (alert_rules; their facts are fed later)

Read with `GET /api/v1/alerts` (viewer and up), acknowledged with `POST /api/v1/alerts/{id}/ack`
(operator and up, audited), or `quanedge fleet alerts list|ack`.

    FleetError
    └── UnknownAlert    no alert with that id    -> 404
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from fleet_server.errors import FleetError

__all__ = ["ALERT_STATES", "KIND_PATTERN", "SEQ_GAP", "Alert", "AlertKey", "AlertQuery", "AlertState",
           "OutboxEntry", "UnknownAlert"]

#: A kind: 1-64 characters [a-z0-9_], starting with a letter.
KIND_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
SEQ_GAP = "seq_gap"

AlertState = Literal["open", "acknowledged", "resolved"]
ALERT_STATES: tuple[AlertState, ...] = ("open", "acknowledged", "resolved")


@dataclass(frozen=True, slots=True)
class AlertKey:
    """The dedup key: at most one unresolved alert per key."""

    kind: str
    box_id: str | None
    subject: str = ""


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert; `acked_*` stay None until acknowledged, `resolved_at` until resolved."""

    id: int
    box_id: str | None
    kind: str
    detail: dict[str, Any]
    raised_at: float
    acked_at: float | None = None
    acked_by: str | None = None
    subject: str = ""
    count: int = 1
    last_raised_at: float | None = None
    resolved_at: float | None = None

    @property
    def key(self) -> AlertKey:
        return AlertKey(self.kind, self.box_id, self.subject)

    @property
    def state(self) -> AlertState:
        if self.resolved_at is not None:
            return "resolved"
        return "open" if self.acked_at is None else "acknowledged"

    @property
    def open(self) -> bool:
        """Neither acknowledged nor resolved: nobody has looked at it and it still holds."""
        return self.state == "open"

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "box_id": self.box_id, "kind": self.kind, "subject": self.subject,
                "detail": self.detail, "state": self.state, "raised_at": self.raised_at,
                "last_raised_at": self.last_raised_at, "count": self.count, "acked_at": self.acked_at,
                "acked_by": self.acked_by, "resolved_at": self.resolved_at, "open": self.open}


@dataclass(frozen=True, slots=True)
class AlertQuery:
    """Filters for listing alerts, oldest first: ids above `after_id` (the paging cursor), at most
    `limit`; `kind` and `box_id` match exactly; `state` one of ALERT_STATES (None: any); `open`
    (kept for older clients) True: state open only, False: any other state, None: both."""

    kind: str | None = None
    box_id: str | None = None
    open: bool | None = None
    after_id: int = 0
    limit: int = field(default=100)
    state: AlertState | None = None


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One state change waiting for webhook delivery: `body` is the JSON document to POST,
    {"event": "raised" | "acknowledged" | "resolved", "alert": alert.to_dict()}."""

    id: int
    alert_id: int
    event: str
    body: str
    created_at: float


class UnknownAlert(FleetError):
    code = "unknown_alert"

    def __init__(self, alert_id: int) -> None:
        super().__init__(f"no alert with id {alert_id}")
