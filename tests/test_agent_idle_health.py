"""Issue 11 (field faults), on real processes: a fleet server and an enrolled agent whose only device
is a plate-camera receiver, so the box is idle until a car comes.

- an idle box (nothing buffered, nothing to send, no error) is healthy: /healthz 200, although
  its HTTP uplink has confirmed no batch yet;
- an uplink error carries its time and makes /healthz 503; it clears once the uplink works again;
- the agent's log has no line per telemetry POST (httpx INFO), though batches went out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from drivers.plate_camera.sim import PlateCameraSim
from tests.e2e_support import Fleet, enroll, free_port, start_agent, start_fleet, stop, wait_for

BOX = "idle-box"
SECRET = "cam-1-secret"
CONFIG = """
[box]
id = "{box}"
data_dir = "{data}"

[uplink]
kind = "http"
batch_size = 50
[uplink.http]
server = "{fleet}"
timeout_s = 2

[health]
listen = "127.0.0.1:{hport}"

[[device]]
name = "gate"
kind = "plate_camera"
listen = "127.0.0.1:{port}"
allow_list = ["鲁A12345"]
cameras = [{{ serial = "cam-1", secret = "{secret}", sources = ["127.0.0.1"] }}]
poll_s = 1
"""


def healthz(hport: int) -> tuple[int, dict]:
    r = httpx.get(f"http://127.0.0.1:{hport}/healthz", timeout=5)
    return r.status_code, r.json()


def car(port: int, plate_id: int) -> None:
    async def go() -> None:
        async with PlateCameraSim(f"http://cam-1:{SECRET}@127.0.0.1:{port}/", serialno="cam-1", timeout_s=5.0,
                                  first_plate_id=plate_id) as cam:
            await cam.recognise("鲁A12345")
    asyncio.run(go())


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Path, list[Fleet], int, int]]:
    fport, port, hport = free_port(), free_port(), free_port()
    fleets = [start_fleet(tmp_path, port=fport, admin="admin-token-for-idle-box-test")]
    config = tmp_path / "box.toml"
    config.write_text(CONFIG.format(box=BOX, data=tmp_path / "box", fleet=fleets[0].url, hport=hport, port=port,
                                    secret=SECRET), encoding="utf-8")
    agent = None
    try:
        enroll(fleets[0], config)
        agent = start_agent(tmp_path, config)
        wait_for(lambda: healthz(hport)[1]["devices"]["gate"].get("listening"), 30, "the receiver listening")
        yield tmp_path, fleets, port, hport
    finally:
        stop(agent)
        for f in fleets:
            stop(f.proc)


def test_idle_box_is_healthy_and_uplink_errors_carry_their_time_and_clear(rig) -> None:  # type: ignore[no-untyped-def]
    tmp, fleets, port, hport = rig
    # start-up records (if any) go out; then the box has nothing to send
    code, body = wait_for(lambda: (h := healthz(hport))[1]["buffer_depth"] == 0 and h, 30, "an empty buffer")
    time.sleep(1.5)  # a few idle drain rounds
    code, body = healthz(hport)
    assert body["buffer_depth"] == 0 and body["uplink"]["last_error"] is None, body
    assert code == 200 and body["status"] == "ok", body
    assert body["uplink"]["healthy"] is True and (body["uplink"]["connected"] or body["uplink"]["idle"]), body

    before = time.time()  # the outage starts with the stop: a send may fail while the server shuts down
    stop(fleets[0].proc)  # the fleet server goes away; a car comes
    car(port, 900)
    code, body = wait_for(lambda: (h := healthz(hport))[1]["uplink"]["last_error"] and h, 30, "the uplink error")
    assert code == 503 and body["status"] == "degraded" and body["uplink"]["healthy"] is False, body
    assert before <= body["uplink"]["last_error_at"] <= time.time(), body

    fleets.append(start_fleet(tmp, port=int(fleets[0].url.rsplit(":", 1)[1]), admin=fleets[0].admin))  # back, same port
    code, body = wait_for(lambda: (h := healthz(hport))[1]["uplink"]["connected"] and h, 60, "the uplink back")
    assert body["uplink"]["last_error"] is None and body["uplink"]["last_error_at"] is None, body
    code, body = wait_for(lambda: (h := healthz(hport))[0] == 200 and h, 30, "healthy again")
    assert body["status"] == "ok" and body["buffer_depth"] == 0
    assert [r for r in fleets[1].readings(BOX) if r[3] == "plate"], "the buffered event reached the fleet"

    log = (tmp / "agent.log").read_text()
    assert "uplink http failed" in log or "failed, readings stay buffered" in log, log[-2000:]
    assert "HTTP Request:" not in log and "httpx" not in log, log[-2000:]
