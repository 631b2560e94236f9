"""Enrollment: the admin mints short-lived tokens; a box spends one to get its own credential.

    POST /api/v1/enrollment-tokens  (admin)  {"ttl_s", "max_uses", "note"} -> {"token", ...}
    POST /api/v1/enroll                      {"token", "box_id", "hardware", "site",
                                              "agent_version", "tags"}     -> {"box_id", "credential"}
Refusals: 403 unknown/expired/used-up token, 409 box id taken by other hardware (see app.py).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from fleet_server.api.deps import FleetState, fleet, require_admin
from fleet_server.errors import EnrollmentRefused
from fleet_server.store.base import BOX_ID_PATTERN

__all__ = ["EnrollRequest", "TokenRequest", "router"]

router = APIRouter(prefix="/api/v1", tags=["enrollment"])

MAX_TTL_S = 30 * 86400
Tag = Annotated[str, Field(min_length=1, max_length=64)]


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    ttl_s: float = Field(3600.0, gt=0, le=MAX_TTL_S, allow_inf_nan=False)
    max_uses: int = Field(1, ge=1, le=100_000)
    note: str = Field("", max_length=200)


class TokenResponse(BaseModel):
    token: str
    ttl_s: float
    max_uses: int


class EnrollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    token: str = Field(min_length=1, max_length=256)
    box_id: str = Field(pattern=BOX_ID_PATTERN)
    hardware: str = Field(min_length=1, max_length=128, description="stable hardware identity (serial)")
    site: str = Field("", max_length=128)
    agent_version: str = Field("", max_length=64)
    tags: list[Tag] = Field(default_factory=list, max_length=32)


class EnrollResponse(BaseModel):
    box_id: str
    credential: str


@router.post("/enrollment-tokens", dependencies=[Depends(require_admin)])
def create_enrollment_token(
    body: TokenRequest, state: Annotated[FleetState, Depends(fleet)]
) -> TokenResponse:
    token = state.store.create_enrollment_token(body.ttl_s, body.max_uses, body.note)
    return TokenResponse(token=token, ttl_s=body.ttl_s, max_uses=body.max_uses)


@router.post("/enroll")
def enroll(body: EnrollRequest, state: Annotated[FleetState, Depends(fleet)]) -> EnrollResponse:
    try:
        credential = state.store.enroll(
            body.token, body.box_id, body.hardware, body.site, body.agent_version, body.tags
        )
    except EnrollmentRefused as exc:
        state.metrics.enrollments.labels(exc.code).inc()
        raise
    state.metrics.enrollments.labels("enrolled").inc()
    return EnrollResponse(box_id=body.box_id, credential=credential)
