"""Pause points for fault tests: stop (never fake) at a named updater step so a test can kill -9 there.

    QUANEDGE_UPDATER_PAUSE_AT=<point>     e.g. downloading, installing, switched, health_check
    QUANEDGE_UPDATER_PAUSE_FILE=<path>    created (O_EXCL) with "<pid> <point>" when the pause begins

The first process to reach `<point>` creates the file and then waits forever (the test kills it);
once the file exists the point is passed through, so the restarted process runs on. Nothing is
skipped or simulated: the process only waits. Without the variables these are no-ops.
"""

from __future__ import annotations

import asyncio
import os
import time

__all__ = ["apause", "pause"]


def _claim(point: str) -> bool:
    if os.environ.get("QUANEDGE_UPDATER_PAUSE_AT") != point:
        return False
    marker = os.environ.get("QUANEDGE_UPDATER_PAUSE_FILE")
    if not marker:
        return False
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, f"{os.getpid()} {point}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def pause(point: str) -> None:
    """Blocking form (threads, the supervisor)."""
    if _claim(point):
        while True:
            time.sleep(3600)


async def apause(point: str) -> None:
    """Async form: the rest of the agent (polling, buffering, uplink) keeps running meanwhile."""
    if _claim(point):
        await asyncio.Event().wait()
