"""Issue 9, finding 3, on real processes: a fleet server, an enrolled agent with a plate-camera
receiver, a camera simulator and raw HTTP clients playing the attacker on the same network.

- a plate with a lone surrogate is refused with a 400 naming the field; later events are still
  committed, forwarded to the fleet server, and /healthz stays truthful;
- an unauthenticated or forged camera is refused (401/403), counted in /metrics, and the gate
  does not open;
- SIGTERM stops the agent within 10 s, keeping every acknowledged event;
- `agent check-config` warns about an MQTT password without TLS.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from drivers.plate_camera.sim import PlateCameraSim
from tests.e2e_support import PY, Fleet, enroll, free_port, start_agent, start_fleet, stop, wait_for

BOX = "trust-box"
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


def push(serial: str, plate: str, plate_id: int) -> bytes:
    return json.dumps({"AlarmInfoPlate": {"serialno": serial, "result": {"PlateResult": {
        "license": plate, "confidence": 97, "plateid": plate_id, "isoffline": 0}}}}).encode()


@dataclass
class Rig:
    tmp: Path
    fleet: Fleet
    agent: subprocess.Popen
    port: int
    hport: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def health(self) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.hport}/healthz", timeout=5)

    def metric(self, name: str) -> dict[str, float]:
        text = httpx.get(f"http://127.0.0.1:{self.hport}/metrics", timeout=5).text
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith(name)}

    def plates_at_fleet(self) -> list[dict]:
        return [json.loads(r[8]) for r in self.fleet.readings(BOX) if r[3] == "plate"]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("trust")
    fleet = start_fleet(tmp)
    port, hport = free_port(), free_port()
    config = tmp / "box.toml"
    config.write_text(CONFIG.format(box=BOX, data=tmp / "box", fleet=fleet.url, hport=hport, port=port,
                                    secret=SECRET), encoding="utf-8")
    agent = None
    try:
        enroll(fleet, config)
        agent = start_agent(tmp, config)
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{hport}/healthz", timeout=1).json()["devices"]["gate"]
                 .get("listening"), 30, "the receiver listening")
        yield Rig(tmp, fleet, agent, port, hport)
    finally:
        stop(agent)
        stop(fleet.proc)


def car(rig: Rig, plate: str, *, url: str | None = None, serial: str = "cam-1", first_id: int = 1) -> bool | None:
    async def go() -> bool | None:
        async with PlateCameraSim(url or f"http://cam-1:{SECRET}@127.0.0.1:{rig.port}/", serialno=serial,
                                  timeout_s=5.0, first_plate_id=first_id) as cam:
            return await cam.recognise(plate)
    return asyncio.run(go())


def test_a_surrogate_plate_is_refused_and_later_events_still_reach_the_fleet(rig: Rig) -> None:
    auth = ("cam-1", SECRET)
    raw = push("cam-1", "\ud800", 501).replace(b"\\\\ud800", b"\\ud800")
    assert b'"\\ud800"' in raw  # JSON's escape for a lone surrogate: valid JSON, not valid text
    r = httpx.post(rig.url, content=raw, auth=auth, timeout=5)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "bad_event" and "license" in r.json()["detail"] and "surrogate" in r.json()["detail"]
    for i in range(3):  # the buffer is not frozen: every later event commits and is forwarded
        assert car(rig, "鲁A12345", first_id=600 + i) is True
    forwarded = wait_for(lambda: [e for e in rig.plates_at_fleet() if 600 <= e["plateid"] < 603], 20,
                         "the later plate events at the fleet server")
    assert len(forwarded) == 3 and all(e["open"] for e in forwarded)
    health = rig.health().json()
    assert health["buffer"]["state"] == "ok" and health["status"] != "failing"
    assert all(c["state"] == "running" for c in health["components"].values()), health["components"]
    assert rig.metric('quanedge_receiver_refused_total{device="gate",reason="bad_event"}')


def test_unauthenticated_and_forged_cameras_are_refused_counted_and_never_open(rig: Rig) -> None:
    body = push("cam-1", "鲁A12345", 700)
    nobody = httpx.post(rig.url, content=body, timeout=5)
    assert nobody.status_code == 401 and nobody.headers["www-authenticate"].startswith("Basic")
    guessed = httpx.post(rig.url, content=body, auth=("cam-1", "password"), timeout=5)
    assert guessed.status_code == 401
    # a real camera's credential used to claim another (allow-listed) serial: the sender is
    # authenticated, the name it gives is not its own
    forged = httpx.post(rig.url, content=push("cam-2", "鲁A12345", 701), auth=("cam-1", SECRET), timeout=5)
    assert forged.status_code == 403 and forged.json()["error"] == "identity_mismatch"
    for r in (nobody, guessed, forged):
        assert '"info":"ok"' not in r.text.replace(" ", "")  # the barrier stays shut
    assert car(rig, "鲁A12345", url=rig.url, first_id=702) is None  # the simulator without its secret: kept offline
    refused = rig.metric("quanedge_receiver_refused_total")
    assert refused['quanedge_receiver_refused_total{device="gate",reason="unauthenticated"}'] >= 3
    assert refused['quanedge_receiver_refused_total{device="gate",reason="identity_mismatch"}'] >= 1
    assert car(rig, "鲁A12345", first_id=710) is True  # the genuine camera still opens
    wait_for(lambda: any(e["plateid"] == 710 for e in rig.plates_at_fleet()), 20, "the genuine event")
    assert not any(700 <= e["plateid"] < 710 for e in rig.plates_at_fleet())  # nothing forged was stored


def test_an_unauthenticated_sender_is_refused_before_its_body_is_read(rig: Rig) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", rig.port), timeout=5) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 4000000\r\n\r\n")  # announces 4 MB, sends none of it
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


def test_sigterm_stops_within_10_s_and_keeps_every_acknowledged_event(rig: Rig) -> None:
    acked = [800 + i for i in range(5) if car(rig, "鲁B99999", first_id=800 + i) is not None]
    assert len(acked) == 5
    started = time.monotonic()
    rig.agent.send_signal(signal.SIGTERM)
    rig.agent.wait(timeout=10)  # raises TimeoutExpired beyond 10 s
    assert rig.agent.returncode == 0, (rig.tmp / "agent.log").read_text()[-2000:]
    assert time.monotonic() - started < 10
    db = sqlite3.connect(rig.tmp / "box" / "buffer.db")
    buffered = {json.loads(t)["plateid"] for (t,) in db.execute("SELECT text FROM readings WHERE point = 'plate'")}
    db.close()
    at_fleet = {e["plateid"] for e in rig.plates_at_fleet()}
    assert set(acked) <= buffered | at_fleet


def test_check_config_warns_about_an_mqtt_password_without_tls(tmp_path: Path) -> None:
    cfg = tmp_path / "box.toml"
    cfg.write_text(f'[box]\nid = "b"\ndata_dir = "{tmp_path}"\n[uplink]\nkind = "mqtt"\n[uplink.mqtt]\n'
                   'host = "broker.example"\nusername = "b"\npassword = "pw"\n', encoding="utf-8")
    r = subprocess.run([*PY, "agent", "check-config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("ok: box b")
    assert "warning:" in r.stderr and "[uplink.mqtt.password]" in r.stderr and "tls" in r.stderr
    cfg.write_text(cfg.read_text() + "tls = true\n", encoding="utf-8")
    r = subprocess.run([*PY, "agent", "check-config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "warning" not in r.stderr


async def test_the_access_controller_listener_refuses_and_counts_unauthenticated_pushes() -> None:
    from drivers.access_controller.driver import AccessControllerDriver
    from drivers.access_controller.settings import AccessControllerSettings
    from drivers.push_auth import PushCredential

    taken, refused = [], []
    drv = AccessControllerDriver(AccessControllerSettings(
        name="door", url="http://127.0.0.1:9", username="u", password="p", listen_host="127.0.0.1", listen_port=0,
        event_senders=(PushCredential("door", "acs-push-secret", "controller"),)),
        on_event=taken.append, on_refused=refused.append)
    await drv.open()
    event = {"AccessControllerEvent": {"majorEventType": 3, "subEventType": 0x400, "doorNo": 1, "serialNo": 9}}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{drv.listen_port}", timeout=5) as c:
            assert (await c.post("/", json=event)).status_code == 401
            assert (await c.post("/", json=event, auth=("controller", "guess-guess"))).status_code == 401
            raw = json.dumps({**event, "dateTime": "\ud800"}).encode()  # JSON escapes the lone surrogate
            bad = await c.post("/", content=raw, auth=("controller", "acs-push-secret"))
            assert bad.status_code == 400 and "dateTime" in bad.json()["detail"]
            assert taken == []  # nothing forged or unstorable was taken
            ok = await c.post("/", json=event, auth=("controller", "acs-push-secret"))
            assert ok.status_code == 200 and len(taken) == 1
    finally:
        await drv.close()
    assert refused == ["unauthenticated", "unauthenticated", "bad_event"]
    assert drv.refused == {"unauthenticated": 2, "bad_event": 1}
