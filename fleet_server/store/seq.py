"""The storage seam for seq tracking (fleet_server.seq_tracking): what `GET /api/v1/boxes/{id}/seq`
reads. The writing happens inside `Store.ingest`: the box's `SeqState` is read, advanced by the
pure `track` and written back in the batch's transaction (a backend with several writers locks the
box's state row for it, e.g. SELECT ... FOR UPDATE), together with the gaps it revealed (each a
`seq_gap` alert) and the dropped ranges the box announced (kept once per (box, first, last), so
re-announcements count once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from fleet_server.seq_tracking import Range

__all__ = ["SeqStatus", "SeqStore"]


@dataclass(frozen=True, slots=True)
class SeqStatus:
    """One box's seq tracking. `contig` None: tracking has not started (no message with low or
    base yet). Counts are totals since tracking began; `*_by_reason` map a reason to readings."""

    box_id: str
    contig: int | None
    base: int | None
    fresh: bool
    above: tuple[Range, ...]
    gaps: int = 0
    gap_readings: int = 0
    gaps_by_reason: dict[str, int] = field(default_factory=dict)
    dropped_ranges: int = 0
    dropped_readings: int = 0
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    updated_at: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "box_id": self.box_id, "tracking": self.contig is not None, "contig": self.contig,
            "base": self.base, "fresh": self.fresh, "above": [list(r) for r in self.above],
            "above_ranges": len(self.above), "gaps": self.gaps, "gap_readings": self.gap_readings,
            "gaps_by_reason": self.gaps_by_reason, "dropped_ranges": self.dropped_ranges,
            "dropped_readings": self.dropped_readings, "dropped_by_reason": self.dropped_by_reason,
            "updated_at": self.updated_at,
        }


@runtime_checkable
class SeqStore(Protocol):
    def seq_status(self, box_id: str) -> SeqStatus:
        """The box's seq tracking state and its gap / dropped totals; raises `UnknownBox`."""
        ...
