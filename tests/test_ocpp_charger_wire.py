"""ocpp_charger over real websockets on 127.0.0.1: the simulator (the `ocpp` package as a charge point)
against the driver (the box as Central System), plus raw frames for what a simulator would never send.

The driver is built through its kind descriptor with a small BuildContext whose event callback keeps
readings in a list and returns a future (done at once, or held by the test to prove an answer waits
for it).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from core.config_reader import Table
from core.errors import CommandRefused, LinkError
from core.reading import Quality, Reading, RecordClass
from drivers.kind import ParseContext
from drivers.ocpp_charger import KIND
from drivers.ocpp_charger import driver as driver_mod
from drivers.ocpp_charger.sim import ChargerSim

SECRET = "cp001-secret"
ALL = ["remote_start", "remote_stop", "change_availability", "reset", "unlock_connector"]


class Ctx:
    """A BuildContext: readings into a list; `hold` makes the callback return futures the test settles."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.hold = False
        self.held: list[asyncio.Future] = []
        self.refused: list[str] = []

    def events(self, device: str, *, drop_when_full: bool = False) -> Callable[[Reading], Any]:
        def on_event(r: Reading) -> asyncio.Future:
            self.readings.append(r)
            f = asyncio.get_running_loop().create_future()
            if self.hold:
                self.held.append(f)
            else:
                f.set_result(None)
            return f
        return on_event

    def refusals(self, device: str) -> Callable[[str], None]:
        return self.refused.append

    def link(self, bus: str) -> Any:
        raise AssertionError("no bus")

    def points(self, suffix: str) -> list[Reading]:
        return [r for r in self.readings if r.point.endswith(suffix)]


async def make(tmp: Path, ctx: Ctx, **over: Any) -> Any:
    data = {"name": "site", "kind": "ocpp_charger", "listen": "127.0.0.1:0", "id_tags": ["TAG-OK"],
            "allow_commands": ALL, "heartbeat_s": 60, "store_timeout_s": 1.0, "command_timeout_s": 2.0,
            "chargers": [{"id": "CP001", "secret": SECRET}, {"id": "CP002", "sources": ["10.9.9.0/24"]},
                         {"id": "CP003", "secret": "cp003-secret"}], **over}
    t = Table(data, str(tmp / "box.toml"), "device[0]")
    t.str("kind")
    drv = KIND.build(KIND.parse(t, ParseContext(tmp)), ctx)
    await drv.open()
    return drv


@pytest.fixture
async def site(tmp_path: Path) -> Any:
    ctx = Ctx()
    drv = await make(tmp_path, ctx)
    sims: list[ChargerSim] = []

    def charger(cp_id: str = "CP001", secret: str | None = SECRET, **kw: Any) -> ChargerSim:
        sim = ChargerSim(f"ws://127.0.0.1:{drv.port}/ocpp", cp_id, secret=secret, **kw)
        sims.append(sim)
        return sim

    yield drv, ctx, charger
    for s in sims:
        await s.disconnect()
    await drv.close()


async def until(cond: Callable[[], Any], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_boot_status_and_meter_values_become_readings(site: Any) -> None:
    drv, ctx, charger = site
    sim = charger(meter_s=0)
    await sim.connect()
    assert sim.interval == 60  # the box's heartbeat_s, answered to BootNotification
    boot = ctx.points("CP001.boot")[0]
    assert boot.cls == RecordClass.EVENT and json.loads(boot.text)["model"] == "SimAC22"
    assert [r.value for r in ctx.points(".status")] == [0.0, 0.0, 0.0]  # Available: c0, c1, c2
    await sim.fault(2, "GroundFailure")
    status = ctx.points("CP001.c2.status")[-1]
    assert status.value == 8.0 and status.cls == RecordClass.ALARM and "GroundFailure" in status.text
    await sim.plug(1)
    tx = await sim.start(1, "tag-ok")  # idTags compare case-insensitively
    await sim.meter(1)
    units = {r.point: (r.value, r.unit, r.cls) for r in ctx.readings if r.cls == RecordClass.ROUTINE}
    assert units["CP001.c1.power_import"] == (11000.0, "W", RecordClass.ROUTINE)  # sent in kW
    assert units["CP001.c1.voltage_l1_n"][1:] == ("V", RecordClass.ROUTINE)
    assert {"CP001.c1.energy_import", "CP001.c1.current_import_l1", "CP001.c1.soc"} <= set(units)
    assert json.loads(ctx.points("CP001.c1.soc")[-1].text) == {"tx": tx}
    read = {r.point: r for r in await drv.read()}
    assert read["CP001.online"].value == 1.0 and read["CP002.online"].value == 0.0
    assert read["CP001.c1.status"].value == 2.0 and read["CP001.c2.status"].value == 8.0
    assert read["CP002.c1.status"].value is None and read["CP002.c1.status"].quality == Quality.MISSING
    assert read["transactions_open"].value == 1.0
    await sim.disconnect()
    await until(lambda: "CP001" not in drv.sessions)
    assert (await drv.read(["CP001.online"]))[0].value == 0.0


async def test_transactions_are_events_and_ids_outlive_the_box(site: Any, tmp_path: Path) -> None:
    drv, ctx, charger = site
    sim = charger(meter_s=0)
    await sim.connect()
    assert await sim.start(1, "NOT-ALLOWED") is None  # Authorize said Invalid: no transaction
    tx = await sim.start(1, "TAG-OK")
    start = ctx.points("tx_start")[-1]
    assert start.cls == RecordClass.EVENT and start.unit == "Wh"
    assert json.loads(start.text) | {"charger_ts": None} == {"tx": tx, "connector": 1, "id_tag": "TAG-OK",
                                                              "id_tag_status": "Accepted", "charger_ts": None}
    sim.connectors[1].energy_wh = 7300
    # the box restarts while the car charges; the charger reconnects and later stops
    await sim.disconnect()
    await drv.close()
    drv2 = await make(tmp_path, ctx)
    try:
        sim.url = f"ws://127.0.0.1:{drv2.port}/ocpp"
        await sim.connect()
        sim.connectors[1].tx = tx
        await sim.stop(1)
        stop = json.loads(ctx.points("tx_stop")[-1].text)
        assert stop["tx"] == tx and stop["meter_start"] == 0 and stop["energy_wh"] == 7300
        tx2 = await sim.start(2, "TAG-OK")
        assert tx2 > tx  # never an id handed out before the restart
    finally:
        await sim.disconnect()
        await drv2.close()


async def test_remote_commands_and_refusals(site: Any) -> None:
    drv, ctx, charger = site
    sim = charger(meter_s=0)
    await sim.connect()
    await drv.write("remote_start", {"charger": "CP001", "id_tag": "TAG-OK", "connector": 1})
    await until(lambda: sim.connectors[1].tx is not None and ctx.points("c1.status")[-1].value == 2.0)
    tx = sim.connectors[1].tx
    await drv.write("remote_stop", {"transaction_id": tx})  # the charger is found from the open transaction
    await until(lambda: ctx.points("tx_stop") and json.loads(ctx.points("tx_stop")[-1].text)["reason"] == "Remote")
    await drv.write("change_availability", {"charger": "CP001", "connector": 2, "availability": "inoperative"})
    await until(lambda: sim.connectors[2].status == "Unavailable")
    with pytest.raises(CommandRefused, match="answered remote_start with 'Rejected'"):
        await drv.write("remote_start", {"charger": "CP001", "id_tag": "TAG-OK", "connector": 2})
    with pytest.raises(CommandRefused, match="answered remote_stop with 'Rejected'"):
        await drv.write("remote_stop", {"charger": "CP001", "transaction_id": 424242})
    await drv.write("unlock_connector", {"charger": "CP001", "connector": 1})
    await drv.write("reset", {"charger": "CP001", "type": "soft"})
    await until(lambda: len(ctx.points("CP001.boot")) == 2)  # the charger booted again
    with pytest.raises(CommandRefused, match="id_tag 'STRANGER' is not allowed"):
        await drv.write("remote_start", {"charger": "CP001", "id_tag": "STRANGER"})
    with pytest.raises(CommandRefused, match="'connector' as an integer 1..2"):
        await drv.write("unlock_connector", {"charger": "CP001", "connector": 7})
    with pytest.raises(CommandRefused, match="unknown: colour"):
        await drv.write("reset", {"charger": "CP001", "type": "soft", "colour": "red"})
    with pytest.raises(CommandRefused, match="needs 'charger'"):
        await drv.write("reset", {"type": "hard"})
    with pytest.raises(LinkError, match="'CP003' is not connected"):
        await drv.write("reset", {"charger": "CP003", "type": "hard"})
    drv.settings = dataclasses.replace(drv.settings, allow_commands=())
    with pytest.raises(CommandRefused, match="allow_commands"):
        await drv.write("reset", {"charger": "CP001", "type": "hard"})


async def test_who_may_connect(site: Any) -> None:
    drv, ctx, charger = site
    url = f"ws://127.0.0.1:{drv.port}/ocpp"
    cases = [(f"{url}/CP999", basic("CP999", "whatever-1"), 404),   # not a configured charger
             (f"{url}/CP001", {}, 401),                                 # no credentials
             (f"{url}/CP001", basic("CP001", "wrong-secret"), 401),    # wrong secret
             (f"{url}/CP001", basic("CP003", "cp003-secret"), 401),    # another charger's credentials
             (f"{url}/CP002", {}, 401),                                 # address-only charger, wrong address
             (f"{url}/sub/CP001", basic("CP001", SECRET), 404)]
    for where, headers, status in cases:
        with pytest.raises(InvalidStatus) as e:
            async with connect(where, subprotocols=["ocpp1.6"], additional_headers=headers, open_timeout=5):
                pass
        assert e.value.response.status_code == status, where
    assert drv.refused == {"unknown_charger": 2, "unauthenticated": 3, "identity_mismatch": 1}
    assert ctx.refused.count("unauthenticated") == 3
    async with connect(f"{url}/CP001", additional_headers=basic("CP001", SECRET), open_timeout=5) as ws:
        with pytest.raises(ConnectionClosed) as closed:  # no ocpp1.6 subprotocol: closed
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd.code == 1002
    assert drv.sessions == {} and ctx.readings == []
    assert (await drv.read(["refused_total"]))[0].value == 7.0


async def test_malformed_frames_get_callerrors_and_the_session_survives(site: Any) -> None:
    drv, ctx, _ = site
    async with connect(f"ws://127.0.0.1:{drv.port}/ocpp/CP001", subprotocols=["ocpp1.6"],
                       additional_headers=basic("CP001", SECRET), open_timeout=5) as ws:
        async def ask(frame: Any) -> list:
            await ws.send(frame if isinstance(frame, str) else json.dumps(frame))
            return json.loads(await asyncio.wait_for(ws.recv(), 5))

        def mv(sv: dict, ts: str = "2026-12-03T16:00:00Z", connector: int = 1) -> dict:
            return {"connectorId": connector, "meterValue": [{"timestamp": ts, "sampledValue": [sv]}]}

        refused = [
            ([2, "a", "MeterValues", mv({"value": "twelve"})], "TypeConstraintViolation"),
            ([2, "b", "MeterValues", mv({"value": "NaN"})], "TypeConstraintViolation"),
            ([2, "c", "MeterValues", mv({"value": "230", "measurand": "Voltage", "unit": "Wh"})],
             "PropertyConstraintViolation"),
            ([2, "d", "MeterValues", mv({"value": "1"}, ts="last tuesday")], "TypeConstraintViolation"),
            ([2, "e", "MeterValues", mv({"value": "1"}, connector=9)], "PropertyConstraintViolation"),
            ([2, "f", "MeterValues", {**mv({"value": "1"}), "connectorId": "1"}], "TypeConstraintViolation"),
            ([2, "g", "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Broken"}],
             "FormatViolation"),
            ([2, "h", "StartTransaction", {"connectorId": 0, "idTag": "TAG-OK", "meterStart": 0,
                                           "timestamp": "2026-12-03T16:00:00Z"}], "PropertyConstraintViolation"),
            ([2, "i", ["Heartbeat"], {}], "FormationViolation"),
            ([2, "j", "Heartbeat", "not an object"], "FormationViolation"),
            ([2, "k", "FlyToTheMoon", {}], "NotSupported"),
        ]
        for frame, code in refused:
            reply = await ask(frame)
            assert reply[:3] == [4, frame[1], code], (frame, reply)
        assert await ask([2, "l", "DataTransfer", {"vendorId": "acme"}]) == [3, "l", {"status": "Rejected"}]
        await ws.send('[2, "m", "Heartbeat"')  # not JSON: no message id to answer; counted
        await ws.send(json.dumps([3, "n", {}]))  # an answer to nothing the box asked: counted
        assert (await ask([2, "z", "Heartbeat", {}]))[:2] == [3, "z"]  # still talking
    assert sum(drv.callerrors.values()) == 11 and drv.dropped == {"not_json": 1, "unexpected_answer": 1}
    read = {r.point: r.value for r in await drv.read(["callerrors_total", "dropped_total"])}
    assert read == {"callerrors_total": 11.0, "dropped_total": 2.0}
    assert not [r for r in ctx.readings if r.cls == RecordClass.ROUTINE]  # nothing half-stored


async def test_an_answer_waits_for_the_store(site: Any) -> None:
    drv, ctx, charger = site
    sim = charger(meter_s=0)
    await sim.connect()
    ctx.hold = True
    start = asyncio.create_task(sim.start(1, "TAG-OK"))
    await until(lambda: ctx.held)
    await asyncio.sleep(0.3)
    assert not start.done()  # Authorize's reading is not committed: no answer yet
    ctx.held.pop(0).set_result(None)
    await until(lambda: ctx.held)  # now StartTransaction's reading
    ctx.held.pop(0).set_exception(RuntimeError("disk full"))
    with pytest.raises(Exception, match="InternalError"):
        await start  # the charger is told to re-send, not that it was accepted
    tx_first = next(iter(drv.transactions.open))  # the id was kept (a re-send of this start reuses it)
    ctx.hold = False
    tx = await sim.start(1, "TAG-OK")  # the simulator's retry carries a new timestamp: a new transaction
    assert tx == tx_first + 1 and [json.loads(r.text)["tx"] for r in ctx.points("tx_start")] == [tx_first, tx]
    assert (await drv.read(["callerrors_total"]))[0].value == 1.0


async def test_a_resent_start_gets_the_same_id_and_one_record(site: Any) -> None:
    drv, ctx, _ = site
    frame = [2, "s1", "StartTransaction", {"connectorId": 1, "idTag": "TAG-OK", "meterStart": 10,
                                           "timestamp": "2026-12-03T16:00:00Z"}]
    ctx.hold = True
    async with connect(f"ws://127.0.0.1:{drv.port}/ocpp/CP001", subprotocols=["ocpp1.6"],
                       additional_headers=basic("CP001", SECRET), open_timeout=5) as ws:
        await ws.send(json.dumps(frame))
        await until(lambda: ctx.held)
        ctx.held.pop().set_exception(RuntimeError("not now"))
        first = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert first[:3] == [4, "s1", "InternalError"]
        ctx.hold = False
        await ws.send(json.dumps(frame))  # the charger re-sends its queued StartTransaction
        second = json.loads(await asyncio.wait_for(ws.recv(), 5))
        await ws.send(json.dumps(frame))  # and again (our answer got lost)
        third = json.loads(await asyncio.wait_for(ws.recv(), 5))
        tx = second[2]["transactionId"]
        assert third[2]["transactionId"] == tx and list(drv.transactions.open) == [tx]
        starts = ctx.points("tx_start")
        assert len(starts) == 2 and starts[0].text == starts[1].text  # the refused copy, then one stored
        stop = [2, "s2", "StopTransaction", {"transactionId": tx, "meterStop": 510,
                                             "timestamp": "2026-12-03T17:00:00Z"}]
        for _ in range(2):
            await ws.send(json.dumps(stop))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))[0] == 3
    stops = ctx.points("tx_stop")
    assert len(stops) == 1 and json.loads(stops[0].text)["energy_wh"] == 500


async def test_a_charger_reconnecting_without_boot_is_asked_for_its_status(site: Any, monkeypatch: Any) -> None:
    drv, ctx, charger = site
    monkeypatch.setattr(driver_mod, "REFRESH_AFTER_S", 0.1)
    sim = charger(meter_s=0)
    await sim.connect(boot=False)  # the box restarted; the charger only reconnects
    await until(lambda: sim.triggered == 1 and len(ctx.points(".status")) == 3)
    assert ctx.points("CP001.boot") == []


async def test_sim_command_runs_chargers_driven_by_its_control_port(site: Any) -> None:
    import signal
    import sys

    drv, ctx, _ = site
    root = Path(__file__).resolve().parents[1]
    cli = [sys.executable, "-m", "hil_tests.sims.cli", "ocpp-charger"]
    bad = await asyncio.create_subprocess_exec(*cli, "--url", "http://x", stdout=asyncio.subprocess.PIPE,
                                               stderr=asyncio.subprocess.PIPE, cwd=root)
    out, err = await bad.communicate()
    assert bad.returncode == 2 and out == b"" and err.decode().startswith("error: --url must start with ws://")
    proc = await asyncio.create_subprocess_exec(
        *cli, "--url", f"ws://127.0.0.1:{drv.port}/ocpp", "--cp-id", "CP001", "--secret", SECRET, "--meter-s", "0.1",
        "--control", "0", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=root)
    try:
        info = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
        assert info["chargers"] == ["CP001"] and "CP001" in drv.sessions
        reader, writer = await asyncio.open_connection("127.0.0.1", info["control_port"])

        async def ctl(msg: dict) -> dict:
            writer.write(json.dumps(msg).encode() + b"\n")
            await writer.drain()
            return json.loads(await asyncio.wait_for(reader.readline(), 10))

        assert (await ctl({"plug": 1}))["connectors"]["1"]["status"] == "Preparing"
        tx = (await ctl({"start": 1, "id_tag": "TAG-OK"}))["result"]
        await until(lambda: len(ctx.points("c1.energy_import")) >= 2)
        assert (await ctl({"stop": 1}))["result"] == tx and json.loads(ctx.points("tx_stop")[-1].text)["tx"] == tx
        assert (await ctl({"fault": 2, "error_code": "OverVoltage"}))["ok"]
        assert ctx.points("CP001.c2.status")[-1].cls == RecordClass.ALARM
        assert await ctl({"stop": 7}) == {"ok": False, "error": "'stop' must be an integer 1..2, got 7"}
        assert (await ctl({"disconnect": True}))["connected"] is False
        await until(lambda: "CP001" not in drv.sessions)
        assert (await ctl({"connect": True}))["connected"] is True and "CP001" in drv.sessions
        writer.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
