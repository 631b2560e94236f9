"""Enrollment: the admin mints short-lived tokens; a box spends one to get its own identity.

    POST /api/v1/enrollment-tokens  (admin)  {"ttl_s", "max_uses", "note"} -> {"token", ...}
    POST /api/v1/enroll             {"token", "box_id", "hardware", "site", "agent_version", "tags",
                                     "credential" (the box's current one, to re-key)}
        200 {"status": "accepted", "box_id", "credential", "mqtt": {username, password, client_id,
             host, port, tls, topic_prefix} | null}          secrets returned once
        202 {"status": "pending", "box_id", "request"}      the id exists and no current credential
                                                            was shown: an admin decides; poll with:
    POST /api/v1/enroll/status      {"request"} -> 200 as above once accepted | 202 while pending
Refusals: 403 for a bad token (unknown/expired/used up: the same whatever the id), 403
`not_admitted` for an unknown, rejected or already collected request (one answer for all three),
503 when the broker did not confirm the box's account (nothing stored: retry).
Which ids exist is never told: a wrong credential makes any request pending, and a token problem
is answered before the id is looked at. (A valid token's holder can still tell a new id (200) from
an existing one (202): the token is the admin's pre-authorisation to enrol new boxes.)
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from fleet_server.admission import AdmissionService, Enrolled
from fleet_server.api.deps import FleetState, fleet, require_admin
from fleet_server.api.fields import CleanStr
from fleet_server.errors import FleetError
from fleet_server.store.admission import Application
from fleet_server.store.base import BOX_ID_PATTERN

__all__ = ["EnrollRequest", "TokenRequest", "admission", "router"]

router = APIRouter(prefix="/api/v1", tags=["enrollment"])

MAX_TTL_S = 30 * 86400
Tag = Annotated[CleanStr, Field(min_length=1, max_length=64)]
Secret = Annotated[str, Field(min_length=1, max_length=256)]


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    ttl_s: float = Field(3600.0, gt=0, le=MAX_TTL_S, allow_inf_nan=False)
    max_uses: int = Field(1, ge=1, le=100_000)
    note: CleanStr = Field("", max_length=200)


class TokenResponse(BaseModel):
    token: str
    ttl_s: float
    max_uses: int


class EnrollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    token: Secret | None = Field(None, description="enrolment token; optional when re-keying with `credential`")
    box_id: str = Field(pattern=BOX_ID_PATTERN)
    hardware: CleanStr = Field(min_length=1, max_length=128, description="stable hardware identity (serial)")
    site: CleanStr = Field("", max_length=128)
    agent_version: CleanStr = Field("", max_length=64)
    tags: list[Tag] = Field(default_factory=list, max_length=32)
    credential: Secret | None = Field(None, description="the box's current credential (re-key)")


class StatusRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    request: Secret


class EnrollResponse(BaseModel):
    status: str = "accepted"
    box_id: str
    credential: str
    mqtt: dict[str, Any] | None = None


class PendingResponse(BaseModel):
    status: str = "pending"
    box_id: str | None = None
    request: str | None = None


def admission(request: Request) -> AdmissionService:
    service: AdmissionService = request.app.state.admission
    return service


@router.post("/enrollment-tokens", dependencies=[Depends(require_admin)])
def create_enrollment_token(
    body: TokenRequest, state: Annotated[FleetState, Depends(fleet)]
) -> TokenResponse:
    token = state.store.create_enrollment_token(body.ttl_s, body.max_uses, body.note)
    return TokenResponse(token=token, ttl_s=body.ttl_s, max_uses=body.max_uses)


@router.post("/enroll", responses={202: {"model": PendingResponse}})
async def enroll(
    body: EnrollRequest, state: Annotated[FleetState, Depends(fleet)],
    service: Annotated[AdmissionService, Depends(admission)],
) -> EnrollResponse:
    app = Application(body.box_id, body.hardware, body.site, body.agent_version, tuple(body.tags))
    try:
        outcome = await service.enroll(body.token, app, body.credential)
    except FleetError as exc:
        state.metrics.enrollments.labels(exc.code).inc()
        raise
    if not isinstance(outcome, Enrolled):
        state.metrics.enrollments.labels("pending").inc()
        return _pending(body.box_id, outcome.request)  # type: ignore[return-value]
    state.metrics.enrollments.labels("enrolled").inc()
    return EnrollResponse(box_id=outcome.box_id, credential=outcome.credential, mqtt=outcome.mqtt)


@router.post("/enroll/status", responses={202: {"model": PendingResponse}})
async def enroll_status(
    body: StatusRequest, service: Annotated[AdmissionService, Depends(admission)]
) -> EnrollResponse:
    outcome = await service.poll(body.request)
    if outcome is None:
        return _pending(None, None)  # type: ignore[return-value]
    return EnrollResponse(box_id=outcome.box_id, credential=outcome.credential, mqtt=outcome.mqtt)


def _pending(box_id: str | None, request: str | None) -> JSONResponse:
    body = PendingResponse(box_id=box_id, request=request).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=202)
