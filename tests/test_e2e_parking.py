"""A real agent process with a `parking` device, against the parking simulator on a pty.

The simulator runs in this process on its own event loop (a thread); the agent is `quanedge agent
run`; commands go through `quanedge agent command`; what the agent stored is read from its buffer.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import PY, free_port, health, start_agent, stop, wait_for

from agent.enroll import Credential, save_credential
from drivers.parking.sim import ParkingSim, load_layout

LAYOUT = """
name = "lot-north"
port = "sim"
[[zones]]
name = "A"
detectors = [{ unit = 2, register = 0, count = 3 }]
[[zones]]
name = "B"
capacity = 4
counter = { unit = 3, entries = 0, exits = 1 }
[[signs]]
type = "led485"
unit = 10
zone = "A"
name = "entrance-a"
[[signs]]
type = "alpha"
address = "01"
name = "gate"
"""

CONFIG = """
[box]
id = "lot-box"
data_dir = "{tmp}/box"

[uplink]
kind = "http"
[uplink.http]
server = "{dead}"

[health]
listen = "127.0.0.1:{hport}"

[[device]]
kind = "parking"
port = "{pty}"
poll_s = 0.3
refresh_s = 2
allow_commands = ["set_sign_text", "reset_count"]
{layout}
"""


class SimLoop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="parking-sim", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def do(self, fn: Callable[[], Any]) -> Any:
        async def call() -> Any:
            return fn()
        return self.run(call())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, SimLoop, ParkingSim]]:
    tmp = tmp_path_factory.mktemp("parking")
    sims = SimLoop()
    sim = sims.run(ParkingSim(load_layout_text(tmp)).start())
    hport, dead = free_port(), f"http://127.0.0.1:{free_port()}"
    config = tmp / "box.toml"
    layout = (LAYOUT.replace('port = "sim"\n', "").replace("[[zones]]", "[[device.zones]]")
              .replace("[[signs]]", "[[device.signs]]"))
    config.write_text(CONFIG.format(tmp=tmp, dead=dead, hport=hport, pty=sim.port, layout=layout), encoding="utf-8")
    save_credential(tmp / "box" / "credential.json", Credential("lot-box", "not-used", dead))
    agent = start_agent(tmp, config)
    try:
        wait_for(lambda: health(hport)["devices"].get("lot-north", {}).get("online"), 60,
                 f"the parking device online ({tmp / 'agent.log'})", interval=0.3)
        yield tmp, config, sims, sim
    finally:
        stop(agent)
        sims.run(sim.stop())
        sims.close()


def load_layout_text(tmp: Path) -> Any:
    path = tmp / "layout.toml"
    path.write_text(LAYOUT, encoding="utf-8")
    return load_layout(path)


def rows(tmp: Path, point: str) -> list[tuple]:
    db = sqlite3.connect(tmp / "box" / "buffer.db", timeout=10)
    try:
        return db.execute("SELECT value, quality, cls, text FROM readings WHERE device = 'lot-north' AND point = ? "
                          "ORDER BY seq", (point,)).fetchall()
    finally:
        db.close()


def command(config: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    argv = [*PY, "agent", "command", "--config", str(config), "--device", "lot-north", "--command", name]
    for a in args:
        argv += ["--arg", a]
    return subprocess.run(argv, capture_output=True, text=True, timeout=90)


def test_cars_reach_the_buffer_and_the_signs_and_commands_are_audited(rig: Any) -> None:
    tmp, config, sims, sim = rig
    wait_for(lambda: sims.do(lambda: sim.shows("gate")) == "A 3  B 4", 20, "the signs written at start")
    sims.do(lambda: (sim.park("A", 1), sim.park("A", 2), sim.pass_gate("B", entries=4)))
    wait_for(lambda: (rows(tmp, "A.free") or [(None,)])[-1][0] == 1.0, 20, "A.free = 1 stored")
    wait_for(lambda: sims.do(lambda: sim.shows("gate")) == "A 1  B FULL", 20, "the Alpha sign updated")
    assert sims.do(lambda: sim.shows("entrance-a")) == "1"
    assert rows(tmp, "gate.shown")[-1][3] == "A 1  B FULL"

    sims.do(sim.power_cycle)  # the agent rewrites within refresh_s
    wait_for(lambda: sims.do(lambda: sim.shows("entrance-a")) == "1", 20, "the display rewritten after power cycle")

    done = command(config, "set_sign_text", "zone=A", "text=SHUT")
    assert done.returncode == 0, done.stderr
    assert sims.do(lambda: sim.shows("entrance-a")) == "SHUT"
    guarded = command(config, "reset_count", "zone=A")           # allowed, but zone A counts with detectors
    assert guarded.returncode != 0 and "counts with detectors" in guarded.stderr + guarded.stdout
    refused = command(config, "set_capacity", "zone=A", "capacity=9")   # not in allow_commands
    assert refused.returncode != 0 and "not allowed" in refused.stderr + refused.stdout
    expected = [("set_sign_text", "done"), ("reset_count", "refused"), ("set_capacity", "refused")]
    wait_for(lambda: [(json.loads(r[3])["command"], json.loads(r[3])["result"]) for r in rows(tmp, "_command")]
             == expected, 10, "three audit records stored")
