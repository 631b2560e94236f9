"""Liveness and metrics.

    GET /healthz  -> 200 {"status": "ok", "store": "ok", "mqtt": "connected"|"connecting"|"disabled"}
                     503 when the store fails or the MQTT bridge has stopped (an orchestrator restarts us)
    GET /metrics  -> Prometheus text from the app's own registry
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from fleet_server.api.deps import FleetState, fleet
from fleet_server.errors import StoreError

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(state: Annotated[FleetState, Depends(fleet)]) -> JSONResponse:
    report: dict[str, object] = {"status": "ok", "store": "ok", "mqtt": "disabled"}
    try:
        report["boxes"] = state.store.count_boxes()
    except StoreError as exc:
        report.update(status="failing", store=str(exc))
    if state.bridge is not None:
        task = state.bridge_task
        if task is None or task.done():
            report.update(status="failing", mqtt="stopped")
        else:
            report["mqtt"] = "connected" if state.bridge.connected.is_set() else "connecting"
    return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)


@router.get("/metrics")
def metrics(state: Annotated[FleetState, Depends(fleet)]) -> Response:
    body, content_type = state.metrics.render()
    return Response(body, media_type=content_type)
