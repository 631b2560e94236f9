"""Gates: plate-camera push codec + receiver against the camera simulator; ISAPI access controller."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import CommandRefused, DeviceException, DeviceTimeout, FrameError, LinkError
from core.http_listener import HttpServer, Response
from core.reading import Reading, RecordClass
from drivers import gates
from drivers.access_controller.driver import AccessControllerDriver
from drivers.access_controller.settings import AccessControllerSettings
from drivers.access_controller.sim import AccessControllerSim
from drivers.base import Driver
from drivers.plate_camera.driver import PlateReceiverDriver
from drivers.plate_camera.settings import PlateCameraSettings
from drivers.plate_camera.sim import PlateCameraSim
from drivers.push_auth import PushCredential, parse_sources

PUSH = (b'{"AlarmInfoPlate":{"result":{"PlateResult":{"license":"\xe9\xb2\x81A12345","confidence":96,'
        b'"plateid":21085,"isoffline":0}},"serialno":"fe71e106-57263272"}}')
RULES = gates.GateRules(allow=frozenset({"鲁A12345", "鲁A 88888"}), deny=frozenset({"鲁B00000"}),
                        allow_prefixes=("鲁A9",), min_confidence=80)
GATE = {"allow_list": RULES.allow, "deny_list": RULES.deny, "allow_prefixes": RULES.allow_prefixes,
        "min_confidence": RULES.min_confidence}  # the same rules, as a plate camera's settings
LOOPBACK = parse_sources(["127.0.0.1"])
SIM_CAMERA = (PushCredential("fe71e106-57263272", sources=LOOPBACK),)  # the simulator's default serial
ACS_PUSH = (PushCredential("acs1", sources=LOOPBACK),)


# --- plate codec ---------------------------------------------------------------------------------
def test_devices_md_push_parses_and_is_answered_ok() -> None:
    ev = gates.parse_plate_push(PUSH)
    assert (ev.serialno, ev.plate, ev.confidence, ev.plate_id, ev.offline) == ("fe71e106-57263272", "鲁A12345", 96,
                                                                                21085, False)
    decision = gates.decide(ev, RULES)
    assert decision == gates.Decision(True, "allow-list")
    reply = json.loads(gates.plate_reply(ev, decision))
    assert reply == {"Response_AlarmInfoPlate": {"info": "ok", "plateid": 21085, "content": "retransfer_stop"}}


@pytest.mark.parametrize("plate, confidence, offline, opens, reason", [
    ("鲁A88888", 90, False, True, "allow-list"), ("鲁a-12345", 90, False, True, "allow-list"),
    ("鲁A12345", 50, False, False, "confidence 50 below 80"), ("鲁B00000", 99, False, False, "deny-list"),
    ("鲁A90001", 90, False, True, "rule: prefix 鲁A9"), ("京C11111", 99, False, False, "not on the allow-list"),
    ("鲁A12345", 99, True, False, "offline record"), ("_无_", 99, False, False, "no plate read"),
])
def test_decisions(plate: str, confidence: int, offline: bool, opens: bool, reason: str) -> None:
    d = gates.decide(gates.PlateEvent("cam", plate, confidence, 1, offline), RULES)
    assert d.open is opens and d.reason.startswith(reason)


def test_offline_reply_acknowledges_without_opening_and_relay_pulse() -> None:
    ev = gates.PlateEvent("cam", "鲁A12345", 96, 7, True)
    body = json.loads(gates.plate_reply(ev, gates.decide(ev, RULES)))["Response_AlarmInfoPlate"]
    assert body["info"] == "no" and body["ContinuePushOffline"] == {"plateid": 7, "continue": 1}
    live = gates.PlateEvent("cam", "鲁A12345", 96, 8, False)
    body = json.loads(gates.plate_reply(live, gates.Decision(True, "x"), relay=1))["Response_AlarmInfoPlate"]
    assert body["ivs_ioctrl"] == {"io": 1, "value": 2, "delay": 500}


def test_deduplicator_is_bounded() -> None:
    d = gates.Deduplicator(capacity=2)
    for i in range(3):
        d.remember(("c", i), gates.Decision(True, str(i)))
    assert d.get(("c", 0)) is None and d.get(("c", 2)).reason == "2"


@pytest.mark.parametrize("body, fragment", [
    (b"not json", "not JSON"), (b"[]", "JSON object"), (b"{}", "AlarmInfoPlate"),
    (PUSH.replace(b'"confidence":96', b'"confidence":"96"'), "wrong type"),
    (PUSH.replace(b'"isoffline":0', b'"isoffline":2'), "isoffline"),
    (PUSH.replace(b'"confidence":96', b'"confidence":NaN'), "confidence"),
])
def test_bad_pushes_name_the_fault(body: bytes, fragment: str) -> None:
    with pytest.raises(FrameError, match=fragment):
        gates.parse_plate_push(body)


_KEYS = st.sampled_from(["AlarmInfoPlate", "result", "PlateResult", "license", "confidence", "plateid", "isoffline",
                         "serialno", "timeStamp", "Timeval", "sec", "x"])


def _nest(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=5)


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8), _nest,
                     max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(_json | st.binary(max_size=60))
def test_push_and_event_garbage_only_frame_error(doc) -> None:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    for parse in (gates.parse_plate_push, gates.parse_access_event, gates.parse_response_status,
                  gates.parse_remote_control, lambda b: gates.parse_heartbeat(b, "multipart/form-data; boundary=x"),
                  lambda b: gates.parse_heartbeat(b, "application/x-www-form-urlencoded")):
        with contextlib.suppress(FrameError):
            parse(body)


# --- ISAPI codec ---------------------------------------------------------------------------------
def test_remote_control_body_is_exactly_devices_md() -> None:
    assert gates.remote_control_xml("open") == b"<RemoteControlDoor><cmd>open</cmd></RemoteControlDoor>"
    ns = b'<RemoteControlDoor version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema"><cmd>alwaysOpen</cmd></RemoteControlDoor>'
    assert gates.parse_remote_control(ns) == "alwaysOpen"
    with pytest.raises(FrameError, match="DTD"):
        gates.parse_remote_control(b'<!DOCTYPE x [<!ENTITY a "b">]>'
                                   b'<RemoteControlDoor><cmd>&a;</cmd></RemoteControlDoor>')
    with pytest.raises(ValueError):
        gates.remote_control_xml("explode")


def test_response_status_both_encodings() -> None:
    assert gates.parse_response_status(gates.response_status_xml("/x", 1, "OK", "ok")) == (1, "OK", "ok")
    assert gates.parse_response_status(b'{"statusCode":4,"statusString":"Invalid Operation"}')[0] == 4


def test_event_codes_from_devices_md_decode_to_names() -> None:
    names = {(maj, mnr): gates.parse_access_event(gates.access_event_json(maj, mnr, card_no="123")).name
             for maj, mnr in [(5, 0x01), (5, 0x06), (5, 0x09), (5, 0x4B), (5, 0x4C), (3, 0x400), (5, 0x77)]}
    assert names == {(5, 1): "valid_card", (5, 6): "no_permission", (5, 9): "unknown_card", (5, 0x4B): "face_pass",
                     (5, 0x4C): "face_fail", (3, 0x400): "remote_open", (5, 0x77): "major 0x5 minor 0x77"}


_xml_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20).map(str.strip)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**31), _xml_text, _xml_text, st.sampled_from(sorted(gates.DOOR_COMMANDS.values())))
def test_isapi_round_trips(code: int, text: str, sub: str, cmd: str) -> None:
    assert (gates.parse_response_status(gates.response_status_xml("/ISAPI/x?a=1&b=<2>", code, text, sub))
            == (code, text, sub))
    assert gates.parse_remote_control(gates.remote_control_xml(cmd)) == cmd


# the boundary rules refuse NUL (and lone surrogates)
CLEAN = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.text(CLEAN, max_size=20), st.integers(0, 64),
       st.integers(0, 2**31))
def test_access_event_round_trip(major: int, minor: int, card: str, door: int, serial: int) -> None:
    ev = gates.parse_access_event(gates.access_event_json(major, minor, card_no=card, door=door, serial_no=serial))
    assert (ev.major, ev.minor, ev.card_no, ev.door, ev.serial_no) == (major, minor, card, door, serial)


@settings(max_examples=200, deadline=None)
@given(st.text(CLEAN, min_size=1, max_size=64), st.text(CLEAN, max_size=32), st.integers(0, 100), st.integers(0, 2**31),
       st.booleans(), st.booleans())
def test_plate_push_and_reply_round_trip(serial, plate, confidence, plate_id, offline, opens) -> None:
    body = json.dumps({"AlarmInfoPlate": {"serialno": serial, "result": {"PlateResult": {
        "license": plate, "confidence": confidence, "plateid": plate_id, "isoffline": int(offline)}}}}).encode()
    ev = gates.parse_plate_push(body)
    assert ev == gates.PlateEvent(serial, plate, confidence, plate_id, offline)
    reply = json.loads(gates.plate_reply(ev, gates.Decision(opens, "r")))["Response_AlarmInfoPlate"]
    assert reply["info"] == ("ok" if opens else "no")
    assert (reply["ContinuePushOffline"]["plateid"] if offline else reply["plateid"]) == plate_id


# --- tiny HTTP server ----------------------------------------------------------------------------
async def _raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    out = await asyncio.wait_for(reader.read(), 2)
    writer.close()
    return out


async def test_http_listener_limits_strictness_and_keep_alive() -> None:
    async def echo(req):
        return Response(200, req.body)

    server = await HttpServer(echo, max_body=1024, max_header=512).start()
    try:
        assert (await _raw(server.port, b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 400")
        assert (await _raw(server.port, b"POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n")).startswith(b"HTTP/1.1 413")
        assert (await _raw(server.port, b"POST / HTTP/1.1\r\n"
                                        b"Transfer-Encoding: chunked\r\n\r\n")).startswith(b"HTTP/1.1 501")
        assert (await _raw(server.port, b"GET / HTTP/1.1\r\nX: " + b"a" * 600
                                        + b"\r\n\r\n")).startswith(b"HTTP/1.1 431")
        two = await _raw(server.port, b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"
                                      b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n"
                                      b"Connection: close\r\n\r\nyo")
        assert two.count(b"HTTP/1.1 200") == 2 and b"100 Continue" in two and two.endswith(b"yo")
        # lenient by default: firmware without Host, a Latin-1 byte in a header value
        assert (await _raw(server.port, b"POST / HTTP/1.1\r\nX-Site: caf\xe9\r\nContent-Length: 2\r\n"
                                        b"Connection: close\r\n\r\nok")).startswith(b"HTTP/1.1 200")
        for bad in (b"GET / HTTP/2.0\r\n\r\n", b"GET relative HTTP/1.1\r\n\r\n", b"get / HTTP/1.1\r\n\r\n"):
            assert (await _raw(server.port, bad)).startswith(b"HTTP/1.1 400"), bad
    finally:
        await server.stop()
    strict = await HttpServer(echo, strict=True, keep_alive=False).start()
    try:
        assert (await _raw(strict.port, b"GET / HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 400")  # no Host
        assert (await _raw(strict.port, b"GET / HTTP/1.1\r\nHost: b\r\nX: \xe9\r\n\r\n")).startswith(b"HTTP/1.1 400")
        head = await _raw(strict.port, b"HEAD / HTTP/1.1\r\nHost: b\r\nContent-Length: 3\r\n\r\nabc")
        assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 3" in head and head.endswith(b"\r\n\r\n")
    finally:
        await strict.stop()


# --- plate receiver against the camera simulator -------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 1_750_000_000.0

    def __call__(self) -> float:
        return self.t


async def test_camera_pushes_are_decided_acknowledged_and_deduplicated() -> None:
    got: list[Reading] = []
    clock = Clock()
    rx = PlateReceiverDriver(PlateCameraSettings(name="gate1", listen_host="127.0.0.1", listen_port=0,
                                                 cameras=SIM_CAMERA, **GATE), got.append, clock=clock)
    await rx.open()
    url = f"http://127.0.0.1:{rx.port}/devicemanagement/php/plateresult.php"
    try:
        async with PlateCameraSim(url, clock=clock) as cam:
            assert await cam.recognise("鲁A12345") is True
            assert await cam.recognise("京C11111") is False
            assert cam.opened == ["鲁A12345"]
            first = json.loads(got[0].text)
            assert got[0].cls is RecordClass.ALARM and got[0].value == 1.0 and got[0].point == "plate"
            assert first == {"camera": cam.serialno, "plate": "鲁A12345", "plateid": 21085, "confidence": 96,
                             "offline": False, "camera_ts": float(int(clock.t)), "open": True, "reason": "allow-list"}
            assert json.loads(got[1].text)["open"] is False

            cam.lose_replies = 1  # processed by us, reply lost: the camera keeps it and re-sends it
            assert await cam.recognise("鲁A88888") is None and len(cam.offline) == 1
            assert await cam.push_offline() == 1 and not cam.offline
            assert len(got) == 3 and rx.duplicates == 1  # one reading, the re-send only re-answered

            await rx.close()  # server down: records pile up offline
            for plate in ("鲁A12345", "京C22222", "鲁A90001"):
                assert await cam.recognise(plate) is None
            assert len(cam.offline) == 3
            await rx.open()
            cam.push_url = f"http://127.0.0.1:{rx.port}/devicemanagement/php/plateresult.php"
            assert await cam.push_offline() == 3
            offline = [json.loads(r.text) for r in got[3:]]
            assert [o["plate"] for o in offline] == ["鲁A12345", "京C22222", "鲁A90001"]
            assert all(o["offline"] and not o["open"] for o in offline)
            assert rx.events == 6 and cam.opened == ["鲁A12345"]
    finally:
        await rx.close()


async def test_pipeline_refusal_means_the_camera_resends() -> None:
    got: list[Reading] = []
    fail = [True]

    def on_event(r: Reading) -> None:
        if fail[0]:
            raise RuntimeError("buffer full")
        got.append(r)

    rx = PlateReceiverDriver(PlateCameraSettings(name="gate1", listen_host="127.0.0.1", listen_port=0,
                                                 cameras=SIM_CAMERA, **GATE), on_event)
    await rx.open()
    try:
        async with PlateCameraSim(f"http://127.0.0.1:{rx.port}/") as cam:
            assert await cam.recognise("鲁A12345") is None  # 500: not acknowledged, kept offline
            fail[0] = False
            assert await cam.push_offline() == 1
            assert len(got) == 1 and json.loads(got[0].text)["offline"] is True
    finally:
        await rx.close()


async def test_heartbeats_unknown_cameras_commands_and_bad_bodies() -> None:
    got: list[Reading] = []
    clock = Clock()
    rx = PlateReceiverDriver(PlateCameraSettings(name="gate1", listen_host="127.0.0.1", listen_port=0, **GATE,
                                                 cameras=(PushCredential("cam-A", sources=LOOPBACK),),
                                                 heartbeat_timeout_s=10),
                             got.append, clock=clock)
    await rx.open()
    url = f"http://127.0.0.1:{rx.port}/"
    try:
        (online,) = await rx.read(["online.cam-A"])
        assert online.value == 0.0
        async with (PlateCameraSim(url, serialno="cam-A", heartbeat_s=0.05) as cam,
                    PlateCameraSim(url, serialno="cam-X") as other):
            await cam.start_heartbeats()
            deadline = time.monotonic() + 3.0  # every 50 ms; a loaded CI machine may be slower
            while cam.heartbeats_sent < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert cam.heartbeats_sent >= 2
            r = {x.point: x.value for x in await rx.read()}
            assert r == {"online.cam-A": 1.0, "events_total": 0.0, "duplicates_total": 0.0, "allowlist_version": 0.0}
            assert await other.recognise("鲁A12345") is None  # unknown camera: 403, never opens, nothing stored
            assert got == [] and rx.refused == {"identity_mismatch": 1}
            with pytest.raises(CommandRefused):
                await rx.write("open_gate", {})
            await rx.write("allow_plate", {"plate": "京C11111"})
            assert await cam.recognise("京C11111") is True
            await rx.write("revoke_plate", {"plate": "京C11111"})
            assert await cam.recognise("京C11111") is False
        assert all("admin" not in (x.text or "") for x in got)  # the heartbeat's password is never kept
        clock.t += 11
        (online,) = await rx.read(["online.cam-A"])
        assert online.value == 0.0
        async with httpx.AsyncClient() as client:
            bad = await client.post(url, content=b'{"AlarmInfoPlate": 3}')
            assert bad.status_code == 400 and "AlarmInfoPlate" in bad.json()["detail"]
            assert (await client.get(url)).status_code == 405
        assert rx.rejected_bodies == 1
    finally:
        await rx.close()


# --- access controller against its simulator -----------------------------------------------------
async def test_access_controller_commands_state_and_events() -> None:
    events: list[Reading] = []
    async with AccessControllerSim(cards=frozenset({"1001"}), no_permission=frozenset({"2002"})) as sim:
        s = AccessControllerSettings(name="acs1", url=sim.url, username="admin", password="hik12345", doors=(1, 2, 3),
                                     allow_commands=("open", "always_open", "resume"),
                                     listen_host="127.0.0.1", listen_port=0, event_senders=ACS_PUSH)
        drv = AccessControllerDriver(s, on_event=events.append)
        await drv.open()
        sim.event_url = f"http://127.0.0.1:{drv.listen_port}/"
        try:
            await drv.write("open", {"door": 1})
            assert sim.doors[1].commands == ["open"]
            r = {x.point: x.value for x in await drv.read(["door1_lock", "door1_state", "door2_lock"])}
            assert r == {"door1_lock": 1.0, "door1_state": 4.0, "door2_lock": 0.0}
            await drv.write("always_open", {"door": 2})
            (state,) = await drv.read(["door2_state"])
            assert state.value == 2.0
            for cmd in ("always_close", "close", "reboot"):
                with pytest.raises(CommandRefused):
                    await drv.write(cmd, {"door": 1})
            with pytest.raises(DeviceException) as err:  # door 3 is configured here, absent on the device
                await drv.write("open", {"door": 3})
            assert err.value.code == 6
            (missing,) = await drv.read(["door3_lock"])
            assert missing.value is None
            assert await sim.swipe("1001") == "valid_card"
            assert await sim.swipe("2002") == "no_permission"
            assert await sim.swipe("9999") == "unknown_card"
            await sim.face(True)
            await sim.face(False)
            await sim.repush()  # the device re-sends its last event: taken once only
            names = [json.loads(e.text)["event"] for e in events]
            assert names == ["remote_open", "valid_card", "no_permission", "unknown_card", "face_pass", "face_fail"]
            assert [e.value for e in events] == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
            assert all(e.cls is RecordClass.ALARM for e in events)
            assert json.loads(events[1].text)["card"] == "1001"
        finally:
            await drv.close()
        wrong = AccessControllerDriver(AccessControllerSettings(name="acs1", url=sim.url, username="admin",
                                                                password="nope", allow_commands=("open",)))
        await wrong.open()
        try:
            with pytest.raises(DeviceException) as err:
                await wrong.write("open", {})
            assert err.value.code == 401
        finally:
            await wrong.close()
    gone = AccessControllerDriver(AccessControllerSettings(name="acs1", url=sim.url, username="a", password="b"))
    await gone.open()
    try:
        with pytest.raises(LinkError):
            await gone.read()
    finally:
        await gone.close()


async def test_wire_request_and_error_mapping_with_a_mock_transport() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "GET":
            if "timeout" in seen[0].url.path:
                raise httpx.ReadTimeout("slow", request=request)
            return httpx.Response(200, content=b'{"AcsWorkStatus": 5}')
        return httpx.Response(200, content=gates.response_status_xml(request.url.path, 1, "OK", "ok"))

    s = AccessControllerSettings(name="acs1", url="http://acs.local", username="admin", password="x", auth="basic",
                                 allow_commands=("open",))
    drv = AccessControllerDriver(s, transport=httpx.MockTransport(handler))
    await drv.open()
    try:
        await drv.write("open", {})
        put = seen[0]
        assert (put.method, put.url.path) == ("PUT", "/ISAPI/AccessControl/RemoteControl/door/1")
        assert put.content == b"<RemoteControlDoor><cmd>open</cmd></RemoteControlDoor>"
        with pytest.raises(FrameError, match="AcsWorkStatus"):
            await drv.read()
    finally:
        await drv.close()

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    drv = AccessControllerDriver(s, transport=httpx.MockTransport(slow))
    await drv.open()
    try:
        with pytest.raises(DeviceTimeout):
            await drv.read()
    finally:
        await drv.close()


@pytest.mark.parametrize("kw", [{"url": "ftp://x"}, {"auth": "ntlm"}, {"doors": ()}, {"doors": (65,)},
                                {"allow_commands": ("explode",)}, {"username": ""}, {"password": ""},
                                {"listen_port": 0}, {"points": ("door2_lock",)}])
def test_access_settings_validation(kw: dict) -> None:
    with pytest.raises(ValueError):
        AccessControllerSettings(**({"name": "acs1", "url": "http://x", "username": "u", "password": "p"} | kw))


@pytest.mark.parametrize("kw", [{"listen_port": 70000}, {"relay": 9}, {"dedup_capacity": 100}, {"cameras": ()},
                                {"allow_prefixes": ("",)}, {"min_confidence": 101}, {"deny_list": {"--"}}])
def test_receiver_settings_validation(kw: dict) -> None:
    with pytest.raises(ValueError):
        PlateCameraSettings(**({"name": "gate1", "cameras": SIM_CAMERA} | kw))
    with pytest.raises(ValueError):
        gates.GateRules(allow_prefixes=("",))


def test_drivers_satisfy_the_protocol() -> None:
    assert isinstance(PlateReceiverDriver(PlateCameraSettings(name="gate1", cameras=SIM_CAMERA),
                                          lambda r: None), Driver)
    assert isinstance(AccessControllerDriver(AccessControllerSettings("acs1", "http://x", "u", "p")), Driver)
