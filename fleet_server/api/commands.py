"""Commands to boxes (fleet_server.commands): send (operator and up), list and read (viewer and up),
and the box-facing long-poll of HTTP boxes.

    POST /api/v1/commands   {"device", "command", "args": {}, "deadline_s": 300,
                             "box_ids": [...] | "site": "...", "tag": "..."}
         -> 201 {"commands": [command, ...]}   (one per box; 404 naming an unknown box, nothing sent)
    GET  /api/v1/commands?box_id=&state=&before_ts=&before_id=&limit=100
         -> {"commands": [...], "next": {"before_ts", "before_id"} | null}   newest first
    GET  /api/v1/commands/{command_id}  -> command
    GET  /api/v1/boxes/{box_id}/commands?wait_s=25   (box credential)
         -> {"commands": [wire, ...]}: the box's open commands (core.fleet_command), at once if any,
            else as soon as one is sent, else empty after wait_s (0..30)
command: {"command_id", "box_id", "device", "command", "args", "origin", "created_at", "deadline",
"state": pending|sent|done|refused|failed|expired, "sent_at", "sends", "finished_at", "message"}.
"""

from __future__ import annotations

from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse

from core.fleet_command import COMMAND_ID
from fleet_server.access import Principal
from fleet_server.api.deps import FleetState, bearer_token, fleet, require_operator, require_viewer
from fleet_server.command_service import MAX_WAIT_S, CommandService
from fleet_server.commands import STATES, CommandQuery, CommandRequest, check_command_id
from fleet_server.rollout.engine import RolloutEngine
from fleet_server.store.base import BOX_ID_PATTERN

__all__ = ["router"]

router = APIRouter(tags=["commands"])

State = Annotated[FleetState, Depends(fleet)]


def _service(request: Request) -> CommandService:
    service: CommandService = request.app.state.commands
    return service


@router.post("/api/v1/commands", status_code=201)
async def send_command(request: Request, operator: Annotated[Principal, Depends(require_operator)]) -> JSONResponse:
    parsed = CommandRequest.parse(await request.body())   # the body cap middleware bounds its size
    commands = await _service(request).send(parsed, operator.name)
    return JSONResponse({"commands": [c.to_dict() for c in commands]}, status_code=201)


@router.get("/api/v1/commands", dependencies=[Depends(require_viewer)])
async def list_commands(
    state: State,
    box_id: Annotated[str | None, Query(pattern=BOX_ID_PATTERN)] = None,
    command_state: Annotated[str | None, Query(alias="state", pattern="^(" + "|".join(STATES) + ")$")] = None,
    before_ts: Annotated[float | None, Query(ge=0, le=1e11)] = None,
    before_id: Annotated[str | None, Query(pattern=COMMAND_ID.pattern)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    before = None if before_ts is None or before_id is None else (before_ts, before_id)
    query = CommandQuery(box_id=box_id, state=command_state, before=before, limit=limit)
    found = await to_thread.run_sync(state.store.list_commands, query)
    following = ({"before_ts": found[-1].created_at, "before_id": found[-1].command_id}
                 if len(found) == limit else None)
    return {"commands": [c.to_dict() for c in found], "next": following}


@router.get("/api/v1/commands/{command_id}", dependencies=[Depends(require_viewer)])
async def get_command(command_id: Annotated[str, Path(max_length=40)], state: State) -> dict[str, Any]:
    command = await to_thread.run_sync(state.store.get_command, check_command_id(command_id))
    return command.to_dict()


@router.get("/api/v1/boxes/{box_id}/commands")
async def box_commands(box_id: Annotated[str, Path(pattern=BOX_ID_PATTERN)], request: Request,
                       wait_s: Annotated[int, Query(ge=0, le=MAX_WAIT_S)] = 0) -> dict[str, Any]:
    engine: RolloutEngine = request.app.state.rollouts
    box = await engine.authenticate(bearer_token(request), box_id)
    found = await _service(request).wait_for(box.box_id, wait_s)
    return {"commands": [c.wire().to_dict() for c in found]}
