"""The telemetry body every uplink sends and the fleet server's ingest parses.

    {"box_id": "<box>", "readings": [[seq, ts, device, point, value, unit, quality, cls, text], ...],
     "low": <seq>, "base": <seq>, "dropped": [[first, last, reason], ...]}

`low`, `base` and `dropped` are the buffer's delivery marks (agent.buffer_drops): what the fleet
server needs to tell a reading the box dropped (announced) from one lost on the way (a seq gap).
They are optional: a body without them is a batch from an older agent.

Compact JSON (no spaces), ASCII-only (other characters \\u-escaped), no NaN/Infinity. The same bytes go to HTTP
``POST /api/v1/telemetry`` and to MQTT ``{prefix}/{box_id}/telemetry``. Rows come from
`Reading.to_row`, the only encoder of the wire row.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from agent.buffer_drops import DeliveryMarks
from core.reading import Reading

__all__ = ["encode_batch"]

_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode_batch(box_id: str, batch: Sequence[Reading], marks: DeliveryMarks | None = None) -> bytes:
    """Encode one batch as the telemetry body.

    Raises ValueError when the batch cannot be put on the wire (a NaN or infinite value, an
    unassigned seq); the message names the first offending row so the fault can be traced to
    the stage that produced it.
    """
    rows = [reading.to_row() for reading in batch]
    if any(row[0] is None for row in rows):
        raise ValueError(f"batch for box {box_id!r} holds a reading without seq: {_first_unsequenced(rows)}")
    try:
        body: dict[str, object] = {"box_id": box_id, "readings": rows}
        if marks is not None:
            body.update(marks.to_json())
        text = _ENCODER.encode(body)
    except ValueError as exc:
        raise ValueError(f"batch for box {box_id!r} cannot be encoded: {_first_bad_row(rows) or exc}") from exc
    return text.encode("ascii")  # ensure_ascii: non-ASCII text is \u-escaped, the body is plain ASCII


def _first_bad_row(rows: list[list[object]]) -> str | None:
    """The slow path, only on failure: find the row the encoder choked on."""
    for index, row in enumerate(rows):
        try:
            _ENCODER.encode(row)
        except ValueError as exc:
            return f"row {index} {row!r:.200} ({exc})"
    return None


def _first_unsequenced(rows: list[list[object]]) -> str:
    for index, row in enumerate(rows):
        if row[0] is None:
            return f"row {index} {row!r:.200}"
    return "?"  # pragma: no cover - only called when such a row exists
