"""The one value that flows down the data path: a `Reading`.

A reading is small and frozen. The buffer assigns `seq` (box-local, strictly increasing)
when it commits the reading; until then `seq` is None.

Wire form (used by every uplink and by the fleet server's ingest) is a compact row:
    [seq, ts, device, point, value, unit, quality, cls, text]
`to_row` / `from_row` are the only encoder/decoder of that form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum, IntFlag
from typing import Any

from core.validate import INT64_MAX, TS_MAX, TS_MIN, VALUE_ABS_MAX, check_float, check_int, check_text, check_ts


class RecordClass(str, Enum):
    """What kind of record this is; decides eviction priority in the buffer."""

    ROUTINE = "routine"  # periodic measurements: evicted first when the disk cap is reached
    ALARM = "alarm"      # alarms (model alarms, gate events): kept as long as anything else can go
    EVENT = "event"      # state changes, command audit records, update status

    @classmethod
    def parse(cls, text: str) -> RecordClass:
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

    def label(self) -> str:
        """'good', or the names of the set flags, lower case, joined by '+' ('missing+comm_failure').

        For people (the installer's `agent read` table, logs): str() of an IntFlag is only its
        number on Python 3.11+. Bits no flag names (a newer peer's) show as their number."""
        if not self:
            return "good"
        names = [f.name.lower() for f in Quality if f and f in self and f.name]
        rest = int(self) & ~sum(int(f) for f in Quality)
        return "+".join(names + ([str(rest)] if rest else []))


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

    def with_seq(self, seq: int) -> Reading:
        return replace(self, seq=seq)

    def to_row(self) -> list[Any]:
        return [
            self.seq, self.ts, self.device, self.point, self.value, self.unit,
            int(self.quality), self.cls.value, self.text,
        ]


ROW_FIELDS = ("seq", "ts", "device", "point", "value", "unit", "quality", "cls", "text")


#: Longest device / point name, unit and free text a row may carry (the fleet server and the
#: buffer refuse longer ones; they would be a forged or runaway value, not a measurement).
MAX_NAME_LEN = 128
MAX_UNIT_LEN = 32
MAX_TEXT_LEN = 8192
#: Highest quality value: the union of every Quality flag.
MAX_QUALITY = int(Quality.DERIVED | Quality.WRAPPED | Quality.SUSPECT | Quality.OUT_OF_RANGE
                  | Quality.MISSING | Quality.COMM_FAILURE)


def from_row(row: Sequence[Any]) -> Reading:
    """Decode one wire row, checking every field; raises ValueError naming the bad field.

    The checks are `core.validate`'s boundary rules: seq in 1..2**63-1, ts within 1970..2100,
    value finite (no 400-digit integers), quality a known flag set, strings valid UTF-8 without NUL
    and length-capped. A row that passes can be stored by SQLite and PostgreSQL as it is.

    The fleet server decodes every row it ingests with this, so the common row (int seq, float ts
    and value, known (device, point, unit), no text) is decided by cheap comparisons and the shared
    memory of clean names (`_CLEAN_NAMES`); anything else takes the full checks, which also word
    the error. Both paths accept exactly the same rows (tests/test_trust_box_parsers.py).
    """
    if type(row) is list and len(row) == 9:
        seq, ts, device, point, value, unit, quality, cls, text = row
        if (type(seq) is int and 1 <= seq <= INT64_MAX and type(ts) is float and TS_MIN <= ts <= TS_MAX
                and (value is None or (type(value) is float and -VALUE_ABS_MAX <= value <= VALUE_ABS_MAX))
                and type(quality) is int and 0 <= quality <= MAX_QUALITY and text is None
                and type(device) is str and type(point) is str and type(unit) is str and type(cls) is str
                and cls in _CLASS_BY_VALUE and (device, point, unit) in _CLEAN_NAMES):
            return Reading(device, point, value, unit, ts, _QUALITIES[quality], _CLASS_BY_VALUE[cls], None, seq)
    return _from_row_checked(row)


def _from_row_checked(row: Sequence[Any]) -> Reading:
    """`from_row` with every field checked by `core.validate` (the errors' wording lives here)."""
    if not isinstance(row, (list, tuple)) or len(row) != len(ROW_FIELDS):
        raise ValueError(f"a reading row has {len(ROW_FIELDS)} fields {ROW_FIELDS}, got {_short(row)}")
    seq, ts, device, point, value, unit, quality, cls, text = row
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= INT64_MAX:
        raise ValueError(f"seq must be a positive integer up to 2**63-1, got {_short(seq)}")
    ts = check_ts(ts, "ts")
    check_text(device, "device", max_len=MAX_NAME_LEN, allow_empty=False)
    check_text(point, "point", max_len=MAX_NAME_LEN, allow_empty=False)
    if value is not None:
        value = check_float(value, "value")
    check_text(unit, "unit", max_len=MAX_UNIT_LEN)
    if not isinstance(quality, int) or isinstance(quality, bool) or not 0 <= quality <= MAX_QUALITY:
        raise ValueError(f"quality must be an integer flag set 0..{MAX_QUALITY}, got {_short(quality)}")
    if not isinstance(cls, str):
        raise ValueError(f"cls must be a string, got {_short(cls)}")
    if text is not None:
        check_text(text, "text", max_len=MAX_TEXT_LEN)
    if type(device) is str and type(point) is str and type(unit) is str and len(_CLEAN_NAMES) < _CLEAN_NAMES_MAX:
        _CLEAN_NAMES.add((device, point, unit))
    return Reading(
        device=device, point=point, value=value, unit=unit,
        ts=ts, quality=Quality(quality), cls=RecordClass.parse(cls), text=text, seq=seq,
    )


_QUALITIES = tuple(Quality(q) for q in range(MAX_QUALITY + 1))
_CLASS_BY_VALUE = {member.value: member for member in RecordClass}

#: (device, point, unit) triples that passed the text rules: a box's drivers repeat a few thousand
#: of them for every reading, so the buffer's append (which checks every reading) checks each once.
#: Bounded: past the bound, new triples are simply checked every time.
_CLEAN_NAMES: set[tuple[str, str, str]] = set()
_CLEAN_NAMES_MAX = 10_000


def check_reading(reading: Reading) -> None:
    """The same rules for a Reading made on the box (before it is committed to the buffer):
    ValueError naming the field, so the buffer refuses that one record and goes on.

    This runs for every reading on the box's hot path, so the common case (float value and ts,
    names seen before, no text) is decided by cheap comparisons; anything else takes the full
    checks of `core.validate`, which also word the error. Fields are checked in row order."""
    if reading.seq is not None:
        check_int(reading.seq, "seq", lo=1)
    ts = reading.ts
    if not (type(ts) is float and TS_MIN <= ts <= TS_MAX):  # false for NaN and infinities too
        check_ts(ts, "ts")
    device, point, unit = reading.device, reading.point, reading.unit
    names_known = (type(device) is str and type(point) is str and type(unit) is str
                   and (device, point, unit) in _CLEAN_NAMES)
    if not names_known:
        check_text(device, "device", max_len=MAX_NAME_LEN, allow_empty=False)
        check_text(point, "point", max_len=MAX_NAME_LEN, allow_empty=False)
    value = reading.value
    if value is not None and not (type(value) is float and -VALUE_ABS_MAX <= value <= VALUE_ABS_MAX):
        check_float(value, "value")
    if not names_known:
        check_text(unit, "unit", max_len=MAX_UNIT_LEN)
        if type(device) is str and type(point) is str and type(unit) is str and len(_CLEAN_NAMES) < _CLEAN_NAMES_MAX:
            _CLEAN_NAMES.add((device, point, unit))
    if not 0 <= int(reading.quality) <= MAX_QUALITY:
        raise ValueError(f"quality must be an integer flag set 0..{MAX_QUALITY}, got {int(reading.quality)}")
    if not isinstance(reading.cls, RecordClass):
        raise ValueError(f"cls must be a RecordClass, got {_short(reading.cls)}")
    if reading.text is not None:
        check_text(reading.text, "text", max_len=MAX_TEXT_LEN)


def _short(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
