"""Boxes and their stored readings (viewer role).

    GET /api/v1/boxes                        -> {"boxes": [box, ...]}
    GET /api/v1/boxes/{box_id}               -> box
    GET /api/v1/boxes/{box_id}/readings?after_seq=0&limit=1000&device=&point=
        -> {"box_id", "readings": [row, ...], "next_after_seq"}
    GET /api/v1/boxes/{box_id}/seq          -> the box's seq tracking (issue 11):
        {"box_id", "tracking", "contig", "base", "fresh", "above": [[first, last], ...], "above_ranges",
         "gaps", "gap_readings", "gaps_by_reason", "dropped_ranges", "dropped_readings",
         "dropped_by_reason", "updated_at"}
Paging: pass `next_after_seq` back as `after_seq` until `readings` comes back empty.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query

from fleet_server.api.deps import FleetState, fleet, require_viewer
from fleet_server.errors import PayloadError, UnknownBox
from fleet_server.store.base import BOX_ID_PATTERN

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/boxes", tags=["boxes"], dependencies=[Depends(require_viewer)])

DEFAULT_LIMIT = 1000
BoxId = Annotated[str, Path(pattern=BOX_ID_PATTERN)]


@router.get("")
def list_boxes(state: Annotated[FleetState, Depends(fleet)]) -> dict[str, list[dict[str, Any]]]:
    return {"boxes": [box.to_dict() for box in state.store.list_boxes()]}


@router.get("/{box_id}")
def get_box(box_id: BoxId, state: Annotated[FleetState, Depends(fleet)]) -> dict[str, Any]:
    box = state.store.get_box(box_id)
    if box is None:
        raise UnknownBox(box_id)
    return box.to_dict()


@router.get("/{box_id}/seq")
def get_seq(box_id: BoxId, state: Annotated[FleetState, Depends(fleet)]) -> dict[str, Any]:
    """Every seq in [start..contig] is stored, announced dropped or reported in a gap; `above` are
    the covered ranges beyond (the holes between them are still in flight)."""
    return state.store.seq_status(box_id).to_dict()


@router.get("/{box_id}/readings")
def get_readings(
    box_id: BoxId,
    state: Annotated[FleetState, Depends(fleet)],
    after_seq: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    limit: Annotated[int | None, Query(ge=1, description="default min(1000, max_page)")] = None,
    device: str | None = None,
    point: str | None = None,
) -> dict[str, Any]:
    if limit is None:
        limit = min(DEFAULT_LIMIT, state.settings.max_page)
    elif limit > state.settings.max_page:
        raise PayloadError(
            "bad_query", f"limit must be at most {state.settings.max_page}, got {limit}", field="limit"
        )
    readings = state.store.readings(
        box_id, after_seq=after_seq, limit=limit, device=device or None, point=point or None
    )
    return {
        "box_id": box_id,
        "readings": [reading.to_row() for reading in readings],
        "next_after_seq": readings[-1].seq if readings else after_seq,
    }
