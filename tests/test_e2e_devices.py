"""A real agent process with every non-Modbus family from the box config, against the simulators.

The simulators run in this process on their own event loop (a thread); the agent is `quanedge
agent run`; commands go through `quanedge agent command` (the running agent's control endpoint);
what the agent stored is read from its buffer file (the uplink points at nothing, so rows stay).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e_support import PY, free_port, health, start_agent, stop, wait_for

from agent.enroll import Credential, save_credential
from drivers.access_controller.sim import AccessControllerSim
from drivers.gbt20999.sim import GbtControllerSim, Plan
from drivers.ntcip import mib as n
from drivers.ntcip.sim import NtcipControllerSim, Pattern
from drivers.plate_camera.sim import PlateCameraSim

ROUTINE, ALARM, EVENT = 0, 1, 2
ALLOWED_PLATE = "鲁A12345"


class SimLoop:
    """An event loop in a thread for the simulators; `run(coro)` waits for a result from the test."""

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


@dataclass
class Rig:
    tmp: Path
    config: Path
    hport: int
    sims: SimLoop
    ntcip: NtcipControllerSim
    gbt: GbtControllerSim
    acs: AccessControllerSim
    camera: PlateCameraSim

    def rows(self, device: str, point: str | None = None) -> list[tuple]:
        db = sqlite3.connect(self.tmp / "box" / "buffer.db", timeout=10)
        try:
            sql = "SELECT seq, ts, device, point, value, unit, quality, cls, text FROM readings WHERE device = ?"
            args: tuple = (device,)
            if point is not None:
                sql, args = sql + " AND point = ?", (device, point)
            return db.execute(sql + " ORDER BY seq", args).fetchall()
        finally:
            db.close()

    def audits(self, device: str) -> list[dict]:
        return [json.loads(r[8]) | {"value": r[4], "cls": r[7]} for r in self.rows(device, "_command")]

    def command(self, device: str, command: str, *args: str) -> subprocess.CompletedProcess:
        argv = [*PY, "agent", "command", "--config", str(self.config), "--device", device, "--command", command]
        for a in args:
            argv += ["--arg", a]
        return subprocess.run(argv, capture_output=True, text=True, timeout=90)


CONFIG = """
[box]
id = "gate-box"
data_dir = "{tmp}/box"

[uplink]
kind = "http"
[uplink.http]
server = "{dead}"

[health]
listen = "127.0.0.1:{hport}"

[[device]]
name = "junction-7"
kind = "ntcip"
host = "127.0.0.1"
port = {ntcip}
timeout_ms = 500
poll_s = 0.5
allowed_patterns = [1, 2]
allow_commands = ["set_pattern"]

[[device]]
name = "tsc-12"
kind = "gbt20999"
host = "127.0.0.1"
port = {gbt}
poll_s = 0.5
allowed_plans = [1, 2, 9]
allow_commands = ["set_plan"]

[[device]]
name = "north-gate"
kind = "plate_camera"
listen = "127.0.0.1:{plate}"
allow_list = ["{plate_ok}"]
cameras = [{{ serial = "cam-1", secret = "cam-1-secret" }}]
poll_s = 1

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
poll_s = 1
"""


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("devices")
    sims = SimLoop()
    plate_port, acs_listen, hport = free_port(), free_port(), free_port()
    fast = (Pattern(1, 0.0, (6.0, 6.0, 6.0, 6.0)), Pattern(2, 0.0, (8.0, 8.0, 8.0, 8.0)))
    ntcip = sims.run(NtcipControllerSim(patterns=fast).start())
    gbt = sims.run(GbtControllerSim(plans=(Plan(1, 0, 1, ((1, 1.5), (2, 1.5))),
                                           Plan(2, 0, 1, ((1, 3.0), (2, 3.0))))).start())
    acs = sims.run(AccessControllerSim(cards=frozenset({"1001"}), event_url=f"http://controller:acs-push-secret@127.0.0.1:{acs_listen}/").start())
    camera = PlateCameraSim(f"http://cam-1:cam-1-secret@127.0.0.1:{plate_port}/", serialno="cam-1")
    dead = f"http://127.0.0.1:{free_port()}"
    config = tmp / "box.toml"
    config.write_text(CONFIG.format(tmp=tmp, dead=dead, hport=hport, ntcip=ntcip.port, gbt=gbt.port, plate=plate_port,
                                    plate_ok=ALLOWED_PLATE, acs=acs.url, acs_listen=acs_listen), encoding="utf-8")
    save_credential(tmp / "box" / "credential.json", Credential("gate-box", "not-used", dead))
    agent = start_agent(tmp, config)
    try:
        def all_up() -> bool:
            devs = health(hport)["devices"]
            return len(devs) == 4 and all(d["online"] for d in devs.values()) and devs["north-gate"]["listening"]
        wait_for(all_up, 60, f"every device online ({tmp / 'agent.log'})", interval=0.3)
        yield Rig(tmp, config, hport, sims, ntcip, gbt, acs, camera)
    finally:
        stop(agent)
        sims.run(camera.close())
        for sim in (acs, gbt, ntcip):
            sims.run(sim.stop())
        sims.close()


def _polls(rows: list[tuple]) -> dict[float, dict[str, tuple]]:
    polls: dict[float, dict[str, tuple]] = {}
    for r in rows:
        if not r[3].startswith("_"):          # _online / _command records are not poll results
            polls.setdefault(r[1], {})[r[3]] = r
    return polls


def test_ntcip_phase_state_is_decoded_at_every_poll_and_a_plan_change_goes_through(rig: Rig) -> None:
    def enough() -> dict | None:
        polls = _polls(rig.rows("junction-7"))
        colours = {p["phase2_color"][8] for p in polls.values() if "phase2_color" in p}
        return polls if len(polls) >= 12 and {"green", "yellow", "red"} <= colours else None
    polls = wait_for(enough, 40, "phase 2 going green, yellow and red", interval=0.5)
    for ts, poll in polls.items():
        assert len([p for p in poll if p.startswith("phase")]) == 32          # 8 phases x colour/ped/calls
        truths = [rig.ntcip.phase_state(t) for t in (ts, ts - 0.2)]             # ts is taken after the reply
        seen = {ph: (n.Color(int(poll[f"phase{ph}_color"][4])), n.Ped(int(poll[f"phase{ph}_ped"][4])))
                for ph in range(1, 9)}
        assert seen in truths, (ts, seen, truths[0])
        assert all(r[7] == ROUTINE and r[6] == 0 for r in poll.values())
        assert poll["coord_pattern"][4] == 1
    refused = rig.command("junction-7", "set_pattern", "pattern=3")     # allow-listed command, guarded value
    assert refused.returncode == 3 and "pattern 3 is not in allowed_patterns" in refused.stderr
    done = rig.command("junction-7", "set_pattern", "pattern=2")
    assert done.returncode == 0, done.stderr
    assert rig.ntcip.pattern == 2 and rig.ntcip.sets == [("1.3.6.1.4.1.1206.4.2.1.4.14.0", 2)]
    wait_for(lambda: rig.rows("junction-7", "coord_pattern")[-1][4] == 2, 10, "pattern 2 read back")
    audits = rig.audits("junction-7")
    assert [(a["result"], a["args"], a["value"], a["cls"]) for a in audits] == [
        ("refused", {"pattern": 3}, 0.0, EVENT), ("done", {"pattern": 2}, 1.0, EVENT)]
    assert all(a["origin"].startswith("local:cli:") for a in audits)


def test_gbt_controller_is_polled_reports_stages_and_takes_a_plan(rig: Rig) -> None:
    wait_for(lambda: len(rig.rows("tsc-12", "current_plan")) >= 3, 20, "GB/T plan readings")
    assert {r[4] for r in rig.rows("tsc-12", "current_plan")} == {1.0}
    assert {r[8] for r in rig.rows("tsc-12", "run_mode")} == {"local_fixed_cycle"}
    reports = wait_for(lambda: [r for r in rig.rows("tsc-12", "current_stage") if r[7] == EVENT], 20,
                       "unsolicited stage reports stored as events")
    assert {r[4] for r in reports} <= {1.0, 2.0}
    done = rig.command("tsc-12", "set_plan", "plan=2")
    assert done.returncode == 0 and "done: set_plan on tsc-12" in done.stdout, done.stderr
    assert rig.gbt.plan == 2
    failed = rig.command("tsc-12", "set_plan", "plan=9")                 # allowed here, unknown to the controller
    assert failed.returncode == 4 and "DeviceException" in failed.stderr and "bad value" in failed.stderr
    wait_for(lambda: rig.rows("tsc-12", "current_plan")[-1][4] == 2.0, 10, "plan 2 read back")
    assert [(a["result"], a["args"]) for a in rig.audits("tsc-12")] == [("done", {"plan": 2}), ("failed", {"plan": 9})]


def test_plate_camera_pushes_open_only_for_the_allow_list_and_resends_are_deduplicated(rig: Rig) -> None:
    cam = rig.camera
    assert rig.sims.run(cam.recognise(ALLOWED_PLATE)) is True
    assert rig.sims.run(cam.recognise("京B99999")) is False
    cam.lose_replies = 1                          # the agent takes the record, the camera never hears back
    assert rig.sims.run(cam.recognise(ALLOWED_PLATE)) is None
    assert len(cam.offline) == 1
    assert rig.sims.run(cam.push_offline()) == 1  # re-sent with isoffline=1, acknowledged
    assert cam.opened == [ALLOWED_PLATE]
    wait_for(lambda: len(rig.rows("north-gate", "plate")) >= 3, 10, "plate events in the buffer")
    time.sleep(0.5)                               # a fourth (duplicate) record would have arrived by now
    plates = rig.rows("north-gate", "plate")
    events = [json.loads(r[8]) for r in plates]
    assert [(e["plate"], e["open"], e["reason"]) for e in events] == [
        (ALLOWED_PLATE, True, "allow-list"), ("京B99999", False, "not on the allow-list"),
        (ALLOWED_PLATE, True, "allow-list")]
    assert len({e["plateid"] for e in events}) == 3                    # the re-send made no fourth record
    assert all(r[7] == ALARM for r in plates) and [r[4] for r in plates] == [1.0, 0.0, 1.0]
    totals = wait_for(lambda: [r for r in rig.rows("north-gate", "duplicates_total") if r[4] >= 1], 10, "dup count")
    assert totals[-1][7] == ROUTINE


def test_access_controller_remote_open_via_the_cli_is_audited_and_events_are_alarms(rig: Rig) -> None:
    assert rig.sims.run(rig.acs.swipe("1001")) == "valid_card"    # the controller itself unlocks door 1
    before = len(rig.acs.doors[1].commands)
    r = rig.command("lobby", "open", "door=1")
    assert r.returncode == 0 and "done: open on lobby" in r.stdout, r.stderr
    assert rig.acs.doors[1].commands[before:] == ["open"] and rig.acs.doors[2].commands == []
    wait_for(lambda: len(rig.rows("lobby", "access_event")) >= 2, 10, "access events in the buffer")
    events = rig.rows("lobby", "access_event")
    assert [json.loads(e[8])["event"] for e in events] == ["valid_card", "remote_open"]
    assert all(e[7] == ALARM and e[4] == 1.0 for e in events)
    (audit,) = rig.audits("lobby")
    assert audit["result"] == "done" and audit["args"] == {"door": 1} and audit["command"] == "open"
    assert audit["cls"] == EVENT and audit["origin"].startswith("local:cli:")
    assert rig.rows("lobby", "door1_lock"), "door status is polled"


def test_a_command_not_in_allow_commands_is_refused_clearly_and_audited(rig: Rig) -> None:
    before = [list(d.commands) for d in rig.acs.doors.values()]
    r = rig.command("lobby", "always_open", "door=1")
    assert r.returncode == 3
    assert ("refused: command 'always_open' is not allowed for device 'lobby' (allow_commands = ['open'])"
            in r.stderr) and str(rig.config) in r.stderr and "Traceback" not in r.stderr
    assert [list(d.commands) for d in rig.acs.doors.values()] == before      # nothing reached the device
    audit = rig.audits("lobby")[-1]
    assert (audit["result"], audit["command"], audit["args"], audit["value"]) == ("refused", "always_open",
                                                                                 {"door": 1}, 0.0)
    unknown = rig.command("nobody", "open")
    assert unknown.returncode == 3 and "no device 'nobody' on this box" in unknown.stderr
    wait_for(lambda: rig.rows("_box", "_command"), 5, "the unknown-device attempt audited under _box")
    assert json.loads(rig.rows("_box", "_command")[-1][8])["device"] == "nobody"
    assert health(rig.hport)["devices"]["lobby"]["online"] is True
