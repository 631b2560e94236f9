"""An access controller speaking Hikvision-style ISAPI over HTTP with digest authentication.

Serves PUT /ISAPI/AccessControl/RemoteControl/door/<n> (open, close, alwaysOpen, alwaysClose,
resume) and GET /ISAPI/AccessControl/AcsWorkStatus?format=json, tracking each door: lock status
(0 locked, 1 unlocked), door status (1 sleep, 2 remain open, 3 remain closed, 4 normal) and the
magnetic contact. A momentary "open" unlocks for `open_s` seconds, then relocks.

Card swipes and face checks (`swipe`, `face`) are decided against the controller's own lists and
pushed as AccessControllerEvent JSON to `event_url` (the agent's listener), with the major/minor
codes of devices.md; a remote open also produces an event (major 0x03, minor 0x400).
Requests without valid digest credentials get 401 with a fresh challenge, as the device does.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from core.errors import FrameError
from core.http_listener import HttpServer, Request, Response
from drivers import gates
from drivers.access_controller import wiegand

__all__ = ["AccessControllerSim", "Door"]

_DOOR_PATH = re.compile(r"^/ISAPI/AccessControl/RemoteControl/door/(\d+)$")
_AUTH_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]*))')


@dataclass
class Door:
    lock: int = 0          # doorLockStatus: 0 locked, 1 unlocked
    state: int = 4         # doorStatus: 4 normal (controlled)
    relock_at: float | None = None
    commands: list[str] = field(default_factory=list)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


class AccessControllerSim:
    REALM = "DS-K1T671M"

    def __init__(self, *, username: str = "admin", password: str = "hik12345", doors: int = 2,
                 cards: frozenset[str] = frozenset(), no_permission: frozenset[str] = frozenset(),
                 event_url: str | None = None, open_s: float = 5.0, clock: Callable[[], float] = time.time) -> None:
        self.username, self.password = username, password
        self.doors = {d: Door() for d in range(1, doors + 1)}
        self.cards, self.no_permission = cards, no_permission
        self.event_url = event_url
        self.open_s = open_s
        self.clock = clock
        self.serial = 0
        self.pushed: list[bytes] = []
        self.bad_frames = 0           # Wiegand frames dropped for bad parity or length
        self.auth_failures = 0
        self._nonces: set[str] = set()
        self._server = HttpServer(self._handle, name="acs-sim")
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> AccessControllerSim:
        await self._server.start(host, port)
        self.port = self._server.port
        return self

    async def stop(self) -> None:
        await self._server.stop()

    async def __aenter__(self) -> AccessControllerSim:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- digest auth ---------------------------------------------------------------------------
    def _challenge(self) -> Response:
        nonce = secrets.token_hex(16)
        self._nonces.add(nonce)
        header = f'Digest realm="{self.REALM}", qop="auth", nonce="{nonce}", algorithm=MD5'
        body = gates.response_status_xml("", 4, "Invalid Operation", "notLogin")
        return Response(401, body, "application/xml", (("WWW-Authenticate", header),))

    def _authorised(self, req: Request) -> bool:
        header = req.headers.get("authorization", "")
        if not header.startswith("Digest "):
            return False
        p = {m.group(1): m.group(2) if m.group(2) is not None else m.group(3) for m in _AUTH_PARAM.finditer(header)}
        if p.get("username") != self.username or p.get("nonce") not in self._nonces or p.get("qop") != "auth":
            return False
        ha1 = _md5(f"{self.username}:{self.REALM}:{self.password}")
        ha2 = _md5(f"{req.method}:{p.get('uri', '')}")
        want = _md5(f"{ha1}:{p['nonce']}:{p.get('nc', '')}:{p.get('cnonce', '')}:auth:{ha2}")
        return secrets.compare_digest(want, p.get("response", ""))

    # --- ISAPI ---------------------------------------------------------------------------------
    def _tick(self) -> None:
        now = self.clock()
        for door in self.doors.values():
            if door.relock_at is not None and now >= door.relock_at:
                door.lock, door.relock_at = 0, None

    async def _handle(self, req: Request) -> Response:
        if not self._authorised(req):
            self.auth_failures += "authorization" in req.headers
            return self._challenge()
        self._tick()
        if req.method == "GET" and req.path == "/ISAPI/AccessControl/AcsWorkStatus":
            doors = [self.doors[d] for d in sorted(self.doors)]
            return Response(200, gates.compact_json({"AcsWorkStatus": {
                "doorLockStatus": [d.lock for d in doors], "doorStatus": [d.state for d in doors],
                "magneticStatus": [1 if d.lock else 0 for d in doors]}}).encode())
        m = _DOOR_PATH.match(req.path)
        if m is None:
            return Response(404, gates.response_status_xml(req.path, 4, "Invalid Operation", "notSupport"),
                            "application/xml")
        if req.method != "PUT":
            return Response(405, gates.response_status_xml(req.path, 4, "Invalid Operation", "methodNotAllowed"),
                            "application/xml")
        try:
            cmd = gates.parse_remote_control(req.body)
        except FrameError:
            return Response(400, gates.response_status_xml(req.path, 5, "Invalid XML Format", "badXmlFormat"),
                            "application/xml")
        door = self.doors.get(int(m.group(1)))
        if door is None:
            return Response(400, gates.response_status_xml(req.path, 6, "Invalid XML Content", "badParameters"),
                            "application/xml")
        self._apply(door, cmd)
        if cmd == "open":
            await self._push(0x03, 0x400, "", int(m.group(1)))
        return Response(200, gates.response_status_xml(req.path, 1, "OK", "ok"), "application/xml")

    def _apply(self, door: Door, cmd: str) -> None:
        door.commands.append(cmd)
        if cmd == "open":
            door.lock, door.relock_at = 1, (None if door.state == 2 else self.clock() + self.open_s)
        elif cmd == "close":
            door.lock, door.relock_at = (1 if door.state == 2 else 0), None
        elif cmd == "alwaysOpen":
            door.state, door.lock, door.relock_at = 2, 1, None
        elif cmd == "alwaysClose":
            door.state, door.lock, door.relock_at = 3, 0, None
        elif cmd == "resume":
            door.state, door.lock, door.relock_at = 4, 0, None

    # --- events --------------------------------------------------------------------------------
    async def _push(self, major: int, minor: int, card: str, door: int) -> None:
        self.serial += 1
        body = gates.access_event_json(major, minor, card_no=card, door=door, serial_no=self.serial,
                                       when=time.strftime("%Y-%m-%dT%H:%M:%S+08:00",
                                                          time.gmtime(self.clock() + 8 * 3600)))
        self.pushed.append(body)
        if self.event_url:
            # the listener may be down: the event stays in `pushed` (the device's own log)
            async with httpx.AsyncClient(timeout=2.0) as client:
                with contextlib.suppress(httpx.HTTPError):
                    await client.post(self.event_url, content=body, headers={"Content-Type": "application/json"})

    async def repush(self, index: int = -1) -> None:
        """Send an already-pushed event again (devices retry when unsure it arrived)."""
        if self.event_url:
            async with httpx.AsyncClient(timeout=2.0) as client:
                await client.post(self.event_url, content=self.pushed[index],
                                  headers={"Content-Type": "application/json"})

    async def swipe(self, card: str, door: int = 1) -> str:
        """A card at the reader: valid (and the door unlocks), no permission, or unknown."""
        if card in self.cards:
            self._apply(self.doors[door], "open")
            minor = 0x01
        else:
            minor = 0x06 if card in self.no_permission else 0x09
        await self._push(0x05, minor, card, door)
        return gates.EVENT_NAMES[(0x05, minor)]

    async def wiegand(self, frame: str, door: int = 1) -> str | None:
        """A reader on the controller's Wiegand input pulses `frame` (26- or 34-bit, '0'/'1' text). The
        controller checks the parity and reports the card as the decimal of its facility and card
        bits, as access controllers do; a frame with bad parity is dropped (no event), as they do.
        Returns the event's name, or None for a dropped frame."""
        try:
            cred = wiegand.decode(frame)
        except wiegand.WiegandError:
            self.bad_frames += 1
            return None
        return await self.swipe(str(cred.facility << 16 | cred.card), door)

    async def face(self, matched: bool, door: int = 1) -> str:
        if matched:
            self._apply(self.doors[door], "open")
        minor = 0x4B if matched else 0x4C
        await self._push(0x05, minor, "", door)
        return gates.EVENT_NAMES[(0x05, minor)]
