"""Issue 9, box side: property tests over every parser where outside data enters the box.

Arbitrary bytes / text / JSON never raise anything but the project's own errors (FrameError for
device data, ValueError for the command request, the core.errors tree), and whatever is accepted
can be stored (every Reading made from it passes `check_reading`). Valid inputs round-trip.
max_examples is kept small: these run in the default suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.commands import parse_command_request
from core.errors import FrameError
from core.http_listener import Request
from core.reading import Quality, Reading, RecordClass, check_reading, from_row
from drivers import gates
from drivers.gbt20999 import codec as g
from drivers.plate_camera.driver import PlateReceiverDriver
from drivers.plate_camera.settings import PlateCameraSettings
from drivers.push_auth import PushAuth, PushCredential, Refusal, parse_sources
from drivers.wxt_serial import codec as wxt_ascii
from drivers.wxt_serial import nmea

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLEAN = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
# JSON-ish values an attacker may put anywhere: huge integers, lone surrogates, NaN-like floats, nesting
WILD_TEXT = st.text(st.characters(), max_size=40) | st.sampled_from(["\ud800", "a\x00b", "\udfff" * 3, "x" * 300])
WILD = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**400), 10**400) | st.floats() | WILD_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=True, allow_nan=True).encode()


def storable(text: str) -> None:
    check_reading(Reading("dev", "point", 1.0, "", 1_700_000_000.0, text=text))


# --- plate camera --------------------------------------------------------------------------------
@FAST
@given(st.binary(max_size=300))
def test_plate_push_arbitrary_bytes(body: bytes) -> None:
    try:
        ev = gates.parse_plate_push(body)
    except FrameError:
        return
    storable(ev.plate + ev.serialno + ev.ipaddr)


@FAST
@given(WILD, WILD, WILD, WILD, WILD, WILD)
def test_plate_push_wild_field_values(serial, plate, conf, plate_id, offline, sec) -> None:
    body = dumps({"AlarmInfoPlate": {"serialno": serial, "ipaddr": plate, "result": {"PlateResult": {
        "license": plate, "confidence": conf, "plateid": plate_id, "isoffline": offline,
        "timeStamp": {"Timeval": {"sec": sec}}}}}})
    try:
        ev = gates.parse_plate_push(body)
    except FrameError as exc:
        assert str(exc).startswith("plate push:")
        return
    storable(gates.compact_json({"plate": ev.plate, "camera": ev.serialno, "ts": ev.ts}))


@FAST
@given(st.binary(max_size=300), st.sampled_from(["multipart/form-data; boundary=xx", "multipart/form-data",
                                                 "application/x-www-form-urlencoded", "text/plain"]))
def test_heartbeat_arbitrary_bytes(body: bytes, ctype: str) -> None:
    try:
        beat = gates.parse_heartbeat(body, ctype)
    except FrameError:
        return
    storable(beat.serialno + beat.ipaddr + beat.device_name)


# --- access controller ---------------------------------------------------------------------------
@FAST
@given(st.binary(max_size=300))
def test_access_event_arbitrary_bytes(body: bytes) -> None:
    try:
        ev = gates.parse_access_event(body)
    except FrameError:
        return
    storable(ev.card_no + ev.time + ev.name)


@FAST
@given(WILD, WILD, WILD, WILD, WILD, WILD)
def test_access_event_wild_field_values(major, minor, card, door, serial, when) -> None:
    body = dumps({"dateTime": when, "AccessControllerEvent": {"majorEventType": major, "subEventType": minor,
                                                              "cardNo": card, "doorNo": door, "serialNo": serial}})
    try:
        ev = gates.parse_access_event(body)
    except FrameError as exc:
        assert str(exc).startswith("AccessControllerEvent:")
        return
    storable(gates.compact_json({"card": ev.card_no, "time": ev.time, "door": ev.door, "serial": ev.serial_no}))


# --- the receiver as a whole: status codes, never an exception --------------------------------------
_CAMS = (PushCredential("cam-1", "secret-123", sources=parse_sources(["10.0.0.7"])),
         PushCredential("cam-2", sources=parse_sources(["10.0.0.8"])))


@FAST
@given(st.binary(max_size=200) | st.builds(lambda s, p, i: dumps({"AlarmInfoPlate": {"serialno": s, "result": {
    "PlateResult": {"license": p, "confidence": 90, "plateid": i}}}}), st.sampled_from(["cam-1", "cam-2", "cam-3"]),
    WILD_TEXT, st.integers(-5, 10**20)),
       st.sampled_from(["10.0.0.7:1", "10.0.0.8:2", "10.0.0.9:3", "garbage"]),
       st.sampled_from([None, "Basic Y2FtLTE6c2VjcmV0LTEyMw==", "Basic Y2FtLTE6d3Jvbmc=", "Basic !!", "Bearer x"]),
       st.sampled_from(["application/json", "multipart/form-data; boundary=b", "application/x-www-form-urlencoded"]))
def test_the_plate_receiver_answers_every_request_with_a_status(body, peer, auth, ctype) -> None:
    got: list[Reading] = []
    rx = PlateReceiverDriver(PlateCameraSettings(name="gate", cameras=_CAMS, allow_list=frozenset({"A1"})), got.append)
    headers = {"content-type": ctype, **({"authorization": auth} if auth else {})}
    resp = asyncio.run(rx._handle(Request("POST", "/", "", headers, body, peer)))
    assert resp.status in (200, 400, 401, 403), resp
    if resp.status == 401:
        assert dict(resp.headers)["WWW-Authenticate"].startswith("Basic")
    for r in got:  # whatever was taken can be stored
        check_reading(r)
        event = json.loads(r.text)
        assert (event["camera"], peer.split(":")[0]) in {("cam-1", "10.0.0.7"), ("cam-2", "10.0.0.8")}


@FAST
@given(st.dictionaries(st.sampled_from(["authorization", "x-other"]), st.text(max_size=60), max_size=2),
       st.text(max_size=30))
def test_push_auth_never_raises(headers: dict, peer: str) -> None:
    who = PushAuth(_CAMS).authenticate(headers, peer)
    assert isinstance(who, (frozenset, Refusal))


# --- local command endpoint ----------------------------------------------------------------------
@FAST
@given(st.binary(max_size=200) | st.builds(lambda d, c, a, o: dumps({"device": d, "command": c, "args": a,
                                                                     "origin": o}), WILD, WILD, WILD, WILD))
def test_command_request_arbitrary(body: bytes) -> None:
    try:
        device, command, args, origin = parse_command_request(body)
    except ValueError:
        return
    storable(gates.compact_json({"device": device, "command": command, "args": args, "origin": origin}))


@FAST
@given(st.text(CLEAN, min_size=1, max_size=64), st.text(CLEAN, min_size=1, max_size=64),
       st.dictionaries(st.text(CLEAN, min_size=1, max_size=16),
                       st.integers(-(2**53), 2**53) | st.text(CLEAN, max_size=50) | st.booleans(), max_size=5))
def test_command_request_round_trip(device: str, command: str, args: dict) -> None:
    body = json.dumps({"device": device, "command": command, "args": args, "origin": "cli"}).encode()
    assert parse_command_request(body) == (device, command, args, "cli")


# --- GB/T 20999 frames ---------------------------------------------------------------------------
@FAST
@given(st.binary(max_size=120), st.booleans())
def test_gbt_decode_arbitrary_bytes(raw: bytes, escaped: bool) -> None:
    for candidate in (raw, b"\x7e" + raw + b"\x7d"):
        with contextlib.suppress(FrameError):
            g.decode_frame(candidate, escaped=escaped)


@FAST
@given(st.lists(st.binary(max_size=40), max_size=6))
def test_gbt_splitter_never_raises(chunks: list[bytes]) -> None:
    splitter = g.FrameSplitter()
    for chunk in chunks:
        for item in splitter.feed(chunk):
            assert isinstance(item, (g.Frame, FrameError))


# --- NMEA and WXT ASCII lines --------------------------------------------------------------------
@FAST
@given(st.text(max_size=120) | st.binary(max_size=120))
def test_nmea_arbitrary_lines(line) -> None:
    try:
        out = nmea.decode(line)
    except FrameError:
        return
    for m in out:
        assert m.value is None or (m.value == m.value and abs(m.value) < float("inf"))


@FAST
@given(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60))
def test_nmea_checksummed_garbage(body: str) -> None:
    line = f"${body}*{nmea.checksum(body):02X}"
    with contextlib.suppress(FrameError):
        nmea.decode(line)


@FAST
@given(st.floats(0, 359.9, allow_nan=False), st.floats(0, 60, allow_nan=False), st.sampled_from(["R", "T"]))
def test_nmea_mwv_round_trip(angle: float, speed: float, ref: str) -> None:
    line = nmea.build_sentence("WI", "MWV", [f"{angle:.1f}", ref, f"{speed:.1f}", "M", "A"])
    dm, sm = nmea.decode(line + "\r\n")
    assert (dm.code, sm.code) == ("Dm", "Sm")
    assert abs(dm.value - round(angle, 1)) < 1e-9 and abs(sm.value - round(speed, 1)) < 1e-9


@FAST
@given(st.text(max_size=120) | st.binary(max_size=120))
def test_wxt_ascii_arbitrary_lines(line) -> None:
    try:
        comp = wxt_ascii.parse_composite(line)
    except FrameError:
        return
    for m in comp.fields.values():
        assert m.value is None or abs(m.value) < 1e10
    for text in comp.text.values():
        storable(text)


# -- check_reading (the buffer's check, with its fast path) agrees with the wire decoder --------------
_names = st.sampled_from(["wxt-1", "air_temperature", "degC", ""]) | st.text(max_size=6)
_numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(min_value=-10**400, max_value=10**400)


@FAST
@given(device=_names, point=_names, unit=_names, value=st.none() | _numbers, ts=_numbers,
       text=st.none() | st.text(max_size=6), seq=st.integers(min_value=1, max_value=2**64),
       quality=st.sampled_from(list(Quality)), cls=st.sampled_from(list(RecordClass)))
def test_check_reading_refuses_exactly_what_from_row_refuses(device, point, unit, value, ts, text, seq,
                                                              quality, cls) -> None:
    reading = Reading(device, point, value, unit, ts, quality, cls, text, seq)
    wire = reading.to_row()
    for _ in range(2):  # the second time the names may come from the fast path's memory
        try:
            from_row(wire)
            expected = None
        except ValueError as exc:
            expected = str(exc)
        try:
            check_reading(reading)
            got = None
        except ValueError as exc:
            got = str(exc)
        if expected is None or got is None:
            assert got == expected
        else:  # both refuse; from_row words seq/quality itself, every other field alike
            assert got.split(" ", 1)[0] == expected.split(" ", 1)[0]


# -- from_row's fast path (the fleet server decodes every ingested row with it) agrees with the full checks --
def _edges() -> list:
    from core.reading import MAX_QUALITY
    from core.validate import TS_MAX, TS_MIN, VALUE_ABS_MAX

    return [VALUE_ABS_MAX, -VALUE_ABS_MAX, VALUE_ABS_MAX * 1.0000001, -VALUE_ABS_MAX * 1.0000001, TS_MIN, TS_MAX,
            TS_MIN - 0.001, TS_MAX + 0.001, MAX_QUALITY, MAX_QUALITY + 1, 2**63 - 1, 2**63, 0, -1, 1, True, False,
            float("nan"), float("inf"), "", "x" * 129, "a\x00b", "\ud800", None, "routine", "ROUTINE", 1.5, [], {}]


def _decode_both(wire: list) -> tuple[object, object]:
    from core.reading import _from_row_checked

    outcomes = []
    for decode in (_from_row_checked, from_row):
        try:
            outcomes.append(decode(list(wire)))
        except ValueError as exc:
            outcomes.append(("refused", str(exc)))
    return outcomes[0], outcomes[1]


def _agree(expected: object, got: object) -> None:
    assert got == expected or (isinstance(got, Reading) and repr(got) == repr(expected)), (expected, got)  # NaN
    if isinstance(got, Reading):
        assert type(got.quality) is Quality and type(got.cls) is RecordClass and type(got.ts) is float


def test_from_row_fast_path_agrees_on_every_edge_of_every_field() -> None:
    """A valid row whose names the fast path knows, with ONE field replaced by each edge value."""
    base = [5, 1_700_000_000.0, "wxt-1", "air_temperature", 21.5, "degC", 0, "routine", None]
    _decode_both(base)  # the names are now known
    for field in range(9):
        for edge in _edges():
            wire = list(base)
            wire[field] = edge
            _agree(*_decode_both(wire))


@FAST
@given(field=st.integers(min_value=0, max_value=8), replacement=st.sampled_from(_edges()) | _numbers | st.none()
       | st.booleans() | st.text(max_size=6), device=_names, point=_names, unit=_names)
def test_from_row_fast_path_decodes_exactly_as_the_full_checks(field, replacement, device, point, unit) -> None:
    """Random names (known or not to the fast path) and one field replaced by anything."""
    wire = [5, 1_700_000_000.0, device, point, 21.5, unit, 0, "routine", None]
    _decode_both(wire)  # learns the names when they are clean
    wire[field] = replacement
    _agree(*_decode_both(wire))
