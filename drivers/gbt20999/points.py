"""GB/T 20999 point names <-> the controller's data items (pure: the settings parser checks names
with it without importing the driver's asyncio stack)."""

from __future__ import annotations

import re

from drivers.gbt20999 import codec as g

__all__ = ["point_item"]

_POINTS: dict[str, tuple[g.ItemId, str]] = {
    "run_mode": (g.RUN_MODE, ""), "current_plan": (g.CURRENT_PLAN, ""), "current_stage": (g.CURRENT_STAGE, ""),
}
_ROWS = re.compile(r"^(det|plan)(\d{1,3})_(flow|occupancy|speed|cycle|offset|coord_seq)$")
_ROW_ITEMS: dict[tuple[str, str], tuple[g.ItemId, str]] = {
    ("det", "flow"): (g.DETECTOR_FLOW, "veh"), ("det", "occupancy"): (g.DETECTOR_OCCUPANCY, "%"),
    ("det", "speed"): (g.DETECTOR_SPEED, "km/h"), ("plan", "cycle"): (g.PLAN_CYCLE, "s"),
    ("plan", "offset"): (g.PLAN_OFFSET, "s"), ("plan", "coord_seq"): (g.PLAN_COORD_SEQ, ""),
}

def point_item(point: str) -> tuple[g.ItemId, int, str]:
    """(item id, element, unit) for a point name; ValueError for names we do not know."""
    if point in _POINTS:
        item, unit = _POINTS[point]
        return item, 0, unit
    m = _ROWS.match(point)
    if m is None or (m.group(1), m.group(3)) not in _ROW_ITEMS or not 1 <= int(m.group(2)) <= 255:
        raise ValueError(f"unknown GB/T 20999 point {point!r}")
    item, unit = _ROW_ITEMS[(m.group(1), m.group(3))]
    return item, int(m.group(2)), unit
