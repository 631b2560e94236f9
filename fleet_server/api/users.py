"""Named API users (admin role).

    POST   /api/v1/users            {"name", "role": "viewer"|"operator"|"admin", "note"}
                                    -> 201 {user..., "token"}   the token is shown this once
    GET    /api/v1/users[?revoked=true]  -> {"users": [user, ...]}   (revoked ones too with revoked=true)
    POST   /api/v1/users/{name}/token   -> {"name", "token"}   a new token, shown once; the old one is
                                    refused from the next request on (404 for a revoked user)
    DELETE /api/v1/users/{name}     -> user (revoked; its token is refused from the next request on)
user: {"name", "role", "note", "created_at", "created_by", "revoked_at", "revoked_by", "active"}.
Names are never reused (409 user_exists, also for a revoked name); "bootstrap-admin" is reserved.
"""

from __future__ import annotations

from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field

from fleet_server.access import USER_NAME_PATTERN, Principal, Role
from fleet_server.api.deps import FleetState, fleet, require_admin
from fleet_server.api.fields import CleanStr

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/users", tags=["users"])

UserName = Annotated[str, Path(pattern=USER_NAME_PATTERN)]
State = Annotated[FleetState, Depends(fleet)]
Admin = Annotated[Principal, Depends(require_admin)]


class CreateUser(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(pattern=USER_NAME_PATTERN)
    role: str = Field(pattern="^(viewer|operator|admin)$")
    note: CleanStr = Field("", max_length=200)


@router.post("", status_code=201)
async def create_user(body: CreateUser, state: State, admin: Admin) -> dict[str, Any]:
    user, token = await to_thread.run_sync(state.store.create_user, body.name, Role(body.role), body.note,
                                           admin.name)
    return {**user.to_dict(), "token": token}


@router.get("")
async def list_users(state: State, _: Admin, revoked: bool = False) -> dict[str, Any]:
    users = await to_thread.run_sync(state.store.list_users, revoked)
    return {"users": [u.to_dict() for u in users]}


@router.post("/{name}/token")
async def rotate_user_token(name: UserName, state: State, _: Admin) -> dict[str, str]:
    return {"name": name, "token": await to_thread.run_sync(state.store.rotate_user_token, name)}


@router.delete("/{name}")
async def revoke_user(name: UserName, state: State, admin: Admin) -> dict[str, Any]:
    return (await to_thread.run_sync(state.store.revoke_user, name, admin.name)).to_dict()
