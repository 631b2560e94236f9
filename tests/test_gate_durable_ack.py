"""A gate event is acknowledged to its device only once it is committed to the buffer.

The plate camera and the access controller keep an event until they have our answer; answering
before the commit would let a power cut lose an event the device already forgot. Checked with a
real buffer whose commit is held back, then on real processes with kill -9.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from agent.buffer import BufferSettings, DurableBuffer
from agent.devices import EventSink
from agent.pipeline import Pipeline
from drivers.access_controller.driver import AccessControllerDriver
from drivers.access_controller.settings import AccessControllerSettings
from drivers.plate_camera.driver import PlateReceiverDriver
from drivers.plate_camera.settings import PlateCameraSettings
from drivers.plate_camera.sim import PlateCameraSim
from drivers.push_auth import PushCredential, parse_sources

ALLOW = frozenset({"鲁A12345"})
CAMERAS = (PushCredential("cam-1", sources=parse_sources(["127.0.0.1"])),)


class HeldBuffer(DurableBuffer):
    """A real buffer whose appends wait for `release` (a slow disk, a long fsync)."""

    def __init__(self, settings: BufferSettings) -> None:
        super().__init__(settings)
        self.release = asyncio.Event()

    async def append(self, readings):  # type: ignore[override]
        await self.release.wait()
        return await super().append(readings)


async def rows(buffer: DurableBuffer) -> list:
    return await buffer.peek(1000)


@pytest.fixture
async def held(tmp_path: Path):
    buffer = HeldBuffer(BufferSettings(path=tmp_path / "buffer.db", max_bytes=8 << 20))
    await buffer.open()
    pipeline = Pipeline(buffer)
    runner = asyncio.create_task(pipeline.run())
    sink = EventSink("gate", pipeline.submit, store=pipeline.store)
    sink_task = asyncio.create_task(sink.run())
    yield buffer, sink
    for t in (runner, sink_task):
        t.cancel()
    await asyncio.gather(runner, sink_task, return_exceptions=True)
    buffer.release.set()
    await buffer.close()


async def test_the_camera_gets_its_answer_only_after_the_commit(held) -> None:
    buffer, sink = held
    rx = PlateReceiverDriver(PlateCameraSettings(name="gate", listen_host="127.0.0.1", listen_port=0, allow_list=ALLOW,
                                                 cameras=CAMERAS), sink)
    await rx.open()
    try:
        async with PlateCameraSim(f"http://127.0.0.1:{rx.port}/", serialno="cam-1", timeout_s=5.0) as cam:
            car = asyncio.create_task(cam.recognise("鲁A12345"))
            await asyncio.sleep(0.3)
            assert not car.done(), "answered before the event was stored"
            assert await rows(buffer) == []
            buffer.release.set()
            assert await asyncio.wait_for(car, 5) is True
            [row] = await rows(buffer)
            assert row.point == "plate" and json.loads(row.text)["plate"] == "鲁A12345"
    finally:
        await rx.close()


async def test_no_commit_in_time_is_a_503_and_the_resend_stores_one_event(held) -> None:
    buffer, sink = held
    rx = PlateReceiverDriver(PlateCameraSettings(name="gate", listen_host="127.0.0.1", listen_port=0, allow_list=ALLOW,
                                                 cameras=CAMERAS, store_timeout_s=0.2), sink)
    await rx.open()
    body = {"AlarmInfoPlate": {"serialno": "cam-1", "result": {"PlateResult": {
        "license": "鲁A12345", "plateid": 7, "confidence": 96, "timeStamp": {"Timeval": {"sec": 1}}}}}}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{rx.port}", timeout=5) as c:
            first = await c.post("/", json=body)
            assert first.status_code == 503 and "re-send" in first.text
            resend = asyncio.create_task(c.post("/", json=body))  # waits for the first copy's commit
            await asyncio.sleep(0.05)
            buffer.release.set()
            second = await resend
            assert second.status_code in (200, 503)
            third = await c.post("/", json=body)
            assert third.status_code == 200 and '"info":"ok"' in third.text.replace(" ", "")
        assert len(await rows(buffer)) == 1, "one car, one stored event, however often the camera re-sends"
    finally:
        await rx.close()


async def test_the_access_controller_push_waits_for_the_commit(held) -> None:
    buffer, sink = held
    drv = AccessControllerDriver(AccessControllerSettings(
        name="door", url="http://127.0.0.1:9", username="u", password="p", listen_host="127.0.0.1", listen_port=0,
        event_senders=(PushCredential("door", sources=parse_sources(["127.0.0.1"])),)), on_event=sink)
    await drv.open()
    event = {"ipAddress": "10.0.0.5", "dateTime": "2026-12-02T08:00:00+08:00", "eventType": "AccessControllerEvent",
             "AccessControllerEvent": {"majorEventType": 5, "subEventType": 1, "cardNo": "12345678",
                                       "doorNo": 1, "serialNo": 41}}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{drv.listen_port}", timeout=10) as c:
            push = asyncio.create_task(c.post("/", json=event))
            await asyncio.sleep(0.3)
            assert not push.done() and await rows(buffer) == []
            buffer.release.set()
            assert (await push).status_code == 200
            assert (await c.post("/", json=event)).status_code == 200  # a re-push: no second row
        assert len(await rows(buffer)) == 1
    finally:
        await drv.close()


# --- kill -9 on real processes ---------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BOX = """
[box]
id = "gate-box"
data_dir = "{data}"

[uplink]                      # a broker nobody runs: every event stays in the buffer for the check
kind = "mqtt"
[uplink.mqtt]
host = "127.0.0.1"
port = {dead}

[health]
enabled = false

[[device]]
name = "gate"
kind = "plate_camera"
listen = "127.0.0.1:{port}"
allow_list = ["鲁A12345"]
cameras = [{{ serial = "cam-1", sources = ["127.0.0.1"] }}]
"""


@pytest.mark.slow
def test_kill_9_never_loses_an_acknowledged_gate_event(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "box.toml"
    cfg.write_text(BOX.format(data=tmp_path / "data", dead=free_port(), port=port))
    rng = random.Random(7)
    acked: list[int] = []
    cycles = int(os.environ.get("QUANEDGE_GATE_KILL_CYCLES", "6"))

    async def drive(cam: PlateCameraSim, killed: asyncio.Event) -> None:
        while not killed.is_set():
            plate_id = cam._next_id
            if await cam.recognise(rng.choice(["鲁A12345", "鲁B99999"])) is not None:
                acked.append(plate_id)

    for _ in range(cycles):
        agent = subprocess.Popen([sys.executable, "-m", "quanedge", "agent", "run", "--config", str(cfg)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 20
            while True:  # listening?
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    assert agent.poll() is None, agent.stderr.read().decode()[-2000:]
                    assert time.monotonic() < deadline, "agent did not start listening"
                    time.sleep(0.05)

            async def cycle(agent: subprocess.Popen = agent) -> None:
                async with PlateCameraSim(f"http://127.0.0.1:{port}/", serialno="cam-1", timeout_s=2.0,
                                          first_plate_id=1 + len(acked) * 10 + rng.randrange(1_000_000)) as cam:
                    killed = asyncio.Event()
                    car = asyncio.create_task(drive(cam, killed))
                    await asyncio.sleep(rng.uniform(0.3, 1.2))
                    agent.send_signal(signal.SIGKILL)
                    await asyncio.to_thread(agent.wait)
                    killed.set()
                    await car

            asyncio.run(cycle())
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    db = sqlite3.connect(tmp_path / "data" / "buffer.db")
    stored = {json.loads(t)["plateid"] for (t,) in db.execute("SELECT text FROM readings WHERE point = 'plate'")}
    db.close()
    assert len(acked) > cycles * 5, f"too few events to judge: {len(acked)}"
    lost = [p for p in acked if p not in stored]
    assert not lost, f"{len(lost)} acknowledged gate events lost: {lost[:10]}"
