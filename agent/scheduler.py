"""Polling: one scheduler task per bus; it owns timing, backoff, quarantine and online/offline state.

A bus (one RS-485 line, or one TCP connection) has one master, so requests on it are strictly
serialised: the scheduler reads one device at a time, earliest due first. Separate buses run
in separate tasks and never wait for each other.

A device that fails is retried at its next poll; after `offline_after` consecutive failures it is
offline. An offline device is *probed*: one request, its smallest (a single register for most
profiles), every `probe_interval(poll_s)` = max(poll_s, 2.5 s), half of `return_bound(poll_s)` =
max(2 x poll_s, 5 s). A silent slave so costs the bus at most one timeout per probe interval, and
a device that comes back is read again within the bound (the probe answers, and the full read
follows at once), where a capped backoff had made it wait up to a minute. The change to offline and
back to online is logged once each way and recorded as an EVENT reading (point `_online`, value
0/1), so the fleet sees it too; a good poll clears the device's `last_error` (`last_error_at`
says when it was set).

Bus-aware polling, for drivers that declare their bus (drivers.base.BusAware: `bus_info()` gives the
profile, the line timing and the timeout; drivers.modbus.driver.ModbusDevice, and agent.devices.ManagedDriver
which passes its driver's on):
- a device's points are read in the coalesced requests the codec plans (never over 125 registers),
  one request per driver call, so that the scheduler can pace every request on the wire;
- on an RTU bus (`bus_info().line` is set) the line stays quiet for t3.5 between a reply and the
  next request, which pymodbus does not do by itself;
- the first request that times out ends that device's poll: its remaining requests are not sent
  (their points come back COMM_FAILURE), so a silent slave costs one timeout per poll, whatever the
  size of its map;
- counters in the profile get their derived `<point>_rate` readings (agent.rates);
- the wire-time model (drivers.modbus.timing) predicts at start whether the bus can carry the requested
  intervals: `capacity_report` holds the prediction and `run()` logs one WARNING per late device.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.rates import CounterRates
from core.errors import ConfigError, DeviceException, DeviceTimeout, DriverError, FrameError, LinkError
from core.reading import Quality, Reading, RecordClass
from drivers.base import BusAware, BusInfo, Driver
from drivers.modbus.codec import plan_reads
from drivers.modbus.timing import DEFAULT_TURNAROUND_S, CapacityReport, DeviceLoad, LineTiming, capacity_report

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
    last_error: str | None = None   # cleared by the next good poll
    last_error_at: float | None = None  # time.time() of last_error
    last_success: float | None = None
    polls: int = 0              # poll attempts so far
    worst_start_delay_s: float = 0.0  # worst (start - due) of a poll made at its normal cadence


@dataclass(frozen=True, slots=True)
class PollRecord:
    """One poll as it happened (for the `trace` hook: tests, benchmarks, diagnostics)."""

    device: str
    due: float       # scheduler clock
    started: float
    ended: float
    ok: bool
    requests: int    # requests put on the wire


@dataclass(slots=True)
class _Plan:
    groups: list[tuple[str, ...]] | None  # point names per request; None: one driver.read call
    reads: tuple[int, ...]                # register count per request (for the wire-time model)
    units: dict[str, str]
    order: dict[str, int]
    rates: CounterRates | None


def return_bound(poll_s: float) -> float:
    """How soon after it answers again an offline device must be read again: max(2 x poll_s, 5 s)."""
    return max(2.0 * poll_s, 5.0)


def probe_interval(poll_s: float) -> float:
    """Seconds between probes of an offline device: half the return bound (the other half covers
    the probe, the full read and a wait behind the other devices on the bus)."""
    return return_bound(poll_s) / 2.0


def error_kind(exc: DriverError) -> str:
    for cls, kind in ((DeviceTimeout, "timeout"), (DeviceException, "exception"),
                      (FrameError, "frame"), (LinkError, "link")):
        if isinstance(exc, cls):
            return kind
    return "other"


def _bus_info(dev: PolledDevice) -> BusInfo | None:
    return dev.driver.bus_info() if isinstance(dev.driver, BusAware) else None


def _plan(dev: PolledDevice) -> _Plan:
    info = _bus_info(dev)
    if info is None:
        return _Plan(None, (), {}, {}, None)
    profile = info.profile
    known = {p.name: p for p in profile.points}
    if dev.points is not None:
        unknown = [p for p in dev.points if p not in known]
        if unknown or isinstance(dev.points, str):
            raise ConfigError(f"device {dev.name}: unknown point", key="points", value=unknown or dev.points,
                              expected=f"points of profile {profile.name}: {', '.join(known)}")
    specs = [known[p] for p in dev.points] if dev.points is not None else list(profile.points)
    blocks = plan_reads(specs, profile.max_registers_per_read, profile.max_read_gap)
    rates = CounterRates(specs)
    return _Plan([tuple(p.name for p in b.points) for b in blocks], tuple(b.count for b in blocks),
                 {p.name: p.unit for p in specs}, {p.name: i for i, p in enumerate(profile.points)},
                 rates if rates else None)


def _rtu_line(devices: Sequence[PolledDevice]) -> LineTiming | None:
    for d in devices:
        info = _bus_info(d)
        if info is not None and info.line is not None:
            return info.line
    return None


class BusScheduler:
    def __init__(
        self,
        bus: str,
        devices: Sequence[PolledDevice],
        emit: Emit,
        observer: DeviceObserver | None = None,
        *,
        offline_after: int = 2,
        probe_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        line: LineTiming | None = None,
        turnaround_s: float = DEFAULT_TURNAROUND_S,
        trace: Callable[[PollRecord], None] | None = None,
    ) -> None:
        """`line`: the RTU line settings (default: taken from the drivers' link when it is RTU;
        None on TCP); `turnaround_s`: the slaves' reply delay assumed by the capacity model;
        `probe_s`: seconds between probes of an offline device (default: probe_interval(poll_s))."""
        if not devices:
            raise ValueError(f"bus {bus!r} has no devices to poll")
        if probe_s is not None and not (isinstance(probe_s, (int, float)) and 0 < probe_s <= 3600):
            raise ValueError(f"probe_s must be 0 < seconds <= 3600, got {probe_s!r}")
        self.bus = bus
        self.devices = list(devices)
        self._emit = emit
        self._observer = observer
        self._offline_after = offline_after
        self._clock = clock
        self._trace = trace
        self._probe_s = {d.name: probe_s if probe_s is not None else probe_interval(d.poll_s) for d in self.devices}
        self.late_polls = 0  # polls that started later than one interval after they were due
        self._plans = [_plan(d) for d in self.devices]
        self.line = line if line is not None else _rtu_line(self.devices)
        self._gap_s = self.line.t35_s if self.line is not None else 0.0
        self._quiet_at = 0.0
        self._sent = 0
        self.capacity_report: CapacityReport | None = None
        self.timeout_warnings: list[str] = []  # reads whose reply cannot arrive within the link's timeout
        if self.line is not None and all(p.reads for p in self._plans):
            loads = [DeviceLoad(d.name, d.poll_s, p.reads) for d, p in zip(self.devices, self._plans)]
            self.capacity_report = capacity_report(bus, self.line, loads, turnaround_s)
            self.timeout_warnings = self._check_timeouts(turnaround_s)

    def _check_timeouts(self, turnaround_s: float) -> list[str]:
        assert self.line is not None
        out = []
        for d, p in zip(self.devices, self._plans):
            info = _bus_info(d)
            timeout = info.timeout_s if info is not None else None
            need = self.line.timeout_floor_s(max(p.reads), turnaround_s)
            if isinstance(timeout, (int, float)) and timeout < need:
                out.append(f"bus {self.bus}: device {d.name}'s largest read ({max(p.reads)} registers) needs "
                           f"{need * 1000:.0f} ms at {self.line} with {turnaround_s * 1000:g} ms turnaround, more "
                           f"than the {timeout * 1000:g} ms timeout: it will time out although the slave answers; "
                           "raise the bus's timeout_ms")
        return out

    async def run(self) -> None:
        if self.capacity_report is not None:
            self.capacity_report.log(log)
        for text in self.timeout_warnings:
            log.warning("%s", text)
        start = self._clock()
        # Stagger the first polls across the shortest interval so devices don't all fire at once.
        spread = min(d.poll_s for d in self.devices)
        heap = [(start + spread * i / len(self.devices), i) for i, _ in enumerate(self.devices)]
        heapq.heapify(heap)
        me = asyncio.current_task()
        while True:
            due, i = heapq.heappop(heap)
            delay = due - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
            dev = self.devices[i]
            nxt = await self._poll(dev, self._plans[i], due)
            heapq.heappush(heap, (nxt, i))
            # asyncio.wait_for before Python 3.12 (used inside pymodbus) can swallow a cancel that
            # lands as the reply arrives; the task would then poll on forever and its TaskGroup never
            # exit. Task.cancelling() (3.11+) still tells that a cancel was asked for.
            if me is not None and me.cancelling():
                raise asyncio.CancelledError()

    async def _request(self, dev: PolledDevice, points: Sequence[str] | None) -> list[Reading]:
        """One driver call, after the line has been quiet for t3.5 since the last reply."""
        wait = self._quiet_at - self._clock()
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            return await dev.driver.read(points)
        finally:
            self._quiet_at = self._clock() + self._gap_s

    async def _probe(self, dev: PolledDevice, plan: _Plan) -> None:
        """An offline device: one request, its smallest; raises the DriverError while it stays silent.
        (A driver without a profile is read in one call anyway: that call is the probe.)"""
        if plan.groups is None or len(plan.groups) < 2:
            return
        smallest = min(range(len(plan.groups)), key=plan.reads.__getitem__)
        self._sent += 1
        await self._request(dev, plan.groups[smallest])

    async def _read(self, dev: PolledDevice, plan: _Plan) -> list[Reading]:
        if plan.groups is None:
            self._sent = 1
            return await self._request(dev, dev.points)
        readings: list[Reading] = []
        first_error: DriverError | None = None
        for k, group in enumerate(plan.groups):
            self._sent += 1
            try:
                readings += await self._request(dev, group)
            except LinkError:
                raise
            except DriverError as exc:
                first_error = first_error or exc
                silent = isinstance(exc, DeviceTimeout)  # the rest would time out too: skip them
                ts = time.time()
                readings += [Reading(dev.name, p, None, plan.units[p], ts, Quality.COMM_FAILURE, text=str(exc))
                             for g in (plan.groups[k:] if silent else [group]) for p in g]
                if silent:
                    break
        if first_error is not None and all(r.quality & Quality.COMM_FAILURE for r in readings):
            raise first_error
        readings.sort(key=lambda r: plan.order.get(r.point, len(plan.order)))
        return readings

    async def _poll(self, dev: PolledDevice, plan: _Plan, due: float) -> float:
        started = self._clock()
        dev.polls += 1
        if started - due > dev.poll_s:
            self.late_polls += 1
        if dev.online is not False:
            dev.worst_start_delay_s = max(dev.worst_start_delay_s, started - due)
        self._sent = 0  # requests put on the wire by this poll
        try:
            if dev.online is False:
                await self._probe(dev, plan)
            readings = await self._read(dev, plan)
        except DriverError as exc:
            self._record(dev, due, started, False)
            return await self._failed(dev, exc, started)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a driver bug must not kill the bus: count it, report it, go on
            log.exception("driver %s raised an unexpected error", dev.name)
            self._record(dev, due, started, False)
            return await self._failed(dev, DriverError(f"unexpected {type(exc).__name__}: {exc}"), started)
        self._record(dev, due, started, True)
        dev.failures = 0
        dev.last_error = dev.last_error_at = None
        dev.last_success = time.time()
        if dev.online is not True:
            if dev.online is False:
                log.info("device %s is online again", dev.name)
            await self._set_state(dev, True, "ok")
        if plan.rates is not None:
            readings = plan.rates.derive(readings)
        if self._observer:
            self._observer.device_read(dev.name, len(readings))
        if readings:
            await self._emit(readings)
        # Keep the cadence; on an over-subscribed bus a late device goes to the back of the
        # queue at "now" (round robin), never into a catch-up burst.
        return max(due + dev.poll_s, self._clock())

    def _record(self, dev: PolledDevice, due: float, started: float, ok: bool) -> None:
        if self._trace is not None:
            self._trace(PollRecord(dev.name, due, started, self._clock(), ok, self._sent))

    async def _failed(self, dev: PolledDevice, exc: DriverError, started: float) -> float:
        dev.failures += 1
        dev.last_error, dev.last_error_at = str(exc), time.time()
        kind = error_kind(exc)
        if self._observer:
            self._observer.device_error(dev.name, kind)
        if dev.failures >= self._offline_after:
            if dev.online is not False:
                log.warning("device %s is offline after %d failed polls: %s", dev.name, dev.failures, exc)
                await self._set_state(dev, False, f"{kind}: {exc}")
            return max(started + self._probe_s[dev.name], self._clock())
        log.debug("device %s poll failed (%d): %s", dev.name, dev.failures, exc)
        return started + dev.poll_s

    async def _set_state(self, dev: PolledDevice, online: bool, reason: str) -> None:
        dev.online = online
        if self._observer:
            self._observer.device_state(dev.name, online)
        await self._emit([Reading(dev.name, "_online", 1.0 if online else 0.0, "", time.time(),
                                  cls=RecordClass.EVENT, text=reason[:200])])
