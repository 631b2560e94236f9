"""A real agent process as the OCPP 1.6J Central System of a simulated charger (tests/test_e2e_devices.py style).

The charger simulator runs in this process on its own event loop (a thread) and connects over
websockets to `quanedge agent run`; commands go through `quanedge agent command`; what the agent
stored is read from its buffer file (the uplink points at nothing, so rows stay).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import threading
from pathlib import Path
from typing import Any

from e2e_support import PY, free_port, health, start_agent, stop, wait_for

from agent.enroll import Credential, save_credential
from drivers.ocpp_charger.sim import ChargerSim

ROUTINE, ALARM, EVENT = 0, 1, 2

CONFIG = """
[box]
id = "carpark-box"
data_dir = "{tmp}/box"

[uplink]
kind = "http"
[uplink.http]
server = "{dead}"

[health]
listen = "127.0.0.1:{hport}"

[[device]]
name = "carpark"
kind = "ocpp_charger"
listen = "127.0.0.1:{port}"
heartbeat_s = 60
id_tags = ["TAG-OK"]
chargers = [{{ id = "CP001", secret = "cp001-secret", connectors = 2 }}]
allow_commands = ["remote_start", "remote_stop"]
poll_s = 0.5
"""


class SimLoop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sims", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def rows(tmp: Path, point: str | None = None) -> list[tuple]:
    db = sqlite3.connect(tmp / "box" / "buffer.db", timeout=10)
    try:
        sql = "SELECT seq, ts, device, point, value, unit, quality, cls, text FROM readings WHERE device = 'carpark'"
        args: tuple = ()
        if point is not None:
            sql, args = sql + " AND point = ?", (point,)
        return db.execute(sql + " ORDER BY seq", args).fetchall()
    finally:
        db.close()


def command(config: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    argv = [*PY, "agent", "command", "--config", str(config), "--device", "carpark", "--command", name]
    for a in args:
        argv += ["--arg", a]
    return subprocess.run(argv, capture_output=True, text=True, timeout=90)


def test_an_agent_is_the_central_system_of_a_charger(tmp_path: Path) -> None:
    port, hport = free_port(), free_port()
    dead = f"http://127.0.0.1:{free_port()}"
    config = tmp_path / "box.toml"
    config.write_text(CONFIG.format(tmp=tmp_path, dead=dead, hport=hport, port=port), encoding="utf-8")
    save_credential(tmp_path / "box" / "credential.json", Credential("carpark-box", "not-used", dead))
    sims = SimLoop()
    sim = ChargerSim(f"ws://127.0.0.1:{port}/ocpp", "CP001", secret="cp001-secret", meter_s=0)

    def listening() -> bool:
        dev = health(hport)["devices"].get("carpark")
        return bool(dev and dev.get("listening"))

    agent = start_agent(tmp_path, config)
    try:
        wait_for(listening, 60, f"the OCPP listener ({tmp_path / 'agent.log'})", interval=0.3)
        sims.run(sim.connect())
        tx = sims.run(sim.start(1, "TAG-OK"))
        sims.run(sim.meter(1))
        # everything the charger was told is accepted is already committed in the buffer
        (start,) = rows(tmp_path, "CP001.tx_start")
        assert start[7] == EVENT and start[5] == "Wh" and json.loads(start[8])["tx"] == tx
        power = rows(tmp_path, "CP001.c1.power_import")
        assert power and power[-1][4] == 11000.0 and power[-1][5] == "W" and power[-1][7] == ROUTINE
        assert rows(tmp_path, "CP001.c1.status")[-1][4] == 2.0  # Charging
        wait_for(lambda: [r for r in rows(tmp_path, "CP001.online") if r[4] == 1.0], 10, "the poll seeing CP001 online")

        done = command(config, "remote_stop", f"transaction_id={tx}")
        assert done.returncode == 0, done.stderr
        stop_row = wait_for(lambda: rows(tmp_path, "CP001.tx_stop"), 10, "the remote stop's StopTransaction")
        assert json.loads(stop_row[-1][8])["reason"] == "Remote" and sim.connectors[1].tx is None
        refused = command(config, "remote_start", "charger=CP001", "id_tag=STRANGER")
        assert refused.returncode == 3 and "'STRANGER' is not allowed" in refused.stderr, refused.stderr
        not_allowed = command(config, "reset", "charger=CP001", "type=hard")
        assert not_allowed.returncode == 3 and "allow_commands" in not_allowed.stderr
        before = max((r[0] for r in rows(tmp_path)), default=0)
        sims.run(sim.fault(2, "GroundFailure"))   # answered once stored: its ALARM row is in the buffer now
        # (a poll may have stored a routine status row after it: look for the event, not the last row)
        faulted = [r for r in rows(tmp_path, "CP001.c2.status") if r[0] > before and r[7] == ALARM]
        assert len(faulted) == 1 and json.loads(faulted[0][8])["error_code"] == "GroundFailure", faulted
        audits = [json.loads(r[8]) for r in rows(tmp_path, "_command")]
        assert [a["result"] for a in audits] == ["done", "refused", "refused"]

        # the box restarts: the charger reconnects and its next transaction gets a new, larger id
        stop(agent)
        sims.run(sim.disconnect())
        agent = start_agent(tmp_path, config)
        wait_for(listening, 60, "the OCPP listener after a restart", interval=0.3)
        sims.run(sim.connect())
        assert sims.run(sim.start(1, "TAG-OK")) > tx
        assert (tmp_path / "ocpp-carpark.json").exists()  # the state file sits beside the config by default
    finally:
        stop(agent)
        sims.run(sim.disconnect())
        sims.close()
