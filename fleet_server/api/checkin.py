"""The box's update contract (box credential: `Authorization: Bearer <credential>`).

    GET  /api/v1/boxes/{box_id}/checkin        [If-None-Match: "<etag>"] [X-Quanedge-Health: core.box_health]
         200 {"poll_interval_s": int, "action": null | {"action_id", "rollout_id", "kind",
              "target_name", "version", "repo_url", "deadline_s"[, "component"]}}  + ETag;  304 when unchanged
    PUT  /api/v1/boxes/{box_id}/inventory      {"agent_version", "models", "firmware", "hardware"} -> 200
    POST /api/v1/boxes/{box_id}/actions/{action_id}/status
         {"state", "reason", "reason_code", "detail"} -> 200 {"action_id", "state", "recorded"}
         idempotent; 409 {"error": "action_closed", "state", "reason_code"} once the server closed
         the action (timeout, cancel); 404 for an action that is not this box's.
Unknown credential 401, another box's id 403. `deadline_s` counts from the assignment (the
server's clock decides; after it the action is closed as failure/timeout). `component` (the model
or device name a model/firmware rollout is for) is present only when the rollout names one.

The check-in is the hot path (thousands a second on one process): no pydantic, no threadpool
hop unless the rollout engine must ask the store; the answer and its ETag come from memory.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from fleet_server.api.deps import bearer_token
from fleet_server.errors import BatchTooLarge, PayloadError
from fleet_server.rollout.engine import RolloutEngine
from fleet_server.store.base import BOX_ID_PATTERN

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/boxes", tags=["updates"])

_BOX_ID = re.compile(BOX_ID_PATTERN)
_ACTION_ID = re.compile(r"^r-[0-9a-f]{1,32}\.[A-Za-z0-9._-]{1,64}$")
_MAX_BODY = 64 * 1024
_NO_STORE = "no-cache"


def _engine(request: Request) -> RolloutEngine:
    engine: RolloutEngine = request.app.state.rollouts
    return engine


def _check_box_id(box_id: str) -> None:
    if not _BOX_ID.match(box_id):
        raise PayloadError("bad_path", f"box id must be 1-64 characters [A-Za-z0-9._-], got {box_id!r:.80}",
                           field="box_id")


def _matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    return header.strip() == "*" or any(tag.strip().removeprefix("W/") == etag for tag in header.split(","))


@router.get("/{box_id}/checkin")
async def checkin(box_id: str, request: Request) -> Response:
    _check_box_id(box_id)
    engine = _engine(request)
    box = await engine.authenticate(bearer_token(request), box_id)
    request.app.state.health.note(box.box_id, request.headers.get("x-quanedge-health"))
    answer = await engine.checkin(box, str(request.base_url))
    headers = {"etag": answer.etag, "cache-control": _NO_STORE}
    if _matches(request.headers.get("if-none-match"), answer.etag):
        return Response(status_code=304, headers=headers)
    return Response(answer.body, media_type="application/json", headers=headers)


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > _MAX_BODY:
        raise BatchTooLarge(f"body exceeds {_MAX_BODY} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > _MAX_BODY:
            raise BatchTooLarge(f"body exceeds {_MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@router.put("/{box_id}/inventory")
async def put_inventory(box_id: str, request: Request) -> JSONResponse:
    _check_box_id(box_id)
    engine = _engine(request)
    box = await engine.authenticate(bearer_token(request), box_id)
    await engine.save_inventory(box, await _body(request))
    return JSONResponse({"box_id": box_id, "saved": True})


@router.post("/{box_id}/actions/{action_id}/status")
async def post_status(box_id: str, action_id: str, request: Request) -> JSONResponse:
    _check_box_id(box_id)
    engine = _engine(request)
    box = await engine.authenticate(bearer_token(request), box_id)
    if not _ACTION_ID.match(action_id):
        raise PayloadError("bad_path", f"malformed action id {action_id!r:.100}", field="action_id")
    return JSONResponse(await engine.report(box, action_id, await _body(request)))
