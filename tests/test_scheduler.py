"""Scheduler rules: serialised bus, short failure cost, offline devices probed, online/offline once each way."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

from agent.scheduler import BusScheduler, PolledDevice
from core.errors import DeviceTimeout
from core.reading import Reading, RecordClass


class ScriptedDriver:
    """A stand-in device for timing rules only: answers after `latency`, or times out when told."""

    def __init__(self, name: str, latency: float, timeout: float, log: list) -> None:
        self.name = name
        self.latency = latency
        self.timeout = timeout
        self.silent = False
        self.log = log
        self.busy = False

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def write(self, command: str, args: Mapping[str, Any]) -> None: ...

    async def read(self, points: Sequence[str] | None = None) -> list[Reading]:
        assert not self.busy
        self.log.append(("start", self.name, time.monotonic()))
        self.busy = True
        try:
            if self.silent:
                await asyncio.sleep(self.timeout)
                raise DeviceTimeout(f"{self.name}: no reply in {self.timeout} s")
            await asyncio.sleep(self.latency)
            return [Reading(self.name, "x", 1.0, "", time.time())]
        finally:
            self.busy = False
            self.log.append(("end", self.name, time.monotonic()))


class Observer:
    def __init__(self) -> None:
        self.states: list[tuple[str, bool]] = []
        self.errors = 0

    def device_read(self, device: str, n: int) -> None: ...
    def device_state(self, device: str, online: bool) -> None: self.states.append((device, online))
    def device_error(self, device: str, kind: str) -> None: self.errors += 1


async def run_for(sched: BusScheduler, seconds: float) -> None:
    task = asyncio.create_task(sched.run())
    await asyncio.sleep(seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_requests_on_one_bus_never_overlap_and_a_silent_slave_is_quarantined() -> None:
    log: list = []
    drivers = [ScriptedDriver(f"d{i}", 0.01, 0.1, log) for i in range(4)]
    drivers[0].silent = True
    emitted: list[Reading] = []

    async def emit(rs: list[Reading]) -> None:
        emitted.extend(rs)

    obs = Observer()
    sched = BusScheduler("bus", [PolledDevice(d.name, d, 0.1) for d in drivers], emit, obs, probe_s=1.0)
    await run_for(sched, 3.0)
    # strictly serialised: starts and ends alternate
    kinds = [k for k, _, _ in log]
    assert all(a != b for a, b in zip(kinds, kinds[1:])), "two requests were on the bus at once"
    silent_polls = sum(1 for k, n, _ in log if k == "start" and n == "d0")
    healthy_polls = [sum(1 for k, n, _ in log if k == "start" and n == f"d{i}") for i in (1, 2, 3)]
    assert silent_polls <= 8, f"a quarantined slave was retried {silent_polls} times in 3 s"
    assert min(healthy_polls) >= 20, healthy_polls   # ~30 expected at 0.1 s; the silent one barely slows them
    # offline logged once, as a state change and as an EVENT record
    assert obs.states.count(("d0", False)) == 1
    events = [r for r in emitted if r.cls is RecordClass.EVENT and r.device == "d0"]
    assert [e.value for e in events] == [0.0]


async def test_device_back_after_outage_is_online_once_and_data_flows() -> None:
    log: list = []
    d = ScriptedDriver("d0", 0.005, 0.05, log)
    emitted: list[Reading] = []

    async def emit(rs: list[Reading]) -> None:
        emitted.extend(rs)

    obs = Observer()
    sched = BusScheduler("bus", [PolledDevice("d0", d, 0.05)], emit, obs, probe_s=0.3)
    task = asyncio.create_task(sched.run())
    await asyncio.sleep(0.3)
    d.silent = True
    await asyncio.sleep(1.0)
    d.silent = False
    n_before = sum(1 for r in emitted if r.point == "x")
    await asyncio.sleep(1.0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert obs.states == [("d0", True), ("d0", False), ("d0", True)]
    assert sum(1 for r in emitted if r.point == "x") > n_before + 5
