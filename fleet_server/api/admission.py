"""Admission and decommission (admin only).

    GET  /api/v1/admission?state=pending|accepted|rejected|issued|all -> {"requests": [request, ...]}
    POST /api/v1/admission/{request_id}/accept                       -> request (box collects its
                                                                         credential at /enroll/status)
    POST /api/v1/admission/{request_id}/reject                       -> request
    POST /api/v1/boxes/{box_id}/revoke   -> {"box_id", "revoked": true, "broker_account_deleted": bool}
Revoking kills the box's HTTP credential and then its broker account (which disconnects it); a
503 means the broker did not confirm: the HTTP side is already dead, call revoke again.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query

from fleet_server.admission import AdmissionService
from fleet_server.api.deps import FleetState, fleet, require_admin
from fleet_server.api.enrollment import admission
from fleet_server.store.base import BOX_ID_PATTERN

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["admission"], dependencies=[Depends(require_admin)])

RequestId = Annotated[str, Path(pattern=r"^adm-[0-9a-f]{16}$")]
BoxId = Annotated[str, Path(pattern=BOX_ID_PATTERN)]


@router.get("/admission")
def list_requests(
    state: Annotated[FleetState, Depends(fleet)],
    filter_state: Annotated[Literal["pending", "accepted", "rejected", "issued", "all"],
                            Query(alias="state")] = "pending",
) -> dict[str, list[dict[str, Any]]]:
    requests = state.store.admission_requests(None if filter_state == "all" else filter_state)
    return {"requests": [r.to_dict() for r in requests]}


@router.post("/admission/{request_id}/accept")
def accept(request_id: RequestId, state: Annotated[FleetState, Depends(fleet)]) -> dict[str, Any]:
    return state.store.decide_admission(request_id, True).to_dict()


@router.post("/admission/{request_id}/reject")
def reject(request_id: RequestId, state: Annotated[FleetState, Depends(fleet)]) -> dict[str, Any]:
    return state.store.decide_admission(request_id, False).to_dict()


@router.post("/boxes/{box_id}/revoke")
async def revoke(box_id: BoxId, service: Annotated[AdmissionService, Depends(admission)]) -> dict[str, Any]:
    deleted = await service.revoke(box_id)
    return {"box_id": box_id, "revoked": True, "broker_account_deleted": deleted}
