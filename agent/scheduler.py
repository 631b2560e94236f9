"""Polling: one scheduler task per bus; it owns timing, backoff, quarantine and online/offline state.

A bus (one RS-485 line, or one TCP connection) has one master, so requests on it are strictly
serialised: the scheduler reads one device at a time, earliest due first. Separate buses run
in separate tasks and never wait for each other.

A device that fails is retried at its next poll; after `offline_after` consecutive failures it is
offline and quarantined: retried with capped, jittered backoff (at least one poll interval, at
most `quarantine_cap_s`), so a silent slave costs the bus one timeout per retry and no more. The
change to offline and back to online is logged once each way and recorded as an EVENT reading
(point `_online`, value 0/1), so the fleet sees it too.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol, Sequence

from agent.backoff import Backoff
from agent.errors import DeviceException, DeviceTimeout, DriverError, FrameError, LinkError
from agent.reading import Reading, RecordClass
from drivers.base import Driver

log = logging.getLogger(__name__)

Emit = Callable[[list[Reading]], Awaitable[None]]


class DeviceObserver(Protocol):
    def device_read(self, device: str, n: int) -> None: ...
    def device_state(self, device: str, online: bool) -> None: ...
    def device_error(self, device: str, kind: str) -> None: ...


@dataclass
class PolledDevice:
    name: str
    driver: Driver
    poll_s: float
    points: Sequence[str] | None = None
    online: bool | None = None  # None until the first poll says
    failures: int = 0
    last_error: str | None = None
    last_success: float | None = None
    backoff: Backoff = field(default_factory=Backoff)


def error_kind(exc: DriverError) -> str:
    for cls, kind in ((DeviceTimeout, "timeout"), (DeviceException, "exception"),
                      (FrameError, "frame"), (LinkError, "link")):
        if isinstance(exc, cls):
            return kind
    return "other"


class BusScheduler:
    def __init__(
        self,
        bus: str,
        devices: Sequence[PolledDevice],
        emit: Emit,
        observer: DeviceObserver | None = None,
        *,
        offline_after: int = 2,
        quarantine_cap_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not devices:
            raise ValueError(f"bus {bus!r} has no devices to poll")
        self.bus = bus
        self.devices = list(devices)
        self._emit = emit
        self._observer = observer
        self._offline_after = offline_after
        self._clock = clock
        rng = rng or random.Random()
        for d in self.devices:
            cap = max(quarantine_cap_s, d.poll_s)
            d.backoff = Backoff(base_s=min(max(d.poll_s, 0.5), cap), cap_s=cap, rng=rng)
        self.late_polls = 0  # polls that started later than one interval after they were due

    async def run(self) -> None:
        start = self._clock()
        # Stagger the first polls across the shortest interval so devices don't all fire at once.
        spread = min(d.poll_s for d in self.devices)
        heap = [(start + spread * i / len(self.devices), i) for i, _ in enumerate(self.devices)]
        heapq.heapify(heap)
        while True:
            due, i = heapq.heappop(heap)
            delay = due - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
            dev = self.devices[i]
            nxt = await self._poll(dev, due)
            heapq.heappush(heap, (nxt, i))

    async def _poll(self, dev: PolledDevice, due: float) -> float:
        started = self._clock()
        if started - due > dev.poll_s:
            self.late_polls += 1
        try:
            readings = await dev.driver.read(dev.points)
        except DriverError as exc:
            return await self._failed(dev, exc, started)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a driver bug must not kill the bus: count it, report it, go on
            log.exception("driver %s raised an unexpected error", dev.name)
            return await self._failed(dev, DriverError(f"unexpected {type(exc).__name__}: {exc}"), started)
        dev.failures = 0
        dev.last_success = time.time()
        dev.backoff.reset()
        if dev.online is not True:
            if dev.online is False:
                log.info("device %s is online again", dev.name)
            await self._set_state(dev, True, "ok")
        if self._observer:
            self._observer.device_read(dev.name, len(readings))
        if readings:
            await self._emit(readings)
        # Keep the cadence; on an over-subscribed bus a late device goes to the back of the
        # queue at "now" (round robin), never into a catch-up burst.
        return max(due + dev.poll_s, self._clock())

    async def _failed(self, dev: PolledDevice, exc: DriverError, started: float) -> float:
        dev.failures += 1
        dev.last_error = str(exc)
        kind = error_kind(exc)
        if self._observer:
            self._observer.device_error(dev.name, kind)
        if dev.failures >= self._offline_after:
            if dev.online is not False:
                log.warning("device %s is offline after %d failed polls: %s", dev.name, dev.failures, exc)
                await self._set_state(dev, False, f"{kind}: {exc}")
            return self._clock() + max(dev.backoff.next_delay(), dev.poll_s)
        log.debug("device %s poll failed (%d): %s", dev.name, dev.failures, exc)
        return started + dev.poll_s

    async def _set_state(self, dev: PolledDevice, online: bool, reason: str) -> None:
        dev.online = online
        if self._observer:
            self._observer.device_state(dev.name, online)
        await self._emit([Reading(dev.name, "_online", 1.0 if online else 0.0, "", time.time(),
                                  cls=RecordClass.EVENT, text=reason[:200])])
