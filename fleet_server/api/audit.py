"""The audit log, read-only (admin role: it names every caller, their role and address).

    GET /api/v1/audit?user=&action=&since=&until=&before=&limit=100
        -> {"entries": [entry, ...], "next_before": id | null}
entry: {"id", "ts", "principal", "role", "method", "action", "target", "parameters", "source",
        "status", "outcome", "error"}, newest first. `user` and `action` match exactly (the action is
the route's name, e.g. create_rollout, revoke_user); `since` <= ts < `until`, each unix seconds or
an ISO 8601 time (UTC unless it names its offset). Paging: pass `next_before` back as `before`
until it comes back null. Writing happens in `audit_trail.AuditMiddleware`, never here.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Query

from fleet_server.access import AuditQuery
from fleet_server.api.deps import FleetState, fleet, require_admin
from fleet_server.errors import PayloadError

__all__ = ["parse_time", "router"]

router = APIRouter(prefix="/api/v1/audit", tags=["audit"], dependencies=[Depends(require_admin)])

TimeText = Annotated[str | None, Query(max_length=64, description="unix seconds or ISO 8601")]


def parse_time(text: str, field: str) -> float:
    """Unix seconds from '1764756000', '1764756000.5' or '2026-12-03T10:00:00[Z|+01:00]'."""
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise PayloadError("bad_query", f"{field} must be unix seconds or an ISO 8601 time, got {text!r:.64}",
                               field=field) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return moment.timestamp()
    if not 0 <= value <= 4_102_444_800:   # 1970 .. 2100
        raise PayloadError("bad_query", f"{field} must be a time between 1970 and 2100", field=field)
    return value


@router.get("")
async def read_audit(
    state: Annotated[FleetState, Depends(fleet)],
    user: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=128)] = None,
    since: TimeText = None,
    until: TimeText = None,
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    query = AuditQuery(
        principal=user or None, action=action or None,
        since=None if since is None else parse_time(since, "since"),
        until=None if until is None else parse_time(until, "until"), before=before, limit=limit,
    )
    entries = await to_thread.run_sync(state.store.audit_entries, query)
    return {"entries": [e.to_dict() for e in entries],
            "next_before": entries[-1].entry_id if len(entries) == limit else None}
