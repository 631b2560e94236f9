"""The command path: allow-list, driver guard, audit records, serialisation with polling, the control endpoint.

Real transports: a WXT530 on a pty (drivers.wxt_serial.sim) and the agent's health server on loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from agent.commands import AUDIT_POINT, CommandRouter, ControlEndpoint, parse_arg, write_control_token
from agent.devices import ManagedDriver
from agent.health import Metrics, serve_health
from agent.scheduler import BusScheduler, PolledDevice
from core.errors import CommandRefused
from core.reading import Quality, Reading, RecordClass
from drivers.wxt_serial.driver import WxtSerialDriver
from drivers.wxt_serial.settings import WxtSerialSettings
from drivers.wxt_serial.sim import Fault, WxtSerialSim


class Sink:
    def __init__(self) -> None:
        self.readings: list[Reading] = []

    async def __call__(self, readings: list[Reading]) -> None:
        self.readings.extend(readings)

    def audits(self) -> list[dict]:
        return [json.loads(r.text or "") | {"value": r.value, "row_device": r.device}
                for r in self.readings if r.point == AUDIT_POINT]


@pytest.fixture
async def wxt() -> AsyncIterator[WxtSerialSim]:
    async with WxtSerialSim(turnaround_s=0.02) as sim:
        yield sim


def managed(sim: WxtSerialSim, lock: asyncio.Lock) -> ManagedDriver:
    settings = WxtSerialSettings(name="wxt1", port=sim.port, timeout_s=0.5, points=("Ta", "Ua", "Rc"))
    return ManagedDriver(WxtSerialDriver(settings), lock, owns_open=True)


class Probe:
    """Between the managed driver and the real one: counts calls that overlap on the line."""

    def __init__(self, inner: WxtSerialDriver) -> None:
        self.inner, self.name = inner, inner.name
        self.busy = self.overlaps = 0

    async def _run(self, coro):  # type: ignore[no-untyped-def]
        self.busy += 1
        self.overlaps += self.busy > 1
        try:
            return await coro
        finally:
            self.busy -= 1

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def read(self, points=None):  # type: ignore[no-untyped-def]
        return await self._run(self.inner.read(points))

    async def write(self, command, args):  # type: ignore[no-untyped-def]
        return await self._run(self.inner.write(command, args))


async def _poll_while_commanding(sim: WxtSerialSim, poll_lock: asyncio.Lock, command_lock: asyncio.Lock) -> tuple:
    sink = Sink()
    probe = Probe(WxtSerialDriver(WxtSerialSettings(name="wxt1", port=sim.port, timeout_s=0.5,
                                                    points=("Ta", "Ua", "Rc"))))
    poller = ManagedDriver(probe, poll_lock, owns_open=True)      # type: ignore[arg-type]
    commander = ManagedDriver(probe, command_lock, owns_open=True)  # type: ignore[arg-type]
    dev = PolledDevice("wxt1", poller, 0.01)                      # polls back to back: the line is always busy
    sched = BusScheduler("wxt_serial:wxt1", [dev], sink)
    router = CommandRouter({"wxt1": commander}, {"wxt1": ["reset_rain"]}, sink)
    task = asyncio.create_task(sched.run())
    results = []
    try:
        for _ in range(12):
            await asyncio.sleep(0.03)
            results.append((await router.execute("wxt1", "reset_rain", {}, "test")).status)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await probe.close()
    polls = [r for r in sink.readings if r.point == "Ta"]
    return results, polls, dev, probe.overlaps


async def test_commands_wait_for_the_poll_on_their_line_and_never_interleave(wxt: WxtSerialSim) -> None:
    lock = asyncio.Lock()
    results, polls, dev, overlaps = await _poll_while_commanding(wxt, lock, lock)
    assert overlaps == 0
    assert results == ["done"] * 12
    assert dev.failures == 0 and dev.online is True and len(polls) > 12
    assert all(r.quality == Quality.GOOD for r in polls)
    assert wxt.requests.count("0XZRU") == 12


async def test_without_the_shared_lock_the_same_load_overlaps_on_the_line(wxt: WxtSerialSim) -> None:
    """The control experiment: the probe does see interleaving when the lock is not shared."""
    _, _, _, overlaps = await _poll_while_commanding(wxt, asyncio.Lock(), asyncio.Lock())
    assert overlaps > 0


async def test_every_attempt_is_audited_with_origin_and_args(wxt: WxtSerialSim) -> None:
    sink = Sink()
    drv = managed(wxt, asyncio.Lock())
    router = CommandRouter({"wxt1": drv}, {"wxt1": ["reset_rain", "set_polled_mode"]}, sink,
                           timeout_s=2, config_file="box.toml")
    try:
        assert (await router.execute("wxt1", "reset_rain", {"why": "maintenance"}, "fleet:alice")).status == "done"
        with pytest.raises(CommandRefused, match=r"'format' is not allowed for device 'wxt1' \(allow_commands = "
                                                 r"\['reset_rain', 'set_polled_mode'\]\); add it .* in box.toml"):
            await router.execute("wxt1", "format", {}, "fleet:mallory")
        with pytest.raises(CommandRefused, match="no device 'ghost' on this box; devices: wxt1"):
            await router.execute("ghost", "reset_rain", {}, "cli:bob")
        with pytest.raises(CommandRefused, match="plain JSON values"):
            await router.execute("wxt1", "reset_rain", {"x": object()}, "cli:bob")
        wxt.fault = Fault.SILENCE
        failed = await router.execute("wxt1", "set_polled_mode", {}, "cli:bob")
        assert failed.status == "failed" and "DeviceTimeout" in failed.message
    finally:
        await drv.close()
    audits = sink.audits()
    assert [(a["row_device"], a["command"], a["result"], a["value"], a["origin"]) for a in audits] == [
        ("wxt1", "reset_rain", "done", 1.0, "fleet:alice"), ("wxt1", "format", "refused", 0.0, "fleet:mallory"),
        ("_box", "reset_rain", "refused", 0.0, "cli:bob"), ("wxt1", "reset_rain", "refused", 0.0, "cli:bob"),
        ("wxt1", "set_polled_mode", "failed", -1.0, "cli:bob")]
    assert audits[0]["args"] == {"why": "maintenance"} and "unprintable" in audits[3]["args"]
    assert audits[2]["device"] == "ghost" and "device" not in audits[0]
    assert all(r.cls is RecordClass.EVENT for r in sink.readings if r.point == AUDIT_POINT)


async def test_the_sender_raises_for_in_process_callers(wxt: WxtSerialSim) -> None:
    drv = managed(wxt, asyncio.Lock())
    wxt.fault = Fault.SILENCE
    send = CommandRouter({"wxt1": drv}, {"wxt1": ["reset_rain"]}, Sink(), timeout_s=2).sender("traffic_control")
    try:
        with pytest.raises(Exception, match="DeviceTimeout"):
            await send("wxt1", "reset_rain", {})
        with pytest.raises(CommandRefused):
            await send("wxt1", "set_polled_mode", {})
    finally:
        await drv.close()


@pytest.fixture
async def control(wxt: WxtSerialSim, tmp_path: Path) -> AsyncIterator[tuple[str, str, Sink]]:
    sink = Sink()
    drv = managed(wxt, asyncio.Lock())
    token = write_control_token(tmp_path / "control.token")
    endpoint = ControlEndpoint(CommandRouter({"wxt1": drv}, {"wxt1": ["reset_rain"]}, sink), token)
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_health(Metrics(), "0.0.0.0", 0, lambda: {"status": "ok"},
                                            on_ready=bound.set_result, post={"/commands": endpoint}))
    port = await asyncio.wait_for(bound, 5)
    yield f"http://127.0.0.1:{port}/commands", token, sink
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await drv.close()


async def test_control_endpoint_wants_the_token_and_answers_each_outcome(control: tuple[str, str, Sink]) -> None:
    url, token, sink = control
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=10) as c:
        assert (await c.post(url, json={"device": "wxt1", "command": "reset_rain"})).status_code == 401
        assert (await c.post(url, json={"device": "wxt1", "command": "reset_rain"},
                             headers={"Authorization": "Bearer nope"})).status_code == 401
        assert (await c.get(url, headers=auth)).status_code == 405
        assert (await c.post(url, content=b"{not json", headers=auth)).status_code == 400
        done = await c.post(url, json={"device": "wxt1", "command": "reset_rain", "origin": "cli:ann; rm -rf"},
                            headers=auth)
        assert done.status_code == 200 and done.json()["status"] == "done"
        assert done.json()["origin"] == "local:cli:ann__rm_-rf"
        refused = await c.post(url, json={"device": "wxt1", "command": "set_polled_mode"}, headers=auth)
        assert refused.status_code == 403 and "not allowed for device 'wxt1'" in refused.json()["message"]
    assert [a["result"] for a in sink.audits()] == ["done", "refused"]  # 401/400 never reached the router


def _non_loopback_address() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))   # no packet is sent; picks the outgoing interface
            addr = s.getsockname()[0]
    except OSError:
        return None
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr


async def test_control_endpoint_refuses_peers_that_are_not_loopback(control: tuple[str, str, Sink]) -> None:
    url, token, sink = control
    addr = _non_loopback_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.post(url.replace("127.0.0.1", addr), json={"device": "wxt1", "command": "reset_rain"},
                         headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403 and sink.audits() == []


def test_control_token_is_private_and_fresh(tmp_path: Path) -> None:
    path = tmp_path / "d" / "control.token"
    first = write_control_token(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and path.read_text() == first and len(first) >= 40
    assert write_control_token(path) != first


@pytest.mark.parametrize("text,expected", [
    ("door=1", ("door", 1)), ("pattern=2", ("pattern", 2)), ("plate=鲁A12345", ("plate", "鲁A12345")),
    ("values=[1, 2]", ("values", [1, 2])), ("flag=true", ("flag", True)), ("note=a=b", ("note", "a=b")),
])
def test_cli_args_are_json_when_they_parse(text: str, expected: tuple) -> None:
    assert parse_arg(text) == expected


def test_cli_args_need_a_name() -> None:
    for bad in ("door", "=1"):
        with pytest.raises(ValueError, match="name=value"):
            parse_arg(bad)
