"""The one value that flows down the data path: a `Reading`.

A reading is small and frozen. The buffer assigns `seq` (box-local, strictly increasing)
when it commits the reading; until then `seq` is None.

Wire form (used by every uplink and by the fleet server's ingest) is a compact row:
    [seq, ts, device, point, value, unit, quality, cls, text]
`to_row` / `from_row` are the only encoder/decoder of that form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum, IntFlag
from typing import Any, Sequence


class RecordClass(str, Enum):
    """What kind of record this is; decides eviction priority in the buffer."""

    ROUTINE = "routine"  # periodic measurements: evicted first when the disk cap is reached
    ALARM = "alarm"      # alarms (model alarms, gate events): kept as long as anything else can go
    EVENT = "event"      # state changes, command audit records, update status

    @classmethod
    def parse(cls, text: str) -> "RecordClass":
        try:
            return cls(text)
        except ValueError:
            raise ValueError(f"record class must be one of routine/alarm/event, got {text!r}") from None


class Quality(IntFlag):
    """Quality flags carried with every reading (0 = good)."""

    GOOD = 0
    MISSING = 1         # the device reported its invalid marker (e.g. 32767): value is None
    OUT_OF_RANGE = 2    # decoded but outside the profile's physical range
    SUSPECT = 4         # an edge model judged this channel faulty
    COMM_FAILURE = 8    # could not be read (timeout, exception); value is None
    DERIVED = 16        # computed on the box (model output, rate), not read from a device
    WRAPPED = 32        # a counter wrapped between this reading and the previous one


@dataclass(frozen=True, slots=True)
class Reading:
    device: str
    point: str
    value: float | None
    unit: str
    ts: float
    quality: Quality = Quality.GOOD
    cls: RecordClass = RecordClass.ROUTINE
    text: str | None = None
    seq: int | None = None

    def with_seq(self, seq: int) -> "Reading":
        return replace(self, seq=seq)

    def to_row(self) -> list[Any]:
        return [
            self.seq, self.ts, self.device, self.point, self.value, self.unit,
            int(self.quality), self.cls.value, self.text,
        ]


ROW_FIELDS = ("seq", "ts", "device", "point", "value", "unit", "quality", "cls", "text")


def from_row(row: Sequence[Any]) -> Reading:
    """Decode one wire row, checking every field; raises ValueError naming the bad field."""
    if not isinstance(row, (list, tuple)) or len(row) != len(ROW_FIELDS):
        raise ValueError(f"a reading row has {len(ROW_FIELDS)} fields {ROW_FIELDS}, got {row!r:.80}")
    seq, ts, device, point, value, unit, quality, cls, text = row
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise ValueError(f"seq must be a positive integer, got {seq!r}")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not math.isfinite(ts):
        raise ValueError(f"ts must be a finite number (unix seconds), got {ts!r}")
    if not isinstance(device, str) or not device:
        raise ValueError(f"device must be a non-empty string, got {device!r}")
    if not isinstance(point, str) or not point:
        raise ValueError(f"point must be a non-empty string, got {point!r}")
    if value is not None and (
        not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
    ):
        raise ValueError(f"value must be a finite number or null, got {value!r}")
    if not isinstance(unit, str):
        raise ValueError(f"unit must be a string, got {unit!r}")
    if not isinstance(quality, int) or isinstance(quality, bool) or quality < 0:
        raise ValueError(f"quality must be a non-negative integer, got {quality!r}")
    if not isinstance(cls, str):
        raise ValueError(f"cls must be a string, got {cls!r}")
    if text is not None and not isinstance(text, str):
        raise ValueError(f"text must be a string or null, got {text!r}")
    return Reading(
        device=device, point=point, value=None if value is None else float(value), unit=unit,
        ts=float(ts), quality=Quality(quality), cls=RecordClass.parse(cls), text=text, seq=seq,
    )
