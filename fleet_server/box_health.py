"""Health figures from the boxes' check-ins (core.box_health): kept in memory, written in batches.

The check-in is the fleet's hot path (answered from memory), so a report is only parsed and put in
a dict there; `run` (a supervised task, every `flush_s`) writes what arrived since the last round
in one transaction. Each replica writes the reports it received; a box's newest report wins
(`HealthTables.save_box_health`). A malformed header is counted and dropped, never a reason to
refuse the check-in. The alert rules read the stored reports (fleet_server.alert_jobs).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from anyio import to_thread

from core.box_health import BoxHealthReport
from fleet_server.store.base import Store

__all__ = ["FLUSH_S", "HealthBook"]

log = logging.getLogger(__name__)

FLUSH_S = 5.0
MAX_PENDING = 200_000


class HealthBook:
    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time, flush_s: float = FLUSH_S) -> None:
        self.store, self.clock, self.flush_s = store, clock, flush_s
        self.received = 0
        self.malformed = 0
        self.written = 0
        self._pending: dict[str, tuple[float, BoxHealthReport]] = {}

    def note(self, box_id: str, header: str | None) -> None:
        """Remember the box's report from its check-in header (None: it sent none)."""
        if header is None:
            return
        try:
            report = BoxHealthReport.parse(header)
        except ValueError as exc:
            self.malformed += 1
            if self.malformed <= 10 or self.malformed % 1000 == 0:
                log.warning("box %s sent an unusable health header (%d so far): %s", box_id, self.malformed, exc)
            return
        if len(self._pending) >= MAX_PENDING and box_id not in self._pending:
            return  # the writer is behind: this box's next check-in brings a newer report anyway
        self.received += 1
        self._pending[box_id] = (self.clock(), report)

    async def flush(self) -> int:
        pending, self._pending = self._pending, {}
        rows = [(box_id, at, report) for box_id, (at, report) in pending.items()]
        try:
            await to_thread.run_sync(self.store.save_box_health, rows)
        except BaseException:
            for box_id, item in pending.items():  # keep them for the next round, newer ones win
                self._pending.setdefault(box_id, item)
            raise
        self.written += len(rows)
        return len(rows)

    async def run(self) -> None:
        """Write the reports every `flush_s` until cancelled (then once more)."""
        try:
            while True:
                await asyncio.sleep(self.flush_s)
                await self.flush()
        finally:
            if self._pending:  # at shutdown: what arrived since the last round (the store is still open)
                try:
                    await asyncio.shield(self.flush())
                except Exception as exc:
                    log.warning("health reports of %d box(es) not written at shutdown: %s", len(self._pending), exc)
