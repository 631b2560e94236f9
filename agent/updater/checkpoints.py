"""Named points of an update, for whoever needs to observe them.

The updater calls `reached(point)` (blocking form: threads, the supervisor) or `await
areached(point)` at: accepted, downloading, downloaded, installing, installed, switching,
switched, restarting, health_check, rolling_back. This base does nothing; the fault tests pass
a subclass (tests/pause_points.py) to `JobRunner`, `UpdaterService` or `Supervisor` that stops the
process at one point so it can be killed there.
"""

from __future__ import annotations

__all__ = ["Checkpoints"]


class Checkpoints:
    def reached(self, point: str) -> None:
        """Blocking form (threads, the supervisor)."""

    async def areached(self, point: str) -> None:
        """Async form: the rest of the agent keeps running meanwhile."""
