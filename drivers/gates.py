"""Smart-community gates: plate-camera pushes (Vzenith style) and access controllers (Hikvision ISAPI
style). Pure codecs and decisions only; the HTTP receiver is drivers/plate_receiver.py and the ISAPI
client drivers/access_controller.py.

Plate camera protocol (Vzenith HTTP push):
- the camera POSTs ``{"AlarmInfoPlate": {"result": {"PlateResult": {"license", "confidence", "plateid",
  "isoffline", ...}}, "serialno": ...}}``;
- the reply ``{"Response_AlarmInfoPlate": {"info": "ok", ...}}`` opens the barrier; any other info does
  not. An online reply echoes `plateid`; ``content: "retransfer_stop"`` tells the camera the record
  was taken;
- records pushed while the server was unreachable are kept (up to 9000) and re-sent with
  isoffline=1; the camera sends the next one only after ``ContinuePushOffline {plateid, continue: 1}``.
  The same record can arrive twice, so the receiver deduplicates by (serialno, plateid);
- heartbeats are multipart/form-data POSTs (device_name, ipaddr, port, user_name, pass_wd, serialno,
  channel_num) every ~5 s. The password field is never kept.

Every parser applies core.validate's boundary rules (clean UTF-8 text without lone surrogates or
NUL, length caps, integers and timestamps in range) and raises FrameError naming the field
("plate push: AlarmInfoPlate.result.PlateResult.license is not valid Unicode text ..."), so a
receiver answers 400 with the reason and nothing unstorable reaches the buffer.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs
from xml.etree import ElementTree
from xml.sax.saxutils import escape as _esc

from core.errors import FrameError
from core.validate import INT64_MAX, check_float, check_int, check_text, check_ts

__all__ = [
    "PlateEvent", "CameraHeartbeat", "GateRules", "Decision", "parse_plate_push", "parse_heartbeat",
    "decide", "plate_reply", "Deduplicator", "normalise_plate", "DOOR_COMMANDS", "remote_control_xml",
    "parse_remote_control", "response_status_xml", "parse_response_status", "AccessEvent",
    "EVENT_NAMES", "GRANTED", "parse_access_event", "access_event_json", "compact_json",
]


def compact_json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise FrameError(f"{what}: body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise FrameError(f"{what}: expected a JSON object, got {type(doc).__name__}")
    return doc


def _field(obj: Any, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise FrameError(f"{what}: missing {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise FrameError(f"{what}: {key!r} has the wrong type {type(value).__name__}")
    return value


# --- plate camera --------------------------------------------------------------------------------
_PLATE_NOISE = re.compile(r"[\s·•\-.]")


def normalise_plate(text: str) -> str:
    return _PLATE_NOISE.sub("", text).upper()


@dataclass(frozen=True, slots=True)
class PlateEvent:
    serialno: str
    plate: str
    confidence: int
    plate_id: int
    offline: bool
    ts: float | None = None      # camera's own timestamp (timeStamp.Timeval.sec), if sent
    ipaddr: str = ""


def _checked(what: str, check: Any, value: Any, field: str, **kw: Any) -> Any:
    """Apply an core.validate check; its ValueError becomes our FrameError naming the field."""
    try:
        return check(value, field, **kw)
    except ValueError as exc:
        raise FrameError(f"{what}: {exc}") from None


_PR = "AlarmInfoPlate.result.PlateResult"


def parse_plate_push(body: bytes) -> PlateEvent:
    what = "plate push"
    info = _field(_json_object(body, what), "AlarmInfoPlate", dict, what)
    serial = _checked(what, check_text, _field(info, "serialno", str, what), "AlarmInfoPlate.serialno",
                      max_len=64, allow_empty=False)
    result = _field(_field(info, "result", dict, what), "PlateResult", dict, what)
    plate = _checked(what, check_text, _field(result, "license", str, what), f"{_PR}.license", max_len=32)
    confidence = _checked(what, check_float, _field(result, "confidence", (int, float), what),
                          f"{_PR}.confidence")
    if not 0 <= confidence <= 100:
        raise FrameError(f"{what}: {_PR}.confidence must be 0..100, got {confidence!r}")
    plate_id = _checked(what, check_int, _field(result, "plateid", int, what), f"{_PR}.plateid",
                        lo=0, hi=INT64_MAX) if "plateid" in result else -1
    offline = result.get("isoffline", 0)
    if offline not in (0, 1) or isinstance(offline, bool):
        raise FrameError(f"{what}: {_PR}.isoffline must be 0 or 1, got {str(offline)[:20]!r}")
    ts = None
    timeval = result.get("timeStamp", {}).get("Timeval", {}) if isinstance(result.get("timeStamp"), dict) else {}
    if isinstance(timeval, dict) and "sec" in timeval:
        ts = _checked(what, check_ts, timeval["sec"], f"{_PR}.timeStamp.Timeval.sec")
    ip = info.get("ipaddr", "")
    ip = _checked(what, check_text, ip, "AlarmInfoPlate.ipaddr", max_len=64) if isinstance(ip, str) else ""
    return PlateEvent(serial, plate, int(confidence), plate_id, bool(offline), ts, ip)


@dataclass(frozen=True, slots=True)
class CameraHeartbeat:
    serialno: str
    ipaddr: str = ""
    device_name: str = ""


def _multipart(body: bytes, content_type: str) -> dict[str, str]:
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if m is None:
        raise FrameError("heartbeat: multipart body without a boundary")
    out = {}
    for part in body.split(b"--" + m.group(1).encode("latin-1")):
        head, sep, value = part.partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', head)
        if sep and name:
            out[name.group(1).decode("utf-8", "replace")] = value.rstrip(b"\r\n").decode("utf-8", "replace")
    return out


def parse_heartbeat(body: bytes, content_type: str) -> CameraHeartbeat:
    """A camera heartbeat (multipart/form-data or urlencoded form). FrameError if it is not one."""
    ctype = content_type.lower()
    if ctype.startswith("multipart/form-data"):
        form = _multipart(body, content_type)
    elif ctype.startswith("application/x-www-form-urlencoded"):
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
    else:
        raise FrameError(f"heartbeat: unexpected content type {content_type[:60]!r}")
    serial = form.get("serialno", "")
    if not serial:
        raise FrameError("heartbeat: no usable serialno field")
    serial = _checked("heartbeat", check_text, serial, "serialno", max_len=64)
    ip = _checked("heartbeat", check_text, form.get("ipaddr", "")[:64], "ipaddr", max_len=64)
    name = _checked("heartbeat", check_text, form.get("device_name", "")[:64], "device_name", max_len=64)
    return CameraHeartbeat(serial, ip, name)


@dataclass(frozen=True, slots=True)
class GateRules:
    """Who may pass: a local allow-list, a deny-list that wins, plate prefixes let in by rule."""

    allow: frozenset[str] = frozenset()
    deny: frozenset[str] = frozenset()
    allow_prefixes: tuple[str, ...] = ()
    min_confidence: int = 80

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow", frozenset(normalise_plate(p) for p in self.allow))
        object.__setattr__(self, "deny", frozenset(normalise_plate(p) for p in self.deny))
        if not 0 <= self.min_confidence <= 100:
            raise ValueError(f"min_confidence must be 0..100, got {self.min_confidence}")
        if any(not p for p in self.allow_prefixes):
            raise ValueError("allow_prefixes must not hold an empty prefix (that would open for every plate)")


@dataclass(frozen=True, slots=True)
class Decision:
    open: bool
    reason: str


def decide(event: PlateEvent, rules: GateRules) -> Decision:
    plate = normalise_plate(event.plate)
    if event.offline:
        return Decision(False, "offline record: the vehicle passed while we were unreachable")
    if not plate or plate in ("_无_", "无"):
        return Decision(False, "no plate read")
    if plate in rules.deny:
        return Decision(False, "deny-list")
    if event.confidence < rules.min_confidence:
        return Decision(False, f"confidence {event.confidence} below {rules.min_confidence}")
    if plate in rules.allow:
        return Decision(True, "allow-list")
    prefix = next((p for p in rules.allow_prefixes if plate.startswith(normalise_plate(p))), None)
    if prefix is not None:
        return Decision(True, f"rule: prefix {prefix}")
    return Decision(False, "not on the allow-list")


def plate_reply(event: PlateEvent, decision: Decision, *, relay: int | None = None, pulse_ms: int = 500) -> bytes:
    """The JSON body that answers one plate push (acknowledges it; opens only if decided)."""
    body: dict[str, Any] = {"info": "ok" if decision.open else "no", "content": "retransfer_stop"}
    if event.offline:
        body["ContinuePushOffline"] = {"plateid": event.plate_id, "continue": 1}
    else:
        body["plateid"] = event.plate_id
        if decision.open and relay is not None:
            body["ivs_ioctrl"] = {"io": relay, "value": 2, "delay": pulse_ms}
    return json.dumps({"Response_AlarmInfoPlate": body}, separators=(",", ":")).encode()


class Deduplicator:
    """Remembers the decision for the last `capacity` (serialno, plateid) keys (> 9000 offline records)."""

    def __init__(self, capacity: int = 20_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._seen: OrderedDict[tuple[str, int], Decision] = OrderedDict()

    def get(self, key: tuple[str, int]) -> Decision | None:
        decision = self._seen.get(key)
        if decision is not None:
            self._seen.move_to_end(key)
        return decision

    def remember(self, key: tuple[str, int], decision: Decision) -> None:
        self._seen[key] = decision
        self._seen.move_to_end(key)
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)


# --- access controller (ISAPI) -------------------------------------------------------------------
DOOR_COMMANDS = {"open": "open", "close": "close", "always_open": "alwaysOpen", "always_close": "alwaysClose",
                 "resume": "resume"}


def remote_control_xml(cmd: str) -> bytes:
    if cmd not in DOOR_COMMANDS.values():
        raise ValueError(f"door command must be one of {sorted(DOOR_COMMANDS.values())}, got {cmd!r}")
    return f"<RemoteControlDoor><cmd>{cmd}</cmd></RemoteControlDoor>".encode()


def _xml(body: bytes, what: str) -> ElementTree.Element:
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise FrameError(f"{what}: DTDs/entities are refused")
    try:
        return ElementTree.fromstring(body)
    except (ElementTree.ParseError, ValueError) as exc:
        raise FrameError(f"{what}: not well-formed XML: {exc}") from None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child_text(root: ElementTree.Element, name: str) -> str | None:
    for child in root:
        if _local(child.tag) == name:
            return (child.text or "").strip()
    return None


def parse_remote_control(body: bytes) -> str:
    root = _xml(body, "RemoteControlDoor")
    cmd = _child_text(root, "cmd") if _local(root.tag) == "RemoteControlDoor" else None
    if cmd is None or cmd not in DOOR_COMMANDS.values():
        raise FrameError(f"RemoteControlDoor: unknown or missing cmd {cmd!r}")
    return cmd


def response_status_xml(url: str, code: int, text: str, sub: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><ResponseStatus version="2.0" '
            f'xmlns="http://www.isapi.org/ver20/XMLSchema"><requestURL>{_esc(url)}</requestURL>'
            f"<statusCode>{int(code)}</statusCode><statusString>{_esc(text)}</statusString>"
            f"<subStatusCode>{_esc(sub)}</subStatusCode></ResponseStatus>").encode()


def parse_response_status(body: bytes) -> tuple[int, str, str]:
    """(statusCode, statusString, subStatusCode) from an ISAPI ResponseStatus in XML or JSON."""
    if body.lstrip()[:1] == b"{":
        doc = _json_object(body, "ResponseStatus")
        code = _field(doc, "statusCode", int, "ResponseStatus")
        return code, str(doc.get("statusString", "")), str(doc.get("subStatusCode", ""))
    root = _xml(body, "ResponseStatus")
    code_text = _child_text(root, "statusCode")
    if _local(root.tag) != "ResponseStatus" or code_text is None or not code_text.isdigit():
        raise FrameError("ResponseStatus: missing or non-numeric statusCode")
    return int(code_text), _child_text(root, "statusString") or "", _child_text(root, "subStatusCode") or ""


# Hikvision access-control event codes (devices.md): major 0x05 = event, 0x03 = operation.
EVENT_NAMES: dict[tuple[int, int], str] = {
    (0x05, 0x01): "valid_card", (0x05, 0x06): "no_permission", (0x05, 0x09): "unknown_card",
    (0x05, 0x4B): "face_pass", (0x05, 0x4C): "face_fail", (0x03, 0x400): "remote_open",
}
GRANTED = frozenset({"valid_card", "face_pass", "remote_open"})


@dataclass(frozen=True, slots=True)
class AccessEvent:
    major: int
    minor: int
    name: str
    card_no: str = ""
    door: int = 0
    serial_no: int = -1
    time: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def parse_access_event(body: bytes) -> AccessEvent:
    what = "AccessControllerEvent"
    doc = _json_object(body, what)
    ev = _field(doc, "AccessControllerEvent", dict, what)
    major = _checked(what, check_int, _field(ev, "majorEventType", int, what), f"{what}.majorEventType", hi=0xFFFF)
    minor = _checked(what, check_int, _field(ev, "subEventType", int, what), f"{what}.subEventType", hi=0xFFFF)
    card = _checked(what, check_text, ev.get("cardNo", ""), f"{what}.cardNo", max_len=32)
    door = _checked(what, check_int, ev.get("doorNo", 0), f"{what}.doorNo", hi=255)
    serial = _checked(what, check_int, ev.get("serialNo", -1), f"{what}.serialNo", lo=-1)
    when = _checked(what, check_text, doc.get("dateTime", ""), "dateTime", max_len=64)
    name = EVENT_NAMES.get((major, minor), f"major 0x{major:X} minor 0x{minor:X}")
    return AccessEvent(major, minor, name, card, door, serial, when)


def access_event_json(major: int, minor: int, *, card_no: str = "", door: int = 1, serial_no: int = 0,
                      when: str = "", ip: str = "") -> bytes:
    return json.dumps({"ipAddress": ip, "dateTime": when, "activePostCount": 1, "eventType": "AccessControllerEvent",
                       "eventState": "active", "AccessControllerEvent": {
                           "majorEventType": major, "subEventType": minor, "cardNo": card_no, "doorNo": door,
                           "serialNo": serial_no}}).encode()


async def wait_stored(stored: asyncio.Future[Any], timeout_s: float) -> bool:
    """Wait (bounded) for the agent's commit of a pushed event (see plate_receiver, access_controller).

    True: stored, answer the device "ok". False: not in time, refused, or the agent is stopping;
    answer so that the device keeps the event and re-sends it."""
    try:
        await asyncio.wait_for(asyncio.shield(stored), timeout_s)
    except asyncio.TimeoutError:
        return False
    except asyncio.CancelledError:
        if stored.cancelled():  # the agent is stopping and could not store it
            return False
        raise
    except Exception:
        return False
    return True
