"""The quarantine, read by an admin: messages acknowledged but not processed (see
fleet_server.store.quarantine).

    GET /api/v1/quarantine?after_id=0&limit=100&reason=bad_json
        -> {"messages": [{"id", "received_at", "transport", "topic", "reason", "detail", "size",
                          "truncated", "payload_text", "payload_base64"}, ...],
            "next_after_id": n, "total": count}
Paging: pass `next_after_id` back as `after_id` until `messages` comes back empty.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from starlette.concurrency import run_in_threadpool

from fleet_server.api.deps import FleetState, fleet, require_admin

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/quarantine", tags=["quarantine"], dependencies=[Depends(require_admin)])


@router.get("")
async def list_quarantine(
    state: Annotated[FleetState, Depends(fleet)],
    after_id: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    reason: Annotated[str | None, Query(pattern=r"^[a-z_]{1,64}$")] = None,
) -> dict[str, Any]:
    store = state.store

    def read() -> dict[str, Any]:
        messages = store.quarantined(after_id, limit, reason)
        return {"messages": [m.to_dict() for m in messages],
                "next_after_id": messages[-1].id if messages else after_id,
                "total": store.count_quarantined()}

    return await run_in_threadpool(read)
