"""Telemetry over HTTP: `POST /api/v1/telemetry` with `Authorization: Bearer <box credential>`.

    body {"box_id": "...", "readings": [[seq, ts, device, point, value, unit, quality, cls, text]]}
    200  {"accepted": n, "duplicates": d, "max_seq": m}
The body is read as bytes with a size cap (refused while streaming, not after buffering it all)
and handed to `IngestService`, the path MQTT uses too, which validates every row with from_row.
A box that goes away mid-upload (power cut, link lost) is routine on the field: it is counted
(quanedge_fleet_client_disconnects_total{route="telemetry"}), logged in one INFO line, and
answered 400 `client_disconnected` (to nobody); nothing of that body is stored, and the box
re-sends the batch once it is back.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from fleet_server.api.deps import FleetState, bearer_token, fleet
from fleet_server.errors import ClientGone
from fleet_server.ingest import IngestService

__all__ = ["TELEMETRY_PATH", "router"]

TELEMETRY_PATH = "/api/v1/telemetry"  # its body cap is settings.max_body_bytes (api.limits.BodyCap)
router = APIRouter(tags=["telemetry"])
log = logging.getLogger(__name__)


@router.post(TELEMETRY_PATH)
async def post_telemetry(request: Request, state: Annotated[FleetState, Depends(fleet)]) -> dict[str, int]:
    service = state.ingest
    box = await run_in_threadpool(service.authenticate, bearer_token(request), "http")
    declared = request.headers.get("content-length", "")
    if declared.isdigit():  # refuse early; chunked bodies are capped while streaming below
        service.check_size(int(declared), "http")
    try:
        body = await _read_capped(request, service)
    except ClientDisconnect:
        state.metrics.client_disconnected("telemetry")
        log.info("box %s went away during its telemetry upload (Content-Length %s); nothing stored, it will "
                 "re-send", box.box_id, declared or "none")
        raise ClientGone("the client closed the connection before sending the whole body") from None
    result = await run_in_threadpool(service.ingest, box.box_id, body, "http")
    return {"accepted": result.accepted, "duplicates": result.duplicates, "max_seq": result.max_seq}


async def _read_capped(request: Request, service: IngestService) -> bytes:
    """Read the body, refusing (413) as soon as it exceeds the cap instead of buffering it all."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        service.check_size(size, "http")
        chunks.append(chunk)
    return b"".join(chunks)
