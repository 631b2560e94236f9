"""Liveness and metrics.

    GET /healthz  -> 200 {"status": "ok", "store": "ok", "boxes": n,
                          "mqtt": "connected"|"connecting"|"restarting"|"disabled",
                          "tasks": {name: {"state": "running"|"restarting", "restarts": n,
                                           "last_error": str|null, "last_error_at": unix s|null}},
                          "replica_id": this server's id (settings.replica),
                          "leases": {job: {"leader": bool, "expires_at": unix s|null}}}
                     503 {"status": "failing", ..., "failing": [task names]} when the store fails or
                     a supervised server task (mqtt-bridge, rollout-writer, credential-cache, command-dispatch,
                     box-health-writer, rollout-sweeper,
                     tuf-timestamp-keeper, readings-upkeep) has died and not yet run again for a
                     few seconds
                  "leases" names the leased periodic jobs (fleet_server.leases: rollout-timeouts,
                  tuf-timestamp, readings-upkeep) and whether this replica leads each right now
                  (expires_at: until when its lease runs unless renewed); a standby is healthy.
    GET /metrics  -> Prometheus text from the app's own registry
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from fleet_server.api.deps import FleetState, fleet
from fleet_server.errors import StoreError
from fleet_server.leases import Leases
from fleet_server.supervisor import Supervisor

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(request: Request, state: Annotated[FleetState, Depends(fleet)]) -> JSONResponse:
    supervisor: Supervisor = request.app.state.supervisor
    report: dict[str, object] = {"status": "ok", "store": "ok", "mqtt": "disabled"}
    try:
        report["boxes"] = state.store.count_boxes()
    except StoreError as exc:
        report.update(status="failing", store=str(exc))
    down = supervisor.down()
    if state.bridge is not None:
        if "mqtt-bridge" in down or state.bridge_task is None:
            report["mqtt"] = "restarting" if state.bridge_task is not None else "stopped"
        else:
            report["mqtt"] = "connected" if state.bridge.connected.is_set() else "connecting"
    report["tasks"] = {name: status.to_dict() for name, status in supervisor.status.items()}
    leases: Leases = request.app.state.leases
    report["replica_id"] = leases.replica_id
    report["leases"] = leases.report()
    if down:
        report.update(status="failing", failing=sorted(down))
    return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(state: Annotated[FleetState, Depends(fleet)]) -> Response:
    body, content_type = state.metrics.render()
    return Response(body, media_type=content_type)
