"""`python -m bench.fleet --only commands`: the round trip of a command from the fleet to a device.

command_roundtrip_p50_ms / _p99_ms / _max_ms: POST /api/v1/commands (operator token) -> the fleet
server publishes it on MQTT -> mosquitto with the shipped config (dynamic security, the box's own
account and ACL) -> `quanedge agent run` -> allow-list -> access-controller simulator (ISAPI door
control over HTTP) -> the box's audit record -> buffer -> MQTT telemetry -> fleet ingest stores the
result -> seen by GET /api/v1/commands/{id} (polled every 2 ms). QUANEDGE_BENCH_COMMANDS commands
(default 1,000), one after another. Target (issue 12): p99 <= 500 ms.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from drivers.access_controller.sim import AccessControllerSim
from hil_tests.delivery import Rig, free_port, wait_for

COMMANDS = int(os.environ.get("QUANEDGE_BENCH_COMMANDS", "1000"))
BOX = "cmd-box"

CONFIG = """[box]
id = "{box}"
data_dir = "{work}/box"

[uplink]
kind = "mqtt"

[uplink.mqtt]
host = "127.0.0.1"
port = {mqtt}
topic_prefix = "{prefix}"

[health]
listen = "127.0.0.1:{health}"

[[device]]
name = "lobby"
kind = "access_controller"
url = "{acs}"
username = "admin"
password = "hik12345"
doors = [1, 2]
listen = "127.0.0.1:{acs_listen}"
event_secret = "acs-push-secret"
allow_commands = ["open"]
poll_s = 5
"""


def bench_commands(work: Path) -> dict[str, Any]:
    from agent.config import load_config
    from agent.enroll import enroll

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="acs-sim", daemon=True)
    thread.start()
    rig = Rig(work)
    agent: subprocess.Popen[bytes] | None = None
    acs_listen, health = free_port(), free_port()
    acs = asyncio.run_coroutine_threadsafe(AccessControllerSim(
        event_url=f"http://controller:acs-push-secret@127.0.0.1:{acs_listen}/").start(), loop).result(10)
    try:
        rig.start_broker()
        rig.start_fleet(first=True)
        config = work / "box.toml"
        config.write_text(CONFIG.format(box=BOX, work=work, mqtt=rig.mqtt_port, prefix=rig.prefix, health=health,
                                        acs=acs.url, acs_listen=acs_listen))
        admin = {"Authorization": f"Bearer {rig.admin_token}"}
        token = httpx.post(rig.url + "/api/v1/enrollment-tokens", headers=admin, json={"ttl_s": 600, "max_uses": 1},
                           timeout=15).json()["token"]
        enroll(load_config(config), rig.url, token)
        with open(work / "agent.log", "ab") as log:
            agent = subprocess.Popen([sys.executable, "-m", "quanedge", "agent", "run", "--config", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=log)
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{health}/healthz", timeout=1).json()["devices"]["lobby"]["online"]
                 and httpx.get(f"http://127.0.0.1:{health}/healthz", timeout=1).json()["uplink"]["connected"],
                 60, f"the box and its controller ({work / 'agent.log'})")
        took: list[float] = []
        states: dict[str, int] = {}
        with httpx.Client(base_url=rig.url, headers=admin, timeout=30) as client:
            for i in range(COMMANDS):
                started = time.perf_counter()
                r = client.post("/api/v1/commands", json={"device": "lobby", "command": "open",
                                                          "args": {"door": 1 + i % 2}, "box_ids": [BOX]})
                r.raise_for_status()
                command_id = r.json()["commands"][0]["command_id"]
                while (state := client.get(f"/api/v1/commands/{command_id}").json()["state"]) in ("pending", "sent"):
                    if time.perf_counter() - started > 30:
                        break
                    time.sleep(0.002)
                took.append(time.perf_counter() - started)
                states[state] = states.get(state, 0) + 1
        opened = sum(len(d.commands) for d in acs.doors.values())
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(15)
        rig.close()
        asyncio.run_coroutine_threadsafe(acs.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    took.sort()
    return {"commands": COMMANDS, "command_states": states, "command_device_writes": opened,
            "command_roundtrip_p50_ms": round(statistics.median(took) * 1000, 1),
            "command_roundtrip_p99_ms": round(took[int(0.99 * (len(took) - 1))] * 1000, 1),
            "command_roundtrip_max_ms": round(took[-1] * 1000, 1)}
