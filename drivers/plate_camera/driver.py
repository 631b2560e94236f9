"""Plate-camera receiver: the HTTP endpoint Vzenith-style cameras push plate results and heartbeats to.

Each push is decided locally (allow-list, deny-list, prefix rules; see drivers/gates.py) and
answered at once: ``info: "ok"`` opens the barrier, anything else does not. Every *new* event
(first time its (serialno, plateid) is seen) becomes one ALARM Reading handed to `on_event`, whose
text is the compact JSON of the event and the decision. Re-sends - offline records pushed twice, a
reply the camera never got - are answered with the same decision and produce no second Reading.

The camera only gets its acknowledgement after the event is stored: `on_event` may return an
awaitable (the agent's event sink returns one that completes on the buffer's commit), which is
awaited for up to `store_timeout_s`. If the pipeline refuses the reading (raises) or the commit
does not come in time, the camera gets a 503 and re-sends later, so a gate event is never lost
between the camera and the buffer. A re-send arriving while the first copy is still on its way
to the buffer waits for that copy (one Reading, the same answer).

Who may push (drivers/push_auth.py): every request - plate push or heartbeat - must first prove a
configured camera (HTTP Basic secret and/or source address), else 401/403 before the body is
parsed; then the serial in the body must be one the request proved, else 403 ("identity_mismatch"):
a forged serial never reaches the gate decision. Each refusal is counted (`refused`, and
`on_refused(reason)` for the agent's metrics). A body that breaks the boundary rules (gates'
parsers: clean text, caps, ranges) gets 400 naming the field. The listener binds to loopback
unless configured otherwise.

Allow-list (drivers/allowlist_keeper.py): the plates that open are the config's `allow_list` until
a versioned document is stored under the box's data directory (`<data_dir>/allowlists/<device>.json`),
which then replaces it, across restarts. Commands: `allow_plate` / `revoke_plate` {plate} (version
+ 1) and `set_allowlist` {version, plates} (the whole list, only if newer than the running version;
a plate camera's document has no cards). Each is on disk before the command returns. The running
version is the `allowlist_version` point (0: the config list). Decisions never need the network:
the list is in memory and on the box's disk.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from core.errors import CommandRefused, FrameError, LinkError
from core.http_listener import HttpServer, Request, Response
from core.reading import Quality, Reading, RecordClass
from drivers import gates
from drivers.allowlist import AllowList
from drivers.allowlist_keeper import VERSION_POINT, AllowListKeeper
from drivers.allowlist_store import AllowListStore
from drivers.plate_camera.settings import COMMANDS, PlateCameraSettings
from drivers.push_auth import PushAuth, Refusal

__all__ = ["PlateReceiverDriver"]

log = logging.getLogger(__name__)


class PlateReceiverDriver:
    COMMANDS = COMMANDS  # the kind's commands, declared once in drivers/plate_camera/settings.py

    def __init__(self, settings: PlateCameraSettings, on_event: Callable[[Reading], Any], *,
                 clock: Callable[[], float] = time.time, on_refused: Callable[[str], None] | None = None,
                 allowlist: AllowListStore | None = None) -> None:
        self.name = settings.name
        self.settings = settings
        self.rules = settings.gate_rules()  # the allow-list keeper replaces `allow`, never the settings
        # loads the stored document (if any) now, before anything is decided; None: memory only
        self.allowlist = AllowListKeeper(self.name, settings.allow_list, allowlist, on_change=self._use_allowlist)
        self.on_event = on_event
        self._clock = clock
        self._dedup = gates.Deduplicator(settings.dedup_capacity)
        self._pending: dict[tuple[str, int], tuple[gates.Decision, asyncio.Future[Any]]] = {}
        self._server = HttpServer(self._handle, max_body=settings.max_body, name=f"plate-receiver-{self.name}",
                                  gate=self._gate)
        self.last_seen: dict[str, float] = {}
        self.events = 0
        self.duplicates = 0
        self.rejected_bodies = 0
        self.refused: dict[str, int] = {}
        self._auth = PushAuth(settings.cameras)
        self._serials = frozenset(c.identity for c in settings.cameras)
        self._on_refused = on_refused
        self.port = settings.listen_port

    def _use_allowlist(self, doc: AllowList) -> None:
        self.rules = replace(self.rules, allow=frozenset(doc.plates))

    async def open(self) -> None:
        try:
            await self._server.start(self.settings.listen_host, self.settings.listen_port)
        except OSError as exc:
            raise LinkError(f"{self.name}: cannot listen on {self.settings.listen_host}:{self.settings.listen_port}: "
                            f"{exc}") from exc
        self.port = self._server.port

    async def close(self) -> None:
        await self._server.stop()

    def _refuse(self, status: int, reason: str, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        if self._on_refused is not None:
            self._on_refused(reason)
        if reason != "bad_event" and sum(v for k, v in self.refused.items() if k != "bad_event") == 1:
            log.warning("%s: refused a push (%s): %s", self.name, reason, message)
        return Response(status, gates.compact_json({"error": reason, "detail": message}).encode("utf-8", "replace"),
                        headers=headers)

    def _gate(self, headers: dict[str, str], peer: str) -> Response | None:
        """Before the body is read: refuse a sender that proves no camera."""
        who = self._auth.authenticate(headers, peer)
        return self._refuse(who.status, who.reason, who.message, who.headers) if isinstance(who, Refusal) else None

    async def _handle(self, req: Request) -> Response:
        if req.method != "POST":
            return Response(405, b'{"error":"POST only"}')
        who = self._auth.authenticate(req.headers, req.peer)  # again: the handler is also called directly
        if isinstance(who, Refusal):
            return self._refuse(who.status, who.reason, who.message, who.headers)
        ctype = req.headers.get("content-type", "")
        try:
            if ctype.lower().startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
                beat = gates.parse_heartbeat(req.body, ctype)
                if beat.serialno not in who:
                    return self._refuse(403, "identity_mismatch", "heartbeat serialno is not the authenticated camera")
                self.last_seen[beat.serialno] = self._clock()
                return Response(200, b"{}")
            event = gates.parse_plate_push(req.body)
        except FrameError as exc:
            self.rejected_bodies += 1
            return self._refuse(400, "bad_event", str(exc))
        if event.serialno not in who:
            return self._refuse(403, "identity_mismatch", "serialno is not the authenticated camera")
        return await self._plate(event)

    async def _plate(self, event: gates.PlateEvent) -> Response:
        now = self._clock()
        key = (event.serialno, event.plate_id)
        decision = self._dedup.get(key) if event.plate_id >= 0 else None
        if decision is None and key in self._pending:  # the first copy is still being stored
            pending_decision, stored = self._pending[key]
            if not await self._stored(stored):
                self.duplicates += 1
                return Response(503, b'{"error":"event not stored yet; re-send"}')
            decision = pending_decision
        if decision is not None:
            self.duplicates += 1
            return Response(200, gates.plate_reply(event, decision, relay=self.settings.relay))
        decision = gates.decide(event, self.rules)
        self.last_seen[event.serialno] = now
        text = gates.compact_json({
            "camera": event.serialno, "plate": event.plate, "plateid": event.plate_id,
            "confidence": event.confidence, "offline": event.offline, "camera_ts": event.ts,
            "open": decision.open, "reason": decision.reason,
        })
        reading = Reading(self.name, "plate", 1.0 if decision.open else 0.0, "", now,
                          cls=RecordClass.ALARM, text=text)
        stored = self.on_event(reading)  # raises -> 500 -> the camera re-sends; nothing remembered
        self.events += 1
        if inspect.isawaitable(stored):
            stored = asyncio.ensure_future(stored)
            if event.plate_id >= 0:
                self._pending[key] = (decision, stored)
                stored.add_done_callback(lambda f, k=key, d=decision: self._settled(k, d, f))
            if not await self._stored(stored):
                return Response(503, b'{"error":"event not stored yet; re-send"}')
        elif event.plate_id >= 0:
            self._dedup.remember(key, decision)
        return Response(200, gates.plate_reply(event, decision, relay=self.settings.relay))

    async def _stored(self, stored: asyncio.Future[Any]) -> bool:
        return await gates.wait_stored(stored, self.settings.store_timeout_s)

    def _settled(self, key: tuple[str, int], decision: gates.Decision, f: asyncio.Future[Any]) -> None:
        self._pending.pop(key, None)
        if not f.cancelled() and f.exception() is None:
            self._dedup.remember(key, decision)

    # --- Driver protocol ---------------------------------------------------------------------
    async def read(self, points: Sequence[str] | None = None) -> list[Reading]:
        now = self._clock()
        cameras = sorted(self._serials | set(self.last_seen))
        wanted = list(points) if points is not None else (
            [f"online.{c}" for c in cameras] + ["events_total", "duplicates_total", VERSION_POINT])
        out = []
        for point in wanted:
            if point == "events_total":
                out.append(Reading(self.name, point, float(self.events), "", now))
            elif point == "duplicates_total":
                out.append(Reading(self.name, point, float(self.duplicates), "", now))
            elif point == VERSION_POINT:
                out.append(self.allowlist.reading(now))
            elif point.startswith("online."):
                seen = self.last_seen.get(point[7:])
                if seen is None:
                    out.append(Reading(self.name, point, 0.0, "", now, text="never heard from"))
                else:
                    age = now - seen
                    online = age <= self.settings.heartbeat_timeout_s
                    out.append(Reading(self.name, point, 1.0 if online else 0.0, "", now,
                                       text=f"last seen {age:.1f}s ago"))
            else:
                out.append(Reading(self.name, point, None, "", now, Quality.COMM_FAILURE, text="unknown point"))
        return out

    async def write(self, command: str, args: Mapping[str, Any]) -> None:
        if command not in self.COMMANDS:
            raise CommandRefused(f"{self.name}: unknown command {command!r}; known: {', '.join(self.COMMANDS)}")
        if command == "set_allowlist":
            await self.allowlist.replace(args)
            return
        plate = args.get("plate")
        if not isinstance(plate, str) or not gates.normalise_plate(plate):
            raise CommandRefused(f"{self.name}: {command} needs a non-empty 'plate', got {plate!r}")
        await self.allowlist.change_plate(plate, allow=command == "allow_plate")
