"""HIL: the bus scheduler with the real driver against the device simulators (RTU on a pty, TCP).

Several slaves share one RS-485 line at its real wire time. Checked: one silent slave does not slow
the others; a slave back from an outage is online again once and its data flows; the scheduler
keeps t3.5 between frames (a strict simulated line drops glued frames, and pymodbus alone glues
them); a silent slave costs one timeout per poll; the start-up capacity report predicts what the
bus then really does; counters give wrap-safe rates.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, replace
from typing import Any

import pytest

from agent.devices import ManagedDriver
from agent.scheduler import BusScheduler, PolledDevice, PollRecord, probe_interval, return_bound
from core.errors import ConfigError
from core.reading import Quality, Reading, RecordClass
from drivers.modbus.driver import ModbusDevice, ModbusLink
from drivers.modbus.profile import LineDefaults, Profile, load_profile
from drivers.modbus.sim import make_model
from drivers.modbus.sim_slave import RtuBus, SimSlave, serving, set_fault

TIMEOUT = 0.1


@dataclass
class Rig:
    info: dict[str, Any]
    slaves: dict[int, SimSlave]
    sims: dict[int, Any]
    wire: RtuBus | None
    line: LineDefaults
    emitted: list[Reading]
    polls: list[PollRecord]
    states: list[tuple[str, bool]]

    def link(self, tcp: bool = False, timeout_s: float = TIMEOUT) -> ModbusLink:
        if tcp:
            return ModbusLink.tcp("127.0.0.1", self.info["tcp_port"], timeout_s=timeout_s)
        return ModbusLink.rtu(self.info["rtu_path"], self.line, timeout_s=timeout_s)

    def scheduler(self, link: ModbusLink, devices: list[tuple[str, int, float]],
                  profiles: dict[int, Profile] | None = None, **kw: Any) -> BusScheduler:
        profiles = profiles or {}
        polled = [PolledDevice(f"{model}-{unit}", ModbusDevice(f"{model}-{unit}", link, unit,
                                                               profiles.get(unit) or load_profile(model)), poll_s)
                  for model, unit, poll_s in devices]

        async def emit(rs: list[Reading]) -> None:
            self.emitted.extend(rs)

        rig = self

        class Obs:
            def device_read(self, device: str, n: int) -> None: ...
            def device_error(self, device: str, kind: str) -> None: ...
            def device_state(self, device: str, online: bool) -> None: rig.states.append((device, online))

        return BusScheduler("b1", polled, emit, Obs(), trace=self.polls.append, **kw)

    def good(self, device: str, point: str) -> list[Reading]:
        return [r for r in self.emitted if r.device == device and r.point == point and r.quality == Quality.GOOD]


@asynccontextmanager
async def rig(specs: list[tuple[str, int]], *, baudrate: int, parity: str = "N", turnaround_s: float = 0.005,
              strict_gaps: bool = False, tcp: bool = False, **sim_kw: Any) -> AsyncIterator[Rig]:
    made = {u: make_model(m, u, seed=i, **sim_kw) for i, (m, u) in enumerate(specs)}
    buses: list[Any] = []
    async with serving([s for s, _ in made.values()], rtu=not tcp, tcp_port=0 if tcp else None, control_port=0,
                       baudrate=baudrate, parity=parity, turnaround_s=turnaround_s, strict_gaps=strict_gaps,
                       buses=buses) as info:
        wire = next((b for b in buses if isinstance(b, RtuBus)), None)
        yield Rig(info, {u: s for u, (s, _) in made.items()}, {u: m for u, (_, m) in made.items()}, wire,
                  LineDefaults(baudrate, parity, 1, 8), [], [], [])


async def run_for(sched: BusScheduler, seconds: float) -> None:
    task = asyncio.create_task(sched.run())
    await asyncio.sleep(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


FOUR = [("renke_wind_speed", 1), ("renke_wind_direction", 2), ("pm_transmitter", 3), ("dfrobot_sen0575", 4)]


@pytest.mark.parametrize("tcp", [False, True], ids=["rtu", "tcp"])
async def test_one_silent_slave_does_not_slow_the_others(tcp: bool) -> None:
    async with rig(FOUR, baudrate=9600, tcp=tcp) as r:
        r.slaves[4].set_fault("silent")
        async with r.link(tcp) as link:
            sched = r.scheduler(link, [(m, u, 0.25) for m, u in FOUR], probe_s=1.0)
            await run_for(sched, 4.0)
    healthy = ["renke_wind_speed-1", "renke_wind_direction-2", "pm_transmitter-3"]
    counts = Counter(p.device for p in r.polls if p.ok)
    for name in healthy:
        assert counts[name] >= 14, counts  # 16 expected at 0.25 s in 4 s
    assert r.states.count(("dfrobot_sen0575-4", False)) == 1
    silent = [p for p in r.polls if p.device == "dfrobot_sen0575-4"]
    assert 2 <= len(silent) <= 6, len(silent)  # probed every 1 s once offline, not retried every 0.25 s
    # a silent slave delays the others by at most one timeout (+ the line's recovery wait on RTU)
    budget = TIMEOUT + (TIMEOUT if not tcp else 0) + 0.08
    for d in sched.devices[:3]:
        assert d.worst_start_delay_s <= budget, (d.name, d.worst_start_delay_s)
    assert r.good("pm_transmitter-3", "pm25") and not [e for e in r.emitted if e.device.startswith("dfrobot")
                                                       and e.cls is RecordClass.ROUTINE]


async def test_slave_back_after_outage_is_online_once_and_data_flows() -> None:
    async with rig(FOUR[:3], baudrate=4800) as r, r.link() as link:
        sched = r.scheduler(link, [(m, u, 0.2) for m, u in FOUR[:3]], probe_s=0.6)
        task = asyncio.create_task(sched.run())
        await asyncio.sleep(0.8)
        await set_fault(r.info["control_port"], 2, "disconnect")  # cable pulled (RTU: silence)
        await asyncio.sleep(1.5)
        await set_fault(r.info["control_port"], 2, None)         # and plugged back in
        n_before = len(r.good("renke_wind_direction-2", "wind_direction"))
        await asyncio.sleep(1.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [s for s in r.states if s[0] == "renke_wind_direction-2"] == [
        ("renke_wind_direction-2", True), ("renke_wind_direction-2", False), ("renke_wind_direction-2", True)]
    events = [e.value for e in r.emitted if e.device == "renke_wind_direction-2" and e.point == "_online"]
    assert events == [1.0, 0.0, 1.0]
    assert len(r.good("renke_wind_direction-2", "wind_direction")) >= n_before + 4
    direction = r.good("renke_wind_direction-2", "wind_direction")[-1].value
    assert direction == r.sims[2].values["wind_direction"] or direction is not None


async def test_scheduler_keeps_t35_between_frames_which_pymodbus_alone_does_not() -> None:
    async with rig([("lufft_ws", 1), ("dfrobot_sen0575", 2)], baudrate=9600, strict_gaps=True) as r:
        assert r.wire is not None
        async with r.link() as link:
            lufft = ModbusDevice("lufft", link, 1, load_profile("lufft_ws"))
            glued = 0
            for _ in range(8):  # the driver alone: four requests back to back
                before = r.wire.gap_violations
                with suppress(Exception):
                    await lufft.read()
                glued += r.wire.gap_violations - before
            assert glued > 0, "pymodbus sent a request within t3.5 of a reply on this run"
            await asyncio.sleep(0.3)
            base = r.wire.gap_violations
            sched = r.scheduler(link, [("lufft_ws", 1, 0.05), ("dfrobot_sen0575", 2, 0.05)])
            assert sched.line is not None and sched.line.t35_s == pytest.approx(3.5 * 10 / 9600)
            await run_for(sched, 2.0)
        assert r.wire.gap_violations == base
    assert all(p.ok for p in r.polls) and len(r.polls) >= 10
    assert {p.requests for p in r.polls if p.device == "lufft_ws-1"} == {4}
    assert r.good("lufft_ws-1", "air_temperature") and r.good("lufft_ws-1", "wind_speed_kmh")


async def test_a_silent_slave_costs_one_timeout_per_poll_not_per_request() -> None:
    async with rig([("lufft_ws", 1), ("renke_wind_speed", 2)], baudrate=19200) as r:
        r.slaves[1].set_fault("silent")
        async with r.link() as link:
            sched = r.scheduler(link, [("lufft_ws", 1, 0.1), ("renke_wind_speed", 2, 0.1)], offline_after=50)
            await run_for(sched, 1.5)
    lufft = [p for p in r.polls if p.device == "lufft_ws-1"]
    assert lufft and all(p.requests == 1 and not p.ok for p in lufft)  # its 3 other requests were not sent
    # one request per poll; a poll in flight when the run was stopped sent its request but left no record
    assert len(lufft) <= r.slaves[1].requests <= len(lufft) + 1
    assert max(p.ended - p.started for p in lufft) < TIMEOUT + 0.06


async def test_capacity_report_predicts_an_oversubscribed_bus(caplog: pytest.LogCaptureFixture) -> None:
    specs = [("small_weather_station", u) for u in range(1, 7)]
    async with rig(specs, baudrate=4800, turnaround_s=0.01) as r, r.link(timeout_s=0.3) as link:
        sched = r.scheduler(link, [(m, u, 0.2) for m, u in specs], turnaround_s=0.01)
        report = sched.capacity_report
        assert report is not None and report.oversubscribed
        with caplog.at_level(logging.WARNING, logger="agent.scheduler"):
            await run_for(sched, 4.0)
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 6 and all("over-subscribed" in w for w in warnings)
    predicted = report.devices[0].expected_period_s  # 6 x (8 + 33 bytes at 4800 + 2 x t3.5 + 10 ms) = 0.66 s
    assert predicted == pytest.approx(6 * r.wire.char_s * 41 + 6 * (2 * r.wire.t35 + 0.01), rel=1e-6)  # type: ignore[union-attr]
    ok = [p for p in r.polls if p.ok and p.device == "small_weather_station-3"]
    measured = (ok[-1].started - ok[1].started) / (len(ok) - 2)
    assert measured == pytest.approx(predicted, rel=0.2), (measured, predicted)


def without_max_rate(model: str) -> Profile:
    prof = load_profile(model)
    return replace(prof, points=tuple(replace(p, counter=replace(p.counter, max_rate=None)) if p.counter else p
                                      for p in prof.points))


@pytest.mark.parametrize("shipped", [True, False], ids=["shipped-max-rate", "no-max-rate"])
async def test_counter_rates_through_the_scheduler_survive_a_wrap(shipped: bool) -> None:
    async with rig([("dfrobot_sen0575", 0xC0)], baudrate=9600, tip_start=2**32 - 3) as r:
        sim = r.sims[0xC0]
        async with r.link() as link:
            profile = load_profile("dfrobot_sen0575") if shipped else without_max_rate("dfrobot_sen0575")
            sched = r.scheduler(link, [("dfrobot_sen0575", 0xC0, 0.15)], profiles={0xC0: profile})
            task = asyncio.create_task(sched.run())
            for _ in range(6):  # 2 tips every 0.3 s (24,000 tips/h), through the top of the 32-bit counter
                await asyncio.sleep(0.3)
                sim.rain_start_mm += 2 * 0.2794
            await asyncio.sleep(0.3)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    tips = [x for x in r.emitted if x.point == "tip_count"]
    rates = [x for x in r.emitted if x.point == "tip_count_rate"]
    assert [t.value for t in tips][-1] in (9.0, 11.0) and len(rates) == len(tips) - 1
    if shipped:  # faster than any rain (max_rate 2000 tips/h): reported missing, never as a number
        moving = [x for x, a, b in zip(rates, tips, tips[1:]) if a.value != b.value]
        assert moving and all(x.value is None and x.quality & Quality.MISSING for x in moving)
        assert "taken as a reset" in (moving[0].text or "")
        return
    assert any(t.quality & Quality.WRAPPED for t in tips) and any(x.quality & Quality.WRAPPED for x in rates)
    assert all(x.value is not None and x.value >= 0 and x.quality & Quality.DERIVED for x in rates)
    counted = sum(x.value * (b.ts - a.ts) / 3600 for a, b, x in zip(tips, tips[1:], rates))  # type: ignore[operator]
    assert counted == pytest.approx(tips[-1].value + 3, abs=0.01)  # every tip counted once, across the wrap
    mm = [x for x in r.emitted if x.point == "rainfall_total_rate"]
    assert mm and all(x.unit == "mm/h" for x in mm)


async def _emit_nothing(_: list[Reading]) -> None:
    return None


def test_start_up_checks_without_io() -> None:
    wxt = load_profile("vaisala_wxt530")
    rtu = ModbusLink.rtu("/dev/ttyNOPE", baudrate=9600, parity="N", timeout_s=0.05)
    dev = PolledDevice("wxt", ModbusDevice("wxt", rtu, 1, wxt), 1.0)
    sched = BusScheduler("b1", [dev], _emit_nothing)
    assert sched.line is not None and str(sched.line) == "9600 8N1"
    report = sched.capacity_report
    assert report is not None and not report.oversubscribed
    assert report.devices[0].cycle_s == pytest.approx(sched.line.read_s(1) + sched.line.read_s(26))
    # a 26-register reply takes ~59 ms on the wire at 9600: a 50 ms timeout can never be met
    assert len(sched.timeout_warnings) == 1 and "26 registers" in sched.timeout_warnings[0]
    assert "50 ms timeout" in sched.timeout_warnings[0]
    # the agent's wrapper passes the bus its driver declares (drivers.base.BusAware) ...
    locked = ManagedDriver(ModbusDevice("wxt", rtu, 1, wxt), asyncio.Lock(), owns_open=False)
    wrapped = BusScheduler("b1", [PolledDevice("wxt", locked, 1.0)], _emit_nothing)
    assert wrapped.capacity_report == report and len(wrapped.timeout_warnings) == 1

    class Undeclared:  # ... and a wrapper that declares nothing gets no bus treatment: nothing is guessed
        def __init__(self, inner: ModbusDevice) -> None:
            self.inner, self.name, self.profile, self.link = inner, inner.name, inner.profile, inner.link

        async def read(self, points: Any = None) -> list[Reading]:
            return await self.inner.read(points)

    bare = BusScheduler("b1", [PolledDevice("wxt", Undeclared(ModbusDevice("wxt", rtu, 1, wxt)), 1.0)],  # type: ignore[arg-type]
                        _emit_nothing)
    assert bare.capacity_report is None and bare.line is None
    tcp = ModbusLink.tcp("127.0.0.1", 1502)
    sched = BusScheduler("gw", [PolledDevice("wxt", ModbusDevice("wxt", tcp, 1, wxt), 1.0)], _emit_nothing)
    assert sched.line is None and sched.capacity_report is None and sched.timeout_warnings == []
    with pytest.raises(ConfigError, match="unknown point") as err:
        BusScheduler("b1", [PolledDevice("wxt", ModbusDevice("wxt", rtu, 1, wxt), 1.0, ["air_temp"])], _emit_nothing)
    assert "air_temperature" in str(err.value)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Task.cancelling() is new in Python 3.11")
async def test_a_cancel_swallowed_inside_a_read_still_stops_the_bus() -> None:
    """asyncio.wait_for before 3.12 (inside pymodbus) can eat a cancel that lands as the reply arrives."""

    class Swallowing:
        name = "d"
        reads = 0
        swallow = True

        async def read(self, points: Any = None) -> list[Reading]:
            self.reads += 1
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                if not self.swallow:
                    raise
                # what the racy wait_for does: the reply wins, the cancel is lost
            return [Reading("d", "x", 1.0, "", 0.0)]

    drv = Swallowing()
    sched = BusScheduler("b", [PolledDevice("d", drv, 0.01)], _emit_nothing)  # type: ignore[arg-type]
    task = asyncio.create_task(sched.run())
    try:
        await asyncio.sleep(0.2)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=1.0)
        assert done and task.cancelled(), "the bus task kept polling after it was cancelled"
        n = drv.reads
        await asyncio.sleep(0.2)
        assert drv.reads == n
    finally:
        drv.swallow = False
        task.cancel()
        await asyncio.wait([task], timeout=1.0)


async def test_an_offline_slave_is_probed_cheaply_and_read_again_soon_after_it_returns() -> None:
    """Issue 11: a device back after a failure waited 16-27 s (backoff up to 60 s). Now: read again
    within return_bound(poll_s) = max(2 x poll_s, 5 s) of its return; while it is away, one request
    (one timeout at most) per probe interval."""
    poll_s = 0.5
    bound, interval = return_bound(poll_s), probe_interval(poll_s)
    async with rig([("lufft_ws", 1), ("renke_wind_speed", 2)], baudrate=9600) as r, r.link() as link:
        sched = r.scheduler(link, [("lufft_ws", 1, poll_s), ("renke_wind_speed", 2, poll_s)])
        task = asyncio.create_task(sched.run())
        latencies, windows = [], []
        try:
            await asyncio.sleep(1.0)
            for away in (3.3, 4.6, 5.9):  # different phases of the return against the probes
                went = asyncio.get_running_loop().time()
                requests_before = r.slaves[1].requests
                r.slaves[1].set_fault("silent")
                await asyncio.sleep(away)
                windows.append((went, asyncio.get_running_loop().time(), r.slaves[1].requests - requests_before))
                lufft = sched.devices[0]
                assert "no reply" in (lufft.last_error or "") and time.time() - away <= lufft.last_error_at
                r.slaves[1].set_fault(None)
                back = asyncio.get_running_loop().time()
                ok = await _first_ok_poll(r, "lufft_ws-1", after=back, timeout=bound + 2)
                latencies.append(ok.ended - back)
                assert (lufft.last_error, lufft.last_error_at) == (None, None)  # cleared by the good poll
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    print(f"\nprobe interval {interval:g} s, bound {bound:g} s; read again after return: "
          + ", ".join(f"{x:.2f} s" for x in latencies))
    assert all(x <= bound for x in latencies), (latencies, bound)
    assert [s for s in r.states if s[0] == "lufft_ws-1"] == [("lufft_ws-1", True)] + [
        ("lufft_ws-1", False), ("lufft_ws-1", True)] * 3
    silent = [p for p in r.polls if p.device == "lufft_ws-1" and not p.ok]
    assert all(p.requests == 1 for p in silent), [p.requests for p in silent]  # the lufft plans 4 requests
    assert max(p.ended - p.started for p in silent) < TIMEOUT + 0.06  # one timeout, no more
    for went, came, sent in windows:  # 2 polls to go offline, then one probe per interval
        assert sent <= 2 + (came - went - 2 * poll_s) / interval + 1, (came - went, sent)
        probes = sorted(p.started for p in silent if went + 2 * poll_s < p.started < came)
        assert all(b - a >= interval - 0.05 for a, b in zip(probes, probes[1:])), probes
    assert len(r.good("renke_wind_speed-2", "wind_speed")) >= 0.8 * 18 / poll_s  # the other slave never waits


async def _first_ok_poll(r: Rig, device: str, *, after: float, timeout: float) -> PollRecord:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        ok = [p for p in r.polls if p.device == device and p.ok and p.started >= after]
        if ok:
            return ok[0]
        await asyncio.sleep(0.02)
    raise AssertionError(f"{device} not read again within {timeout:g} s of its return")
