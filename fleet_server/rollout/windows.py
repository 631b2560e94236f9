"""Maintenance windows per site, in the site's local time (IANA zone, DST-correct via zoneinfo).

A site's policy (PUT /api/v1/sites/{site}/maintenance):

    {"timezone": "Europe/Berlin",
     "windows":   [{"days": "mon-fri", "start": "22:00", "end": "05:00"}],     # allowed times
     "blackouts": [{"days": "mon-fri", "start": "07:00", "end": "09:30", "kinds": ["firmware"]}]}

A box may be assigned an update when the local time is inside one of the site's `windows` (no
windows: any time) and inside none of its `blackouts`. A window or blackout may be limited to some
rollout kinds (no signal-controller firmware during rush hours, models any time). `end` before
`start` wraps past midnight and belongs to the day it starts on ("fri 22:00-05:00" covers Saturday
05:00). Times are wall-clock: on a DST change day a window simply follows the local clock.
Sites without a policy, and rollouts created with respect_windows=false, are never held back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fleet_server.errors import PayloadError
from fleet_server.rollout.model import KINDS

__all__ = ["SitePolicy", "Window"]

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: An IANA zone name: 1-4 segments of letters, digits and _+-, the first starting with a letter.
#: Checked BEFORE zoneinfo sees it: zoneinfo opens a file named by it, so a 300-character name is
#: ENAMETOOLONG and "Europe" IsADirectoryError.
TIMEZONE_PATTERN = r"^[A-Za-z][A-Za-z0-9_+-]{0,29}(/[A-Za-z0-9_+-]{1,30}){0,3}$"
TIMEZONE_MAX = 64
_TIMEZONE = re.compile(TIMEZONE_PATTERN)
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$|^24:00$")


def _minutes(text: object, field: str) -> int:
    if not isinstance(text, str) or not _TIME.match(text):
        raise PayloadError("bad_window", f"{field} must be HH:MM (00:00-24:00), got {text!r:.20}", field=field)
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def _days(text: object) -> frozenset[int]:
    """'mon-fri', 'sat,sun', 'mon,wed-fri' or 'daily' -> weekday numbers (Monday = 0)."""
    if text in (None, "daily", "*"):
        return frozenset(range(7))
    if not isinstance(text, str):
        raise PayloadError("bad_window", f"days must be like 'mon-fri' or 'sat,sun', got {text!r:.40}", field="days")
    days: set[int] = set()
    for part in text.lower().replace(" ", "").split(","):
        first, _, last = part.partition("-")
        if first not in _DAYS or (last and last not in _DAYS):
            raise PayloadError("bad_window", f"unknown day in {text!r:.40}; use mon..sun", field="days")
        a, b = _DAYS.index(first), _DAYS.index(last or first)
        days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return frozenset(days)


@dataclass(frozen=True, slots=True)
class Window:
    days: frozenset[int]
    start: int          # minutes after local midnight
    end: int            # may be <= start: wraps past midnight
    kinds: frozenset[str] = frozenset()   # empty: applies to every kind

    @classmethod
    def from_json(cls, data: object) -> Window:
        if not isinstance(data, dict) or set(data) - {"days", "start", "end", "kinds"}:
            raise PayloadError("bad_window", "a window is {days, start, end[, kinds]}", field="windows")
        start, end = _minutes(data.get("start"), "start"), _minutes(data.get("end"), "end")
        if start == end:
            raise PayloadError("bad_window", "a window needs start != end", field="end")
        kinds = data.get("kinds") or []
        if not isinstance(kinds, list) or any(not isinstance(k, str) or k not in KINDS for k in kinds):
            raise PayloadError("bad_window", f"kinds must be a list of {', '.join(KINDS)}", field="kinds")
        return cls(_days(data.get("days")), start, end, frozenset(kinds))

    def to_json(self) -> dict[str, Any]:
        days = ",".join(_DAYS[d] for d in sorted(self.days)) if len(self.days) < 7 else "daily"
        out: dict[str, Any] = {"days": days, "start": _hhmm(self.start), "end": _hhmm(self.end)}
        if self.kinds:
            out["kinds"] = sorted(self.kinds)
        return out

    def covers(self, local: datetime, kind: str) -> bool:
        if self.kinds and kind not in self.kinds:
            return False
        minute = local.hour * 60 + local.minute
        weekday = local.weekday()
        if self.start < self.end:
            return weekday in self.days and self.start <= minute < self.end
        # wraps midnight: the evening part on a listed day, the morning part the day after one
        return (weekday in self.days and minute >= self.start) or (
            (weekday - 1) % 7 in self.days and minute < self.end)


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@dataclass(frozen=True, slots=True)
class SitePolicy:
    site: str
    timezone: str
    windows: tuple[Window, ...] = ()
    blackouts: tuple[Window, ...] = ()

    @classmethod
    def from_json(cls, site: str, data: object) -> SitePolicy:
        if not isinstance(data, dict) or set(data) - {"timezone", "windows", "blackouts"}:
            raise PayloadError("bad_body", "maintenance policy is {timezone, windows, blackouts}")
        tz = data.get("timezone")
        try:
            if not isinstance(tz, str) or len(tz) > TIMEZONE_MAX or not _TIMEZONE.fullmatch(tz):
                raise ValueError
            ZoneInfo(tz)
        except (ValueError, OSError, ZoneInfoNotFoundError):  # "Europe" is a directory: IsADirectoryError
            raise PayloadError("bad_timezone", f"timezone must be an IANA zone like Europe/Berlin, got {tz!r:.60}",
                               field="timezone") from None
        lists = []
        for key in ("windows", "blackouts"):
            items = data.get(key) or []
            if not isinstance(items, list) or len(items) > 50:
                raise PayloadError("bad_window", f"{key} must be a list of at most 50 windows", field=key)
            lists.append(tuple(Window.from_json(item) for item in items))
        return cls(site, tz, lists[0], lists[1])

    def to_json(self) -> dict[str, Any]:
        return {"site": self.site, "timezone": self.timezone,
                "windows": [w.to_json() for w in self.windows],
                "blackouts": [w.to_json() for w in self.blackouts]}

    def allows(self, kind: str, now: float) -> bool:
        local = datetime.fromtimestamp(now, ZoneInfo(self.timezone))
        windows = [w for w in self.windows if not w.kinds or kind in w.kinds]
        if windows and not any(w.covers(local, kind) for w in windows):
            return False
        return not any(b.covers(local, kind) for b in self.blackouts)
