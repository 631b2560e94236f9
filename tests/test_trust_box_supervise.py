"""Issue 9, box side: every long-running agent task is supervised. A task that dies is restarted with
backoff, and /healthz says so (503, the component's state and last error with its time) meanwhile.

The agent runs in this process (run_agent, real sockets, real buffer file) so the test can make a
component die the way a bug would: `Supervisor.crash` for a task, the buffer's writer fault hook for
its thread. Everything else is real: the camera simulator pushes over HTTP, /healthz is fetched over HTTP.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from agent.config import load_config
from agent.runtime import run_agent
from agent.supervise import Supervisor
from drivers.plate_camera.sim import PlateCameraSim
from tests.e2e_support import free_port

CONFIG = """
[box]
id = "sup-box"
data_dir = "{data}"

[uplink]                      # a broker nobody runs: the drain keeps retrying, which is fine here
kind = "mqtt"
[uplink.mqtt]
host = "127.0.0.1"
port = {dead}

[health]
listen = "127.0.0.1:{hport}"

[[device]]
name = "gate"
kind = "plate_camera"
listen = "127.0.0.1:{port}"
allow_list = ["鲁A12345"]
cameras = [{{ serial = "cam-1", sources = ["127.0.0.1"] }}]
"""


async def until(pred, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# --- the supervisor on its own -------------------------------------------------------------------------
async def test_a_task_that_raises_is_restarted_and_its_error_kept() -> None:
    sup = Supervisor(base_s=0.05, cap_s=0.05)
    runs = []

    async def flaky() -> None:
        runs.append(time.time())
        if len(runs) < 3:
            raise RuntimeError(f"boom {len(runs)}")
        await asyncio.Event().wait()

    task = asyncio.create_task(sup.run("flaky", flaky))
    await until(lambda: len(runs) == 3, "two restarts")
    st = sup.status()["flaky"]
    assert st["state"] == "running" and st["restarts"] == 2 and st["last_error"] == "RuntimeError: boom 2"
    assert st["last_error_at"] is not None and sup.healthy()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert sup.status()["flaky"]["state"] == "stopped"


async def test_a_task_that_returns_is_stopped_not_restarted() -> None:
    sup = Supervisor(base_s=0.05, cap_s=0.05)
    calls = []

    async def once() -> None:
        calls.append(1)

    await sup.run("once", once)
    assert calls == [1] and sup.status()["once"]["state"] == "stopped"


# --- a running agent --------------------------------------------------------------------------------------
@pytest.fixture
async def agent(tmp_path: Path):
    port, hport = free_port(), free_port()
    path = tmp_path / "box.toml"
    path.write_text(CONFIG.format(data=tmp_path / "data", dead=free_port(), hport=hport, port=port), encoding="utf-8")
    parts: dict = {}
    stop = asyncio.Event()
    sup = Supervisor(base_s=1.0, cap_s=1.0)  # restarts wait ~0.5-1 s: long enough to watch /healthz
    task = asyncio.create_task(run_agent(load_config(path), stop, install_signals=False, on_started=parts.update,
                                         supervisor=sup))
    await until(lambda: parts and parts["devices"].listeners[0].listening, "the agent listening")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{hport}", timeout=5) as client:
        yield parts, client, port
    stop.set()
    await asyncio.wait_for(task, 15)


async def plate(port: int, plate_id: int) -> bool | None:
    async with PlateCameraSim(f"http://127.0.0.1:{port}/", serialno="cam-1", timeout_s=5,
                              first_plate_id=plate_id) as cam:
        return await cam.recognise("鲁A12345")


async def test_a_killed_receiver_is_restarted_and_healthz_shows_it_meanwhile(agent) -> None:
    parts, client, port = agent
    sup: Supervisor = parts["supervisor"]
    assert await plate(port, 1) is True
    sup.crash("listen:gate")
    await until(lambda: sup.status()["listen:gate"]["state"] == "restarting", "the receiver restarting")
    r = await client.get("/healthz")
    body = r.json()
    assert r.status_code == 503 and body["status"] == "failing"
    comp = body["components"]["listen:gate"]
    assert comp["state"] == "restarting" and "crash injected" in comp["last_error"] and comp["last_error_at"]
    assert body["devices"]["gate"]["listening"] is False
    await until(lambda: parts["devices"].listeners[0].listening, "the receiver listening again")
    assert await plate(port, 2) is True
    body = (await client.get("/healthz")).json()
    assert body["components"]["listen:gate"]["state"] == "running"
    assert body["components"]["listen:gate"]["restarts"] == 1  # kept, with the last error, for the operator
    metrics = (await client.get("/metrics")).text
    assert 'quanedge_component_restarts_total{component="listen:gate"} 1.0' in metrics


async def test_a_dead_buffer_writer_is_restarted_and_healthz_reports_it(agent) -> None:
    parts, client, port = agent
    buffer = parts["buffer"]
    buffer._inject_writer_fault()
    await until(lambda: buffer.writer_restarts == 1 and buffer.health()["state"] == "ok", "the writer restarted")
    body = (await client.get("/healthz")).json()
    assert body["buffer"]["writer_restarts"] == 1 and "injected writer fault" in body["buffer"]["last_error"]
    assert await plate(port, 3) is True  # events commit through the restarted writer
    assert [r.point for r in await buffer.peek(100, after_seq=0) if r.point == "plate"] == ["plate"]
