"""Alerts: what the server concluded an operator must look at, kept until someone acknowledges it.

Generic on purpose (issue 11 raises the first kind; later issues add kinds and a console): an alert
is a kind, the box it concerns (None: not about one box), a JSON detail object, when it was raised
and who acknowledged it when. Kinds:

    seq_gap   seqs of a box that will never arrive (fleet_server.seq_tracking); detail
              {"first", "last", "missing", "reason": "unannounced" | "buffer_replaced" | "untracked"}

Read with `GET /api/v1/alerts` (viewer and up), acknowledged with `POST /api/v1/alerts/{id}/ack`
(operator and up, audited), or `quanedge fleet alerts list|ack`.

    FleetError
    └── UnknownAlert    no alert with that id    -> 404
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fleet_server.errors import FleetError

__all__ = ["KIND_PATTERN", "SEQ_GAP", "Alert", "AlertQuery", "UnknownAlert"]

#: A kind: 1-64 characters [a-z0-9_], starting with a letter.
KIND_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
SEQ_GAP = "seq_gap"


@dataclass(frozen=True, slots=True)
class Alert:
    """One raised alert; `acked_at` / `acked_by` stay None while it is open."""

    id: int
    box_id: str | None
    kind: str
    detail: dict[str, Any]
    raised_at: float
    acked_at: float | None = None
    acked_by: str | None = None

    @property
    def open(self) -> bool:
        return self.acked_at is None

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "box_id": self.box_id, "kind": self.kind, "detail": self.detail,
                "raised_at": self.raised_at, "acked_at": self.acked_at, "acked_by": self.acked_by,
                "open": self.open}


@dataclass(frozen=True, slots=True)
class AlertQuery:
    """Filters for listing alerts, oldest first: ids above `after_id` (the paging cursor), at most
    `limit`; `kind` and `box_id` match exactly; `open` True: unacknowledged only, False:
    acknowledged only, None: both."""

    kind: str | None = None
    box_id: str | None = None
    open: bool | None = None
    after_id: int = 0
    limit: int = field(default=100)


class UnknownAlert(FleetError):
    code = "unknown_alert"

    def __init__(self, alert_id: int) -> None:
        super().__init__(f"no alert with id {alert_id}")
