"""Alerts (fleet_server.alerts): list them (viewer and up), acknowledge one (operator and up).

    GET  /api/v1/alerts?kind=seq_gap&box_id=&state=open&after_id=0&limit=100
        -> {"alerts": [alert, ...], "next_after_id": n}
    POST /api/v1/alerts/{alert_id}/ack  -> alert   (idempotent: the first acknowledgement stays;
                                                     a resolved alert is returned as it is)
alert: {"id", "box_id", "kind", "subject", "detail", "state", "raised_at", "last_raised_at",
"count", "acked_at", "acked_by", "resolved_at", "open"}, oldest first. `state`: open |
acknowledged | resolved (absent: all); `open` (older clients) true: state open only, false: the
other states. Paging: pass
`next_after_id` back as `after_id` until `alerts` comes back empty. The ack is audited like
every state-changing call (api.audit_trail).
"""

from __future__ import annotations

from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Path, Query

from fleet_server.access import Principal
from fleet_server.alerts import KIND_PATTERN, AlertQuery, AlertState
from fleet_server.api.deps import FleetState, fleet, require_operator, require_viewer
from fleet_server.store.base import BOX_ID_PATTERN

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/alerts", tags=["alerts"])

State = Annotated[FleetState, Depends(fleet)]


@router.get("", dependencies=[Depends(require_viewer)])
async def list_alerts(
    state: State,
    kind: Annotated[str | None, Query(pattern=KIND_PATTERN)] = None,
    box_id: Annotated[str | None, Query(pattern=BOX_ID_PATTERN)] = None,
    open: Annotated[bool | None, Query(description="true: state open only; false: acknowledged or resolved")] = None,
    alert_state: Annotated[AlertState | None, Query(alias="state", description="open, acknowledged or resolved")]
    = None,
    after_id: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    query = AlertQuery(kind=kind, box_id=box_id, open=open, after_id=after_id, limit=limit, state=alert_state)
    alerts = await to_thread.run_sync(state.store.alerts, query)
    return {"alerts": [a.to_dict() for a in alerts], "next_after_id": alerts[-1].id if alerts else after_id}


@router.post("/{alert_id}/ack")
async def ack_alert(
    alert_id: Annotated[int, Path(ge=1, le=2**63 - 1)], state: State,
    operator: Annotated[Principal, Depends(require_operator)],
) -> dict[str, Any]:
    alert = await to_thread.run_sync(state.store.ack_alert, alert_id, operator.name, state.clock())
    return alert.to_dict()
