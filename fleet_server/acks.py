"""The fleet server's end-to-end acknowledgements to boxes on MQTT (`{prefix}/{box}/ack`).

A box deletes a batch from its buffer only when this ack says the server STORED it (the broker's
PUBACK only says the broker holds it). The MQTT bridge publishes one ack per telemetry message,
after the store committed it and before the message is acknowledged to the broker:
    stored:   {"first": a, "last": b, "rows": n, "stored": s, "duplicates": d}
    refused:  {"first": a, "last": b, "rows": n,
               "refused": {"code": c, "detail": "...", "row": i, "seq": s, "field": f}}
A re-delivered or re-sent batch is acknowledged again (its rows count as duplicates). A refusal
is published when the seq range can be read from the payload at all; `agent.uplink.acks` is the
box-side reader of both.
"""

from __future__ import annotations

import json
from typing import Any

from fleet_server.errors import FleetError, PayloadError

__all__ = ["refused_ack", "stored_ack"]

_MAX_SEQ = 2**63 - 1
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode


def stored_ack(first: int, last: int, rows: int, stored: int, duplicates: int) -> bytes:
    return _ENCODE({"first": first, "last": last, "rows": rows, "stored": stored,
                    "duplicates": duplicates}).encode()


def refused_ack(payload: bytes, exc: BaseException) -> bytes | None:
    """The refusal for a telemetry payload the server would not store, or None when the payload
    does not even say which seqs it carries (then nobody can be told; it stays in the quarantine)."""
    rows = _rows_of(payload)
    if rows is None:
        return None
    first, last = _seq(rows[0]), _seq(rows[-1])
    if first is None or last is None or first > last:
        return None
    code = exc.code if isinstance(exc, FleetError) else "internal"
    refused: dict[str, Any] = {"code": code, "detail": str(exc)[:300]}
    if isinstance(exc, PayloadError) and exc.row is not None and 0 <= exc.row < len(rows):
        refused["row"] = exc.row
        seq = _seq(rows[exc.row])
        if seq is not None:
            refused["seq"] = seq
        if exc.field:
            refused["field"] = exc.field
    return _ENCODE({"first": first, "last": last, "rows": len(rows), "refused": refused}).encode()


def _rows_of(payload: bytes) -> list[Any] | None:
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    rows = body.get("readings") if isinstance(body, dict) else None
    return rows if isinstance(rows, list) and rows else None


def _seq(row: Any) -> int | None:
    if not isinstance(row, list) or not row:
        return None
    seq = row[0]
    if isinstance(seq, int) and not isinstance(seq, bool) and 1 <= seq <= _MAX_SEQ:
        return seq
    return None
