"""agent.devices wrappers: reopen after a lost connection (real GB/T controller sim), event sinks, listeners."""

from __future__ import annotations

import asyncio
import time

import pytest

from agent.devices import EventSink, Listener, ManagedDriver
from core.backoff import Backoff
from core.errors import DriverError, LinkError
from core.reading import Reading, RecordClass
from drivers.gbt20999.driver import GbtDriver
from drivers.gbt20999.settings import GbtSettings
from drivers.gbt20999.sim import GbtControllerSim
from drivers.plate_camera.driver import PlateReceiverDriver
from drivers.plate_camera.settings import PlateCameraSettings
from drivers.push_auth import PushCredential, parse_sources


def _event(i: int) -> Reading:
    return Reading("gate", "plate", 1.0, "", time.time(), cls=RecordClass.ALARM, text=str(i))


async def test_a_dropped_connection_fails_one_read_and_the_next_one_reconnects() -> None:
    async with GbtControllerSim() as sim:
        drv = ManagedDriver(GbtDriver(GbtSettings(name="tsc", host="127.0.0.1", port=sim.port, timeout_s=1)),
                            asyncio.Lock(), owns_open=True)
        try:
            assert [r.point for r in await drv.read(["current_plan"])] == ["current_plan"]  # opened on first use
            sim.drop_connections()                                     # the controller rebooted
            await asyncio.sleep(0.1)
            with pytest.raises(LinkError):
                await drv.read(["current_plan"])
            (reading,) = await drv.read(["current_plan"])              # reopened, no restart needed
            assert reading.value == 1.0
        finally:
            await drv.close()
        assert drv.inner._writer is None  # type: ignore[attr-defined]


async def test_the_line_lock_is_held_for_reads_and_writes() -> None:
    lock = asyncio.Lock()
    async with GbtControllerSim() as sim:
        drv = ManagedDriver(GbtDriver(GbtSettings(name="tsc", host="127.0.0.1", port=sim.port,
                                                  allowed_plans=frozenset({2}))),
                            lock, owns_open=True)
        try:
            async with lock:                                           # a poll on the same line is in progress
                write = asyncio.create_task(drv.write("set_plan", {"plan": 2}))
                await asyncio.sleep(0.2)
                assert not write.done() and sim.plan == 1
            await write
            assert sim.plan == 2
        finally:
            await drv.close()


async def test_event_sink_refuses_when_full_or_drops_and_counts() -> None:
    got: list[Reading] = []

    async def emit(batch: list[Reading]) -> None:
        got.extend(batch)

    gate = EventSink("gate", emit, capacity=2)
    gate(_event(1)), gate(_event(2))
    with pytest.raises(DriverError, match="event queue full"):
        gate(_event(3))                                        # the camera gets a 500 and re-sends
    reports = EventSink("tsc", emit, capacity=1, drop_when_full=True)
    reports(_event(1)), reports(_event(2))                     # a report is a hint: dropped, counted
    assert (gate.refused, reports.refused) == (1, 1)
    task = asyncio.create_task(gate.run())
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert [r.text for r in got] == ["1", "2"] and gate.forwarded == 2


async def test_event_sink_keeps_what_it_holds_when_cancelled_under_backpressure() -> None:
    blocked = asyncio.Event()

    async def stuck(batch: list[Reading]) -> None:             # the pipeline queue is full
        blocked.set()
        await asyncio.Future()

    sink = EventSink("gate", stuck)
    sink(_event(1)), sink(_event(2))
    task = asyncio.create_task(sink.run())
    await blocked.wait()
    sink(_event(3))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert [r.text for r in sink.leftovers()] == ["1", "2", "3"] and sink.leftovers() == []


async def test_listener_retries_a_busy_port_then_listens_and_closes_on_cancel() -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    rx = PlateReceiverDriver(PlateCameraSettings(
        name="gate", listen_host="127.0.0.1", listen_port=port,
        cameras=(PushCredential("cam", sources=parse_sources(["127.0.0.1"])),)), lambda r: None)
    listener = Listener(rx, backoff=Backoff(base_s=0.05, cap_s=0.1))
    task = asyncio.create_task(listener.run())
    await asyncio.sleep(0.2)
    assert not listener.listening and "cannot listen" in (listener.last_error or "")
    blocker.close()
    await blocker.wait_closed()
    for _ in range(50):
        if listener.listening:
            break
        await asyncio.sleep(0.05)
    assert listener.listening and listener.last_error is None
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert not listener.listening
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
