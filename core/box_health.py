"""A box's key health figures, sent with every check-in: written once for the box and the fleet.

    GET /api/v1/boxes/{box}/checkin
    X-Quanedge-Health: {"clock": unix_s, "buffer_depth": n, "oldest_unsent_age_s": s | null,
                        "disk_used_pct": pct | null, "devices_offline": {"name": age_s | null, ...}}

Ages are the box's own differences (seconds before `clock`), so the fleet needs no synchronised
clock to use them; `clock` itself lets it see the box's clock offset. `devices_offline` names the
devices that are offline now, with the seconds since their last good read (null: never read), at
most MAX_DEVICES of them. The header is at most MAX_BYTES; the fleet ignores (and counts) one that
breaks these rules instead of refusing the check-in: health must never stop an update.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.validate import check_text, json_object

__all__ = ["HEADER", "MAX_BYTES", "MAX_DEVICES", "BoxHealthReport"]

HEADER = "X-Quanedge-Health"
MAX_BYTES = 4096
MAX_DEVICES = 32
_MAX_AGE_S = 10 * 365 * 86400.0


def _number(value: Any, name: str, lo: float, hi: float, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise ValueError(f"{name} must be a number in {lo:g}..{hi:g}{' or null' if optional else ''}, "
                         f"got {value!r:.40}")
    return float(value)


@dataclass(frozen=True, slots=True)
class BoxHealthReport:
    clock: float
    buffer_depth: int
    oldest_unsent_age_s: float | None = None
    disk_used_pct: float | None = None
    devices_offline: Mapping[str, float | None] = field(default_factory=dict)

    def to_header(self) -> str:
        offline = dict(sorted(self.devices_offline.items())[:MAX_DEVICES])
        body = {"clock": round(self.clock, 3), "buffer_depth": self.buffer_depth,
                "oldest_unsent_age_s": None if self.oldest_unsent_age_s is None else round(self.oldest_unsent_age_s, 1),
                "disk_used_pct": None if self.disk_used_pct is None else round(self.disk_used_pct, 1),
                "devices_offline": {k[:64]: None if v is None else round(v, 1) for k, v in offline.items()}}
        return json.dumps(body, separators=(",", ":"), ensure_ascii=True)

    @classmethod
    def parse(cls, text: str) -> BoxHealthReport:
        """From the header's value; ValueError naming the field."""
        body = json_object(text, "the health header", max_bytes=MAX_BYTES,
                           fields=("clock", "buffer_depth", "oldest_unsent_age_s", "disk_used_pct", "devices_offline"))
        clock = _number(body.get("clock"), "clock", 1.0, 1e11)
        depth = body.get("buffer_depth")
        if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= 2**53:
            raise ValueError(f"buffer_depth must be a non-negative integer, got {depth!r:.40}")
        offline = body.get("devices_offline", {})
        if not isinstance(offline, dict) or len(offline) > MAX_DEVICES:
            raise ValueError(f"devices_offline must be an object of at most {MAX_DEVICES} devices")
        devices = {check_text(name, "devices_offline key", max_len=64, allow_empty=False):
                   _number(age, f"devices_offline.{name}", 0.0, _MAX_AGE_S, optional=True)
                   for name, age in offline.items()}
        assert clock is not None
        return cls(clock, depth,
                   _number(body.get("oldest_unsent_age_s"), "oldest_unsent_age_s", 0.0, _MAX_AGE_S, optional=True),
                   _number(body.get("disk_used_pct"), "disk_used_pct", 0.0, 100.0, optional=True), devices)
