"""Access controller client, Hikvision ISAPI style, over httpx (digest auth by default).

Commands (PUT /ISAPI/AccessControl/RemoteControl/door/<n>, body
``<RemoteControlDoor><cmd>open</cmd></RemoteControlDoor>``): open, close, always_open,
always_close, resume - each refused unless listed in the settings' `allow_commands` (holding a door
open is a security decision, so none is allowed by default).

read() polls GET /ISAPI/AccessControl/AcsWorkStatus?format=json: door<n>_lock (doorLockStatus),
door<n>_state (doorStatus: 1 sleep, 2 remain open, 3 remain closed, 4 normal), door<n>_magnet.

Events (card, face, remote open) are pushed by the controller to our listener (`listen_port`) as
AccessControllerEvent JSON; each becomes an ALARM Reading for `on_event`, its codes decoded to names.
When `on_event` returns an awaitable (the agent's event sink: completes on the buffer's commit) the
controller's answer waits for it (up to `store_timeout_s`; otherwise 503 and the controller re-pushes),
so an acknowledged event is a stored event; a re-push meanwhile waits for the first copy.
The listener binds to loopback unless configured otherwise, and needs `event_senders` (an HTTP
Basic secret and/or source addresses, drivers/push_auth.py): an unauthenticated push gets 401/403
before its body is parsed and is counted (`refused`, `on_refused(reason)`); a body breaking the
boundary rules gets 400 naming the field.

Cards: the controller decides a swipe itself, against its own card list (the simulator does the
same, and the event says valid_card / no_permission / unknown_card); the box only records the
result. `set_allowlist` {version, cards} stores the fleet's versioned card list on the box
(drivers/allowlist_keeper.py: newer versions only, atomic file under `<data_dir>/allowlists/`,
kept across restarts) and reports it on the `allowlist_version` point (read locally, no request).
NOT done: pushing the cards into the controller. Neither the reference (devices.md: door command
and events only) nor the simulator describes a card or user endpoint, so none is invented here;
until one is, the stored list is what the fleet sent, not what the controller enforces (the
point's text says so).

httpx errors are mapped here, at one boundary: timeouts -> DeviceTimeout, transport errors ->
LinkError, a refusal (HTTP 4xx/5xx or ResponseStatus statusCode != 1) -> DeviceException,
an unreadable body -> FrameError.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from core.errors import CommandRefused, DeviceException, DeviceTimeout, FrameError, LinkError
from core.http_listener import HttpServer, Request, Response
from core.reading import Quality, Reading, RecordClass
from drivers import gates
from drivers.access_controller.settings import COMMANDS, AccessControllerSettings
from drivers.allowlist_keeper import VERSION_POINT, AllowListKeeper
from drivers.allowlist_store import AllowListStore
from drivers.push_auth import PushAuth, Refusal

__all__ = ["AccessControllerDriver"]

_STATUS_KEYS = {"lock": "doorLockStatus", "state": "doorStatus", "magnet": "magneticStatus"}


class AccessControllerDriver:
    COMMANDS = COMMANDS  # the kind's commands, declared once in drivers/access_controller/settings.py

    def __init__(self, settings: AccessControllerSettings, *,
                 on_event: Callable[[Reading], Any] | None = None, clock: Callable[[], float] = time.time,
                 transport: httpx.AsyncBaseTransport | None = None,
                 on_refused: Callable[[str], None] | None = None, allowlist: AllowListStore | None = None) -> None:
        self.name = settings.name
        self.settings = settings
        self.on_event = on_event
        self.allowlist = AllowListKeeper(self.name, frozenset(), allowlist, on_change=lambda doc: None, plates=False,
                                         cards=True, note="; kept on the box, not pushed to the controller")
        self._clock = clock
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._listener: HttpServer | None = None
        self.listen_port: int | None = None
        self.events = 0
        self.refused: dict[str, int] = {}
        self._on_refused = on_refused
        self._auth = PushAuth(settings.event_senders) if settings.listen_port is not None else None
        self._seen: OrderedDict[int, None] = OrderedDict()   # event serial numbers already taken
        self._pending: dict[int, asyncio.Future[Any]] = {}   # taken, their commit not confirmed yet

    async def open(self) -> None:
        s = self.settings
        auth = (httpx.DigestAuth if s.auth == "digest" else httpx.BasicAuth)(s.username, s.password)
        self._client = httpx.AsyncClient(base_url=s.url, auth=auth, timeout=s.timeout_s, transport=self._transport)
        if s.listen_port is not None:
            self._listener = HttpServer(self._on_push, max_body=256 << 10, name=f"acs-events-{self.name}",
                                        gate=self._gate)
            try:
                await self._listener.start(s.listen_host, s.listen_port)
            except OSError as exc:
                await self._client.aclose()
                raise LinkError(f"{self.name}: cannot listen for events on port {s.listen_port}: {exc}") from exc
            self.listen_port = self._listener.port

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self._client is not None:
            with contextlib.suppress(httpx.HTTPError, OSError):
                await self._client.aclose()
            self._client = None

    async def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        if self._client is None:
            raise LinkError(f"{self.name}: not open")
        try:
            resp = await self._client.request(method, path, **kw)
        except httpx.TimeoutException as exc:
            raise DeviceTimeout(f"{self.name}: {method} {path}: no answer within {self.settings.timeout_s}s") from exc
        except httpx.HTTPError as exc:  # connect refused, reset, protocol errors
            raise LinkError(f"{self.name}: {method} {path}: {exc!r}") from exc
        if resp.status_code == 401:
            raise DeviceException(f"{self.name}: {method} {path}: authentication refused", 401)
        if resp.status_code >= 400:
            try:
                code, text, sub = gates.parse_response_status(resp.content)
                detail = f"{text} ({sub})"
            except FrameError:
                code, detail = resp.status_code, resp.reason_phrase
            raise DeviceException(f"{self.name}: {method} {path}: HTTP {resp.status_code}: {detail}", code)
        return resp

    # --- Driver protocol ---------------------------------------------------------------------
    async def read(self, points: Sequence[str] | None = None) -> list[Reading]:
        wanted = list(points) if points is not None else [
            f"door{d}_{k}" for d in self.settings.doors for k in _STATUS_KEYS]
        specs = []
        local = [self.allowlist.reading(self._clock()) for p in wanted if p == VERSION_POINT]  # box-side, no request
        wanted = [p for p in wanted if p != VERSION_POINT]
        if not wanted:
            return local
        for point in wanted:
            door, _, kind = point.removeprefix("door").partition("_")
            if kind not in _STATUS_KEYS or not door.isdigit() or not point.startswith("door"):
                raise CommandRefused(f"{self.name}: unknown point {point!r}; expected door<n>_lock/state/magnet")
            specs.append((point, int(door) - 1, _STATUS_KEYS[kind]))
        resp = await self._request("GET", "/ISAPI/AccessControl/AcsWorkStatus", params={"format": "json"})
        try:
            status = json.loads(resp.content)["AcsWorkStatus"]
            if not isinstance(status, dict):
                raise TypeError("AcsWorkStatus is not an object")
        except (ValueError, KeyError, TypeError) as exc:
            raise FrameError(f"{self.name}: AcsWorkStatus unreadable: {exc!r}") from None
        ts = self._clock()
        out = []
        for point, i, key in specs:
            values = status.get(key)
            if not isinstance(values, list) or not 0 <= i < len(values) or not isinstance(values[i], int):
                out.append(Reading(self.name, point, None, "", ts, Quality.MISSING, text=f"{key} not reported"))
            else:
                out.append(Reading(self.name, point, float(values[i]), "", ts))
        return out + local

    async def write(self, command: str, args: Mapping[str, Any]) -> None:
        if command not in COMMANDS:
            raise CommandRefused(f"{self.name}: unknown command {command!r}; known: {', '.join(COMMANDS)}")
        if command not in self.settings.allow_commands:
            raise CommandRefused(f"{self.name}: {command} is not allowed on this controller")
        if command == "set_allowlist":  # stored on the box; the controller is not asked (see the module doc)
            await self.allowlist.replace(args)
            return
        door = args.get("door", self.settings.doors[0])
        if door not in self.settings.doors or isinstance(door, bool):
            raise CommandRefused(f"{self.name}: door {door!r} is not one of {self.settings.doors}")
        path = f"/ISAPI/AccessControl/RemoteControl/door/{door}"
        resp = await self._request("PUT", path, content=gates.remote_control_xml(gates.DOOR_COMMANDS[command]),
                                   headers={"Content-Type": "application/xml"})
        code, text, sub = gates.parse_response_status(resp.content)
        if code != 1:
            raise DeviceException(f"{self.name}: {command} door {door} refused: {text} ({sub})", code)

    async def _stored(self, stored: asyncio.Future[Any]) -> bool:
        return await gates.wait_stored(stored, self.settings.store_timeout_s)

    def _settled(self, serial: int, f: asyncio.Future[Any]) -> None:
        self._pending.pop(serial, None)
        if not f.cancelled() and f.exception() is None:
            self._seen[serial] = None
            while len(self._seen) > 10_000:
                self._seen.popitem(last=False)

    def _refuse(self, status: int, reason: str, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        if self._on_refused is not None:
            self._on_refused(reason)
        return Response(status, gates.compact_json({"error": reason, "detail": message}).encode("utf-8", "replace"),
                        headers=headers)

    def _gate(self, headers: dict[str, str], peer: str) -> Response | None:
        """Before the body is read: refuse an unauthenticated sender."""
        who = self._auth.authenticate(headers, peer) if self._auth is not None else frozenset()
        return self._refuse(who.status, who.reason, who.message, who.headers) if isinstance(who, Refusal) else None

    async def _on_push(self, req: Request) -> Response:
        if req.method != "POST":
            return Response(405)
        who = self._auth.authenticate(req.headers, req.peer) if self._auth is not None else frozenset()
        if isinstance(who, Refusal):
            return self._refuse(who.status, who.reason, who.message, who.headers)
        try:
            event = gates.parse_access_event(req.body)
        except FrameError as exc:
            return self._refuse(400, "bad_event", str(exc))
        ok = b'{"statusCode":1,"statusString":"OK"}'
        later = b'{"statusCode":0,"statusString":"not stored yet, re-send"}'
        if event.serial_no >= 0 and event.serial_no in self._seen:
            return Response(200, ok)  # a re-push of an event we already took
        if event.serial_no >= 0 and event.serial_no in self._pending:  # first copy still being stored
            return Response(200, ok) if await self._stored(self._pending[event.serial_no]) else Response(503, later)
        if self.on_event is not None:
            text = gates.compact_json({"event": event.name, "major": event.major, "minor": event.minor,
                                       "card": event.card_no, "door": event.door, "serial": event.serial_no,
                                       "time": event.time})
            stored = self.on_event(Reading(self.name, "access_event", 1.0 if event.name in gates.GRANTED else 0.0,
                                           "", self._clock(), cls=RecordClass.ALARM, text=text))
            self.events += 1
            if inspect.isawaitable(stored):  # the controller's answer waits for the buffer's commit
                stored = asyncio.ensure_future(stored)
                if event.serial_no >= 0:
                    self._pending[event.serial_no] = stored
                    stored.add_done_callback(functools.partial(self._settled, event.serial_no))
                return Response(200, ok) if await self._stored(stored) else Response(503, later)
        else:
            self.events += 1
        if event.serial_no >= 0:
            self._seen[event.serial_no] = None
            while len(self._seen) > 10_000:
                self._seen.popitem(last=False)
        return Response(200, ok)
