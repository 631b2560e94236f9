"""From typed device config to running drivers, and what the agent wraps them in.

    KINDS[kind].build(settings, context) -> Driver          (drivers/registry.py; drivers imported lazily)
    build_devices(cfg, emit, observer, stack) -> DeviceSet  (schedulers, listeners, event sinks, drivers)

The agent never branches on a kind's name: the kind's descriptor (drivers.kind.DeviceKind) says
which line a device is on, whether it listens for pushes and whether the poller owns its open().

Lines. Every driver sits on a *line*: a Modbus [[bus]] (shared by its slaves, one link, one
scheduler), or the device's own serial port or connection (wxt_serial, ntcip, gbt20999, the gates).
One `BusScheduler` polls each line, and one lock per line is taken around every read and every
write (`ManagedDriver`), so a command never interleaves with a poll on the same RS-485 wire.

Opening. Modbus links connect on first use and reconnect by themselves. Other polled drivers are
opened on first use and closed after a LinkError, so the next poll reopens them (a controller that
rebooted, an adapter that was re-plugged). Push devices - the plate-camera receiver and an access
controller with an event `listen` address - are opened by a `Listener` task that retries with
backoff and closes them when cancelled.

Pushed readings (plate events, access events, GB/T unsolicited reports) arrive through the drivers'
synchronous callbacks; an `EventSink` queues them and one task per sink submits them to the
pipeline. The queue is bounded: when it is full, a gate event is refused (the callback raises, the
device gets an HTTP 500 and re-sends), while a GB/T report - called from inside the driver's TCP
reader, and only a hint since the poll reads the stage anyway - is dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, AnyDeviceConfig, BusConfig
from agent.scheduler import BusScheduler, DeviceObserver, PolledDevice
from core.backoff import Backoff
from core.errors import ConfigError, DriverError, LinkError
from core.reading import Reading
from drivers.base import BusAware, BusInfo, Driver
from drivers.registry import KINDS

__all__ = ["BuildContext", "ManagedDriver", "EventSink", "Listener", "DeviceSet", "build_devices",
           "line_of", "listens"]

log = logging.getLogger(__name__)

Emit = Callable[[list[Reading]], Awaitable[None]]


class ManagedDriver:
    """A driver behind its line's lock; opened on demand and reopened after a LinkError if `owns_open`."""

    def __init__(self, inner: Driver, lock: asyncio.Lock, *, owns_open: bool) -> None:
        self.inner = inner
        self.name = inner.name
        self.lock = lock
        self.owns_open = owns_open
        self._opened = False

    def bus_info(self) -> BusInfo | None:
        """The wrapped driver's bus, declared (drivers.base.BusAware), or None."""
        return self.inner.bus_info() if isinstance(self.inner, BusAware) else None

    async def open(self) -> None:
        async with self.lock:
            await self._ensure_open()

    async def _ensure_open(self) -> None:
        if self.owns_open and not self._opened:
            await self.inner.open()
            self._opened = True

    async def _drop(self) -> None:
        if self.owns_open and self._opened:
            self._opened = False
            await self.inner.close()

    async def read(self, points: Sequence[str] | None = None) -> list[Reading]:
        async with self.lock:
            await self._ensure_open()
            try:
                return await self.inner.read(points)
            except LinkError:
                await self._drop()
                raise

    async def write(self, command: str, args: Mapping[str, Any]) -> None:
        async with self.lock:
            await self._ensure_open()
            try:
                await self.inner.write(command, args)
            except LinkError:
                await self._drop()
                raise

    async def close(self) -> None:
        await self._drop()


class EventSink:
    """The synchronous `on_event(reading)` callback of a push driver, feeding the pipeline."""

    def __init__(self, name: str, emit: Emit, *, capacity: int = 10_000, drop_when_full: bool = False,
                 observer: DeviceObserver | None = None, store: Emit | None = None) -> None:
        self.name = name
        self._emit = emit
        self._store = store  # Pipeline.store: returns once committed; then the device gets its answer
        self._observer = observer
        self._queue: asyncio.Queue[Reading] = asyncio.Queue(capacity)
        self._done: dict[int, asyncio.Future[None]] = {}  # id(reading) -> its "stored" future
        self.drop_when_full = drop_when_full
        self._in_flight: list[Reading] = []   # taken from the queue, waiting for room in the pipeline
        self.forwarded = 0
        self.refused = 0

    def __call__(self, reading: Reading) -> asyncio.Future[None] | None:
        """Take an event; the returned future completes once it is in the buffer (committed when
        the sink has a `store`), so a push driver can hold the device's acknowledgement until then.
        None when the queue is full and this sink drops (drop_when_full); DriverError when it refuses."""
        try:
            self._queue.put_nowait(reading)
            done = asyncio.get_running_loop().create_future()
            self._done[id(reading)] = done
            return done
        except asyncio.QueueFull:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning("device %s: event queue full (%d), %d event(s) %s so far", self.name,
                            self._queue.maxsize, self.refused, "dropped" if self.drop_when_full else "refused")
            if not self.drop_when_full:
                raise DriverError(f"{self.name}: event queue full ({self._queue.maxsize}); re-send later") from None
            return None

    def take_all(self) -> list[Reading]:
        out = []
        while not self._queue.empty():
            out.append(self._queue.get_nowait())
        return out

    def leftovers(self) -> list[Reading]:
        """After run() was cancelled: everything taken in but not handed to the pipeline, in order.
        Nobody is told these are stored (their device got no answer and re-sends)."""
        out, self._in_flight = self._in_flight + self.take_all(), []
        for done in self._done.values():
            done.cancel()
        self._done.clear()
        return out

    async def run(self) -> None:
        while True:
            self._in_flight = [await self._queue.get()]
            self._in_flight += self.take_all()
            batch = self._in_flight
            # a cancel while waiting here leaves the batch in _in_flight (leftovers())
            await (self._store or self._emit)(batch)
            self._in_flight = []
            for r in batch:
                done = self._done.pop(id(r), None)
                if done is not None and not done.done():
                    done.set_result(None)
            self.forwarded += len(batch)
            if self._observer is not None:
                self._observer.device_read(self.name, len(batch))


class Listener:
    """Owns a push device's open()/close(): opens with capped backoff, holds until cancelled, closes."""

    def __init__(self, driver: Driver, *, backoff: Backoff | None = None) -> None:
        self.driver = driver
        self.name = driver.name
        self.listening = False
        self.last_error: str | None = None
        self._backoff = backoff or Backoff(base_s=1.0, cap_s=60.0)

    async def run(self) -> None:
        while True:
            try:
                await self.driver.open()
                break
            except DriverError as exc:
                if self.last_error is None:
                    log.warning("device %s cannot start listening (will retry): %s", self.name, exc)
                self.last_error = str(exc)
                await asyncio.sleep(self._backoff.next_delay())
        if self.last_error is not None:
            log.info("device %s is listening now", self.name)
        self.listening, self.last_error = True, None
        try:
            await asyncio.Future()  # until cancelled
        finally:
            self.listening = False
            await self.driver.close()


def make_link(bus: BusConfig) -> Any:
    """The Modbus link of one [[bus]] (a serial line or a TCP gateway), not yet connected."""
    from drivers.modbus.driver import ModbusLink

    if bus.kind == "rtu":
        if bus.port is None:
            raise ValueError(f"bus {bus.name}: an rtu bus needs a port")
        return ModbusLink.rtu(bus.port, baudrate=bus.baudrate, parity=bus.parity, stopbits=bus.stopbits,
                              bytesize=bus.bytesize, timeout_s=bus.timeout_s)
    if bus.host is None or bus.tcp_port is None:
        raise ValueError(f"bus {bus.name}: a tcp bus needs a host and a port")
    return ModbusLink.tcp(bus.host, bus.tcp_port, timeout_s=bus.timeout_s)


@dataclass
class BuildContext:
    """What factories may use: the Modbus links (one per [[bus]]), an event sink per device, the box's data dir."""

    buses: Mapping[str, BusConfig]
    stack: AsyncExitStack
    emit: Emit
    observer: DeviceObserver | None = None
    store: Emit | None = None  # durable emit (Pipeline.store) for events a device waits an answer for
    data_dir: Path | None = None  # [box] data_dir: what drivers keep across restarts (gate allow-lists)
    links: dict[str, Any] = field(default_factory=dict)
    sinks: dict[str, EventSink] = field(default_factory=dict)

    def link(self, bus: str) -> Any:
        if bus not in self.links:
            self.links[bus] = make_link(self.buses[bus])
            self.stack.push_async_callback(self.links[bus].close)
        return self.links[bus]

    def refusals(self, device: str) -> Callable[[str], None] | None:
        """The metrics hook for a receiver's refused pushes (quanedge_receiver_refused_total)."""
        count = getattr(self.observer, "receiver_refused", None)
        return None if count is None else (lambda reason: count(device, reason))

    def events(self, device: str, *, drop_when_full: bool = False) -> EventSink:
        if device not in self.sinks:
            self.sinks[device] = EventSink(device, self.emit, drop_when_full=drop_when_full, observer=self.observer,
                                           store=self.store)
        return self.sinks[device]


def build_driver(dev: AnyDeviceConfig, ctx: BuildContext) -> Driver:
    """The driver of one device, built by its kind."""
    return KINDS[dev.kind].build(dev, ctx)


def line_of(dev: AnyDeviceConfig) -> str:
    """The line a device is polled on: its [[bus]] for Modbus, its own otherwise (the kind says)."""
    return KINDS[dev.kind].line(dev)


def listens(dev: AnyDeviceConfig) -> bool:
    """Push devices: a Listener task owns open()/close()."""
    return KINDS[dev.kind].listens(dev)


# --- the whole set -------------------------------------------------------------------------------
@dataclass
class DeviceSet:
    schedulers: list[BusScheduler]
    listeners: list[Listener]
    sinks: list[EventSink]
    drivers: dict[str, ManagedDriver]

    def status(self) -> dict[str, dict[str, Any]]:
        """Per device: the scheduler's view, plus `listening` for push devices."""
        out = {d.name: {"online": d.online, "failures": d.failures, "last_error": d.last_error,
                        "last_error_at": d.last_error_at, "last_success": d.last_success}
               for s in self.schedulers for d in s.devices}
        for lst in self.listeners:
            entry = out.setdefault(lst.name, {"online": None, "failures": 0, "last_error": None, "last_error_at": None,
                                              "last_success": None})
            entry["listening"] = lst.listening
            if not lst.listening:
                entry["online"] = False
                entry["last_error"] = lst.last_error or entry["last_error"]
        return out


def build_devices(cfg: AgentConfig, emit: Emit, observer: DeviceObserver | None, stack: AsyncExitStack, *,
                  store: Emit | None = None) -> DeviceSet:
    ctx = BuildContext({b.name: b for b in cfg.buses}, stack, emit, observer, store, data_dir=cfg.box.data_dir)
    lines: dict[str, list[PolledDevice]] = {}
    locks: dict[str, asyncio.Lock] = {}
    drivers: dict[str, ManagedDriver] = {}
    listeners: list[Listener] = []
    for i, dev in enumerate(cfg.devices):
        try:
            driver = build_driver(dev, ctx)
        except ValueError as exc:  # config validation should have caught it: still say where
            raise ConfigError(f"device settings refused by the {dev.kind} driver: {exc}", file=str(cfg.path),
                              key=f"device[{i}]", value=dev.name) from exc
        line = line_of(dev)
        managed = ManagedDriver(driver, locks.setdefault(line, asyncio.Lock()),
                                owns_open=KINDS[dev.kind].owns_open and not listens(dev))
        if managed.owns_open:
            stack.push_async_callback(managed.close)
        if listens(dev):
            listeners.append(Listener(driver))
        drivers[dev.name] = managed
        lines.setdefault(line, []).append(PolledDevice(dev.name, managed, dev.poll_s, dev.points or None))
    for bus in cfg.buses:
        if bus.name not in lines:
            log.warning("bus %s has no devices; not polled", bus.name)
    schedulers = [BusScheduler(line, devs, emit, observer) for line, devs in lines.items()]
    return DeviceSet(schedulers, listeners, list(ctx.sinks.values()), drivers)
