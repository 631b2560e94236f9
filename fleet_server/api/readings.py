"""Readings out to the city platform (viewer role): every box's readings in one order, paged or streamed.

    GET /api/v1/readings?since=&until=&box=&device=&point=&cls=&limit=&cursor=
        -> {"readings": [reading, ...], "next_cursor": "<opaque>" | null}
    GET /api/v1/readings/export?format=ndjson|csv&since=&until=&box=&device=&point=&cls=
        -> every matching reading, streamed: NDJSON (application/x-ndjson, one reading object a
           line) or CSV (text/csv, a header line then one row a reading, RFC 4180 quoting)
reading: {"box_id", "seq", "ts", "device", "point", "value", "unit", "quality", "cls", "text"}

Order: (ts, box_id, seq), the same for pages and export (fleet_server.readings_out). Filters:
since <= ts < until, each unix seconds or ISO 8601 (UTC unless it names its offset); box, device,
point and cls (routine | event | alarm) match exactly; an empty value is the same as none.
Paging: pass `next_cursor` back as `cursor` with the same filters until it comes back null; the
cursor is opaque. `limit` is 1..max_page (default min(1000, max_page)).

Every parameter is checked here, at the boundary: a malformed or out-of-range value, since after
until, an unknown parameter or one given twice is answered 400 {"error": "bad_parameter",
"detail", "field": "<the parameter>"}; a box that is not enrolled 404.

The export reads the store a page at a time (`EXPORT_PAGE` rows) in a worker thread, so memory
stays bounded and the event loop free; its first page is read before the answer starts, so an
unknown box or a store failure is still a proper error status. A store failure later is logged
in one line and cuts the stream off without its end (the server closes the connection with the
chunked body unterminated), so a client can tell an export that failed from one that ended.
A client that goes away stops it: no further page is read.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.types import Send

from core.reading import MAX_NAME_LEN, RecordClass
from core.validate import TS_MAX, TS_MIN, check_text
from fleet_server.api.audit import parse_time
from fleet_server.api.deps import FleetState, fleet, require_viewer
from fleet_server.errors import BadParameter, FleetError, PayloadError
from fleet_server.readings_out import EXPORT_FIELDS, ReadingKey, ReadingsQuery, decode_cursor, encode_cursor
from fleet_server.store.base import Store, check_box_id

__all__ = ["EXPORT_PAGE", "FORMATS", "router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/readings", tags=["readings"], dependencies=[Depends(require_viewer)])

DEFAULT_LIMIT = 1000
#: Rows the export reads (and holds) at a time.
EXPORT_PAGE = 2000
#: format -> media type of the export.
FORMATS = {"ndjson": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}

State = Annotated[FleetState, Depends(fleet)]
_FILTERS = ("since", "until", "box", "device", "point", "cls")
_PAGE_PARAMS = frozenset({*_FILTERS, "limit", "cursor"})
_EXPORT_PARAMS = frozenset({*_FILTERS, "format"})
_CLASSES = ", ".join(c.value for c in RecordClass)

Since = Annotated[str | None, Query(description="readings at or after this time: unix seconds or ISO 8601")]
Until = Annotated[str | None, Query(description="readings before this time: unix seconds or ISO 8601")]
Box = Annotated[str | None, Query(description="one box's readings only (its box id)")]
Device = Annotated[str | None, Query(description="one device's readings only")]
Point = Annotated[str | None, Query(description="one point's readings only")]
Cls = Annotated[str | None, Query(description=f"one record class only: {_CLASSES}")]

_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
_REFUSALS: dict[int | str, dict[str, Any]] = {
    400: {"description": "A parameter refused; `field` names it", "content": _ERROR},
    404: {"description": "`box` names no enrolled box", "content": _ERROR},
}


@router.get("", responses=_REFUSALS)
async def read_readings(
    request: Request, state: State, since: Since = None, until: Until = None, box: Box = None,
    device: Device = None, point: Point = None, cls: Cls = None,
    limit: Annotated[str | None, Query(description="rows per page, 1..max_page (default min(1000, max_page))")]
    = None,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page (opaque)")] = None,
) -> dict[str, Any]:
    """A page of readings across boxes in (ts, box_id, seq) order, and the cursor of the next."""
    _check_names(request, _PAGE_PARAMS)
    page_size = _limit(limit, state.settings.max_page)
    after = None
    if cursor:
        try:
            after = decode_cursor(cursor)
        except ValueError as exc:
            raise BadParameter("cursor", str(exc)) from None
    query = _query(since, until, box, device, point, cls, after, page_size)
    rows, following = await to_thread.run_sync(state.store.readings_page, query)
    return {"readings": [row.to_dict() for row in rows],
            "next_cursor": None if following is None else encode_cursor(following)}


@router.get("/export", response_class=StreamingResponse, responses={
    200: {"description": "Every matching reading, in (ts, box_id, seq) order",
          "content": {"application/x-ndjson": {"schema": {"type": "string"}},
                      "text/csv": {"schema": {"type": "string"}}}},
    **_REFUSALS,
})
async def export_readings(
    request: Request, state: State,
    fmt: Annotated[str | None, Query(alias="format", description="ndjson (default) or csv")] = None,
    since: Since = None, until: Until = None, box: Box = None, device: Device = None, point: Point = None,
    cls: Cls = None,
) -> StreamingResponse:
    """Stream every matching reading: NDJSON or CSV, read from the store a page at a time."""
    _check_names(request, _EXPORT_PARAMS)
    kind = fmt or "ndjson"
    if kind not in FORMATS:
        raise BadParameter("format", f"format must be ndjson or csv, got {kind!r:.40}")
    query = _query(since, until, box, device, point, cls, None, EXPORT_PAGE)
    first = await to_thread.run_sync(_encoded_page, state.store, query, kind, True)
    return _ExportResponse(_stream(state.store, query, kind, first), media_type=FORMATS[kind],
                           headers={"Content-Disposition": f'attachment; filename="readings.{kind}"'})


# -- the boundary ------------------------------------------------------------------------------------

def _check_names(request: Request, allowed: frozenset[str]) -> None:
    """Refuse a parameter the call does not take (a typo would otherwise widen the query
    silently) and one given twice (which one would count?)."""
    seen: set[str] = set()
    for name, _ in request.query_params.multi_items():
        if name not in allowed:
            raise BadParameter(name[:64], f"unknown parameter {name!r:.64}; this call takes "
                                          f"{', '.join(sorted(allowed))}")
        if name in seen:
            raise BadParameter(name, f"{name} is given more than once")
        seen.add(name)


def _limit(text: str | None, max_page: int) -> int:
    if not text:
        return min(DEFAULT_LIMIT, max_page)
    if not (text.isascii() and text.isdigit()) or len(text) > 18 or not 1 <= int(text) <= max_page:
        raise BadParameter("limit", f"limit must be an integer 1..{max_page}, got {text!r:.40}")
    return int(text)


def _time(text: str | None, name: str) -> float | None:
    if not text:
        return None
    try:
        value = parse_time(text, name)
    except PayloadError as exc:
        raise BadParameter(name, str(exc)) from None
    if not TS_MIN <= value <= TS_MAX:
        raise BadParameter(name, f"{name} must be a time between 1970 and 2100, got {text!r:.64}")
    return value


def _query(since_text: str | None, until_text: str | None, box: str | None, device: str | None,
           point: str | None, cls_text: str | None, after: ReadingKey | None, limit: int) -> ReadingsQuery:
    since, until = _time(since_text, "since"), _time(until_text, "until")
    if since is not None and until is not None and since > until:
        raise BadParameter("until", f"until ({until_text!r:.64}) must not be before since ({since_text!r:.64})")
    if box:
        try:
            check_box_id(box)
        except ValueError:
            raise BadParameter("box", f"box must be a box id: 1-64 characters [A-Za-z0-9._-], got {box!r:.80}") \
                from None
    for name, text in (("device", device), ("point", point)):
        if text:
            try:
                check_text(text, name, max_len=MAX_NAME_LEN)
            except ValueError as exc:
                raise BadParameter(name, str(exc)) from None
    record_class = None
    if cls_text:
        try:
            record_class = RecordClass(cls_text)
        except ValueError:
            raise BadParameter("cls", f"cls must be one of {_CLASSES}, got {cls_text!r:.40}") from None
    return ReadingsQuery(since=since, until=until, box_id=box or None, device=device or None,
                         point=point or None, cls=record_class, after=after, limit=limit)


# -- the export stream -------------------------------------------------------------------------------

def _encoded_page(store: Store, query: ReadingsQuery, kind: str, header: bool) -> tuple[bytes, ReadingKey | None]:
    """One page read and encoded (in a worker thread): its bytes and the key to continue after."""
    rows, following = store.readings_page(query)
    if kind == "ndjson":
        text = "".join(json.dumps(row.to_dict(), ensure_ascii=False, separators=(",", ":")) + "\n"
                       for row in rows)
    else:
        out = io.StringIO()
        writer = csv.writer(out)
        if header:
            writer.writerow(EXPORT_FIELDS)
        writer.writerows(row.values() for row in rows)
        text = out.getvalue()
    return text.encode("utf-8"), following


class _ExportResponse(StreamingResponse):
    """A StreamingResponse that, when the store fails midway, logs one line and leaves the answer
    unfinished: no final chunk, so the server closes the connection ("ASGI callable returned
    without completing response") and the client sees the export cut off, never complete."""

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except FleetError as exc:
            log.error("readings export broke off: %s", exc)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _stream(store: Store, query: ReadingsQuery, kind: str,
                  first: tuple[bytes, ReadingKey | None]) -> AsyncIterator[bytes]:
    chunk, following = first
    pages = 1
    if chunk:
        yield chunk
    while following is not None:
        chunk, following = await to_thread.run_sync(_encoded_page, store, replace(query, after=following), kind,
                                                    False)
        pages += 1
        if chunk:
            yield chunk
    log.debug("export of %d page(s) (%s) ended", pages, kind)
