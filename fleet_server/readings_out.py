"""Readings out of the fleet, for the city platform: one order across every box, paged by key.

Readings are read in ONE total order, `(ts, box_id, seq)` (time first; readings of the same
instant by box, then by the box's own sequence number), a page at a time: `ReadingsQuery.after`
is the key of the last reading already read, and the next page starts strictly after it (keyset
paging). No offset is counted, so a page costs the same at the start and a million rows in, and
readings stored between two pages never shift the ones after the key: every reading present
when the first page was read is returned exactly once, in order, whatever is ingested meanwhile.

What keyset paging cannot do: a reading stored AFTER the consumer passed its time (a box
uploading its buffer after an outage sends readings hours old) sorts before the key and is not
seen by that walk. Consumers page closed time windows and re-read the recent ones
(docs/data-out.md); `(box_id, seq)` identifies a reading, so re-reading is idempotent.

On the wire (fleet_server.api.readings) the key travels as an opaque cursor, `encode_cursor` /
`decode_cursor`: URL-safe base64 of a small versioned JSON array. Clients pass it back as they
got it; its content is not an interface.

    ReadingKey      (ts, box_id, seq): a position in the order
    ReadingsQuery   filters, the position to continue after, the page size (checked on creation)
    BoxReading      a stored reading with the box it came from
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from core.reading import MAX_NAME_LEN, Reading, RecordClass
from core.validate import INT64_MAX, TS_MAX, TS_MIN

__all__ = [
    "EXPORT_FIELDS", "BoxReading", "ReadingKey", "ReadingsQuery", "check_key", "decode_cursor", "encode_cursor",
]

_BOX_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # fleet_server.store.base.BOX_ID_PATTERN
_CURSOR_VERSION = 1
_MAX_CURSOR_CHARS = 512

#: The fields of one reading out, in order: the JSON object's keys and the CSV header.
EXPORT_FIELDS = ("box_id", "seq", "ts", "device", "point", "value", "unit", "quality", "cls", "text")


class ReadingKey(NamedTuple):
    """A reading's position in the order readings go out: (ts, box_id, seq)."""

    ts: float
    box_id: str
    seq: int


@dataclass(frozen=True, slots=True)
class ReadingsQuery:
    """Which readings, from where, how many.

    since <= ts < until (unix seconds; None: unbounded); box_id, device, point, cls match
    exactly (None: any); after: continue strictly after this key (None: from the start);
    limit: at most this many rows. ValueError, naming the field, when a value is out of range.
    """

    since: float | None = None
    until: float | None = None
    box_id: str | None = None
    device: str | None = None
    point: str | None = None
    cls: RecordClass | None = None
    after: ReadingKey | None = None
    limit: int = 1000

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not TS_MIN <= value <= TS_MAX):
                raise ValueError(f"{name} must be unix seconds between 1970 and 2100, got {value!r:.40}")
        if self.since is not None and self.until is not None and self.since > self.until:
            raise ValueError(f"until ({self.until}) must not be before since ({self.since})")
        if self.box_id is not None and not (isinstance(self.box_id, str) and _BOX_ID.fullmatch(self.box_id)):
            raise ValueError(f"box_id must be 1-64 characters [A-Za-z0-9._-], got {self.box_id!r:.80}")
        for name in ("device", "point"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and 0 < len(value) <= MAX_NAME_LEN):
                raise ValueError(f"{name} must be 1-{MAX_NAME_LEN} characters, got {value!r:.80}")
        if self.cls is not None and not isinstance(self.cls, RecordClass):
            raise ValueError(f"cls must be a RecordClass, got {self.cls!r:.40}")
        if self.after is not None:
            check_key(self.after)
        if type(self.limit) is not int or self.limit < 1:
            raise ValueError(f"limit must be a positive integer, got {self.limit!r:.40}")


@dataclass(frozen=True, slots=True)
class BoxReading:
    """A stored reading and the box it came from."""

    box_id: str
    reading: Reading

    @property
    def key(self) -> ReadingKey:
        assert self.reading.seq is not None  # every stored reading has one
        return ReadingKey(self.reading.ts, self.box_id, self.reading.seq)

    def to_dict(self) -> dict[str, Any]:
        """The reading out: {"box_id", "seq", "ts", "device", "point", "value", "unit", "quality",
        "cls", "text"} (quality the integer flag set, cls its name)."""
        r = self.reading
        return {"box_id": self.box_id, "seq": r.seq, "ts": r.ts, "device": r.device, "point": r.point,
                "value": r.value, "unit": r.unit, "quality": int(r.quality), "cls": r.cls.value, "text": r.text}

    def values(self) -> tuple[Any, ...]:
        """The fields of `to_dict`, in `EXPORT_FIELDS` order (a CSV row)."""
        r = self.reading
        return (self.box_id, r.seq, r.ts, r.device, r.point, r.value, r.unit, int(r.quality), r.cls.value, r.text)


def check_key(key: object) -> ReadingKey:
    """`key` as a ReadingKey with a finite ts in range, a well-formed box id, a seq in 1..2**63-1."""
    if not isinstance(key, tuple) or len(key) != 3:
        raise ValueError(f"a reading key is (ts, box_id, seq), got {key!r:.80}")
    ts, box_id, seq = key
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts) or not TS_MIN <= ts <= TS_MAX:
        raise ValueError(f"a reading key's ts must be unix seconds, got {ts!r:.40}")
    if not isinstance(box_id, str) or not _BOX_ID.fullmatch(box_id):
        raise ValueError(f"a reading key's box_id is malformed: {box_id!r:.80}")
    if type(seq) is not int or not 1 <= seq <= INT64_MAX:
        raise ValueError(f"a reading key's seq must be in 1..2**63-1, got {seq!r:.40}")
    return ReadingKey(float(ts), box_id, seq)


def encode_cursor(key: ReadingKey) -> str:
    """The opaque cursor for `key` (URL-safe, no padding). The float ts travels as its shortest
    repr, which reads back as the very same float, so no reading at the boundary is skipped."""
    text = json.dumps([_CURSOR_VERSION, key.ts, key.box_id, key.seq], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(token: str) -> ReadingKey:
    """The key `encode_cursor` made; ValueError when `token` is not one of its cursors."""
    if not isinstance(token, str) or not 0 < len(token) <= _MAX_CURSOR_CHARS:
        raise ValueError("the cursor is not one this server gave out (wrong length)")
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        content = json.loads(raw.decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("the cursor is not one this server gave out (not decodable)") from None
    if not isinstance(content, list) or len(content) != 4 or type(content[0]) is not int \
            or content[0] != _CURSOR_VERSION:
        raise ValueError("the cursor is not one this server gave out (unknown format)")
    try:
        return check_key(tuple(content[1:]))
    except ValueError as exc:
        raise ValueError(f"the cursor is not one this server gave out ({exc})") from None
