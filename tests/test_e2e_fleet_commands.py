"""Issue 12: a command from the fleet reaches the device and its result comes back, over MQTT and
over HTTP (long-poll), as real processes.

    fleet API (operator token) -> `quanedge fleet serve` -> mosquitto -> `quanedge agent run` (MQTT box)
                                                       \\-> long-poll -> `quanedge agent run` (HTTP box)
    -> the box's allow-list and driver -> access-controller simulator (ISAPI remote door control)
    -> the audit record (EVENT reading, with the command id) -> buffer -> uplink -> fleet ingest
    -> the command's state: done / refused, with the box's reason

Checked on both sides: the simulator's door took the command once; the box's audit record (its
CommandRouter's, with the id and the fleet operator as origin) reached the fleet once; the fleet's
audit log holds the operator's request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from drivers.access_controller.sim import AccessControllerSim
from tests.e2e_support import Fleet, Mosquitto, enroll, free_port, health, start_agent, start_fleet, stop, wait_for
from tests.test_e2e_devices import SimLoop

BOX_CONFIG = """
[box]
id = "{box}"
data_dir = "{tmp}/{box}"

{uplink}

[health]
listen = "127.0.0.1:{hport}"

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


@dataclass
class Box:
    name: str
    tmp: Path
    acs: AccessControllerSim



@dataclass
class World:
    fleet: Fleet
    boxes: dict[str, Box]

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.fleet.admin}"}

    def send(self, box: str, command: str, **args: Any) -> str:
        r = httpx.post(self.fleet.url + "/api/v1/commands", headers=self.admin(), timeout=10,
                       json={"device": "lobby", "command": command, "args": args, "box_ids": [box]})
        assert r.status_code == 201, r.text
        (sent,) = r.json()["commands"]
        return str(sent["command_id"])

    def command(self, command_id: str) -> dict[str, Any]:
        r = httpx.get(f"{self.fleet.url}/api/v1/commands/{command_id}", headers=self.admin(), timeout=10)
        r.raise_for_status()
        return dict(r.json())

    def finished(self, command_id: str, timeout: float = 30) -> dict[str, Any]:
        return dict(wait_for(lambda: (c := self.command(command_id))["state"] not in ("pending", "sent") and c,
                             timeout, f"a result for {command_id}", interval=0.1))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("fleet-commands")
    sims = SimLoop()
    broker = Mosquitto(tmp).start()
    procs = []
    fleet = None
    try:
        fleet = start_fleet(tmp, mqtt_port=broker.port)
        boxes: dict[str, Box] = {}
        for name, uplink in (("cmd-mqtt", f'[uplink]\nkind = "mqtt"\n\n[uplink.mqtt]\nhost = "127.0.0.1"\n'
                                          f'port = {broker.port}\ntopic_prefix = "quanedge"'),
                             ("cmd-http", f'[uplink]\nkind = "http"\n\n[uplink.http]\nserver = "{fleet.url}"')):
            acs_listen, hport = free_port(), free_port()
            acs = sims.run(AccessControllerSim(
                event_url=f"http://controller:acs-push-secret@127.0.0.1:{acs_listen}/").start())
            config = tmp / f"{name}.toml"
            config.write_text(BOX_CONFIG.format(box=name, tmp=tmp, uplink=uplink, hport=hport, acs=acs.url,
                                                acs_listen=acs_listen), encoding="utf-8")
            enroll(fleet, config)
            procs.append(start_agent(tmp, config))
            boxes[name] = Box(name, tmp, acs)
            wait_for(lambda hport=hport: health(hport)["devices"]["lobby"]["online"], 60,
                     f"{name}'s controller online ({tmp / 'agent.log'})", interval=0.3)
        yield World(fleet, boxes)
    finally:
        for proc in procs:
            stop(proc)
        if fleet is not None:
            stop(fleet.proc)
        broker.stop()
        sims.close()


@pytest.mark.parametrize("box", ["cmd-mqtt", "cmd-http"])
def test_a_fleet_command_opens_the_door_once_and_its_result_is_stored_on_both_sides(world: World, box: str) -> None:
    started = time.monotonic()
    command_id = world.send(box, "open", door=2)
    result = world.finished(command_id)
    took = time.monotonic() - started
    assert (result["state"], result["message"]) == ("done", "ok"), result
    assert result["origin"].startswith("fleet:"), result
    assert took < 15, f"{box}: the round trip took {took:.1f} s"
    door = world.boxes[box].acs.doors[2]
    assert door.commands == ["open"]                           # ran once on the device
    # the box's own audit record (written by its CommandRouter, forwarded from its buffer): stored once
    audit = [json.loads(r[-1]) for r in world.fleet.readings(box) if r[3] == "_command"]
    mine = [a for a in audit if a.get("id") == command_id]
    assert len(mine) == 1 and mine[0]["result"] == "done" and mine[0]["origin"].startswith("fleet:"), audit
    r = httpx.get(world.fleet.url + "/api/v1/audit", headers=world.admin(), params={"limit": 1000}, timeout=10)
    r.raise_for_status()
    posts = [e for e in r.json()["entries"] if e["action"] == "send_command" and e["status"] == 201]
    assert posts, "the operator's POST is in the fleet's audit log"


@pytest.mark.parametrize("box", ["cmd-mqtt", "cmd-http"])
def test_a_command_the_box_does_not_allow_is_refused_with_the_boxes_reason(world: World, box: str) -> None:
    command_id = world.send(box, "close", door=1)               # the box config allows "open" only
    result = world.finished(command_id)
    assert result["state"] == "refused", result
    assert "not allowed for device 'lobby'" in result["message"], result
    assert world.boxes[box].acs.doors[1].commands == []          # nothing reached the controller


def test_an_unknown_box_or_a_bad_body_is_refused_and_nothing_is_sent(world: World) -> None:
    url, headers = world.fleet.url + "/api/v1/commands", world.admin()
    r = httpx.post(url, headers=headers, json={"device": "lobby", "command": "open", "box_ids": ["no-such-box"]})
    assert r.status_code == 404 and "no-such-box" in r.text, r.text
    r = httpx.post(url, headers=headers, json={"device": "lobby", "command": "open", "box_ids": ["cmd-mqtt"],
                                               "deadline_s": 0})
    assert r.status_code in (400, 422) and "deadline_s" in r.text, r.text
    r = httpx.get(url, headers=headers, params={"box_id": "no-such-box"})
    assert r.json()["commands"] == []


def test_boxes_hold_their_long_poll_open_without_spinning(world: World) -> None:
    """The HTTP box is parked in its long-poll: a command sent now reaches it in well under a poll interval."""
    started = time.monotonic()
    command_id = world.send("cmd-http", "open", door=1)
    assert world.finished(command_id, timeout=10)["state"] == "done"
    assert time.monotonic() - started < 5
