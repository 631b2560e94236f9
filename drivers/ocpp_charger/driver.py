"""The box as OCPP 1.6J Central System: a websocket server the site's chargers connect to.

    ws://<listen>/<path>/<charge point id>     subprotocol "ocpp1.6"

Before the handshake (`_gate`) the charge point id in the URL must be a configured charger (else
HTTP 404) and the request must prove that charger (drivers/push_auth.py: HTTP Basic with the id as
user name, OCPP 1.6 security profile 1, and/or a configured source address; else 401/403). A
handshake without the ocpp1.6 subprotocol is closed (1002). Every refusal is counted (`refused`,
`on_refused(reason)`). A charger that connects again replaces its older connection.

Each connection runs one `Session` (drivers/ocpp_charger/session.py); its readings go to
`on_event`, and a request is answered once they are stored. The poller's `read()` reports per
charger whether it is connected and each connector's last status; `write()` sends the remote
commands (remote_start, remote_stop, change_availability, reset, unlock_connector): a charger that
rejects one raises CommandRefused with its answer, one that is not connected LinkError, one that
does not answer within command_timeout_s DeviceTimeout.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote

from ocpp.exceptions import InternalError, OCPPError
from ocpp.v16 import call
from ocpp.v16.enums import AuthorizationStatus, MessageTrigger
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from core.errors import CommandRefused, DeviceTimeout, DriverError, LinkError, StorageError
from core.reading import Quality, Reading, RecordClass
from drivers.ocpp_charger import codec
from drivers.ocpp_charger.session import Session
from drivers.ocpp_charger.settings import COMMANDS, ID_TAG_MAX, OcppChargerSettings
from drivers.ocpp_charger.transactions import ID_MAX, TransactionStore
from drivers.push_auth import PushAuth, Refusal

__all__ = ["OcppChargerDriver"]

log = logging.getLogger(__name__)
SUBPROTOCOL = Subprotocol("ocpp1.6")
#: a charger that reconnects without a BootNotification (the box restarted, the charger did not) is
#: asked for its connector statuses this long after connecting
REFRESH_AFTER_S = 2.0


def _select(connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """ocpp1.6 when offered; else the handshake goes on without one and the handler closes it
    (OCPP-J 1.6 section 3.1.2: the server replies without the header, and closes), counted."""
    return SUBPROTOCOL if SUBPROTOCOL in offered else None


class _Wire:
    """The connection as the `ocpp` package sees it (recv/send), counting every CALLERROR sent."""

    def __init__(self, ws: ServerConnection, site: OcppChargerDriver, cp_id: str) -> None:
        self.ws, self.site, self.cp_id = ws, site, cp_id

    async def recv(self) -> str | bytes:
        return await self.ws.recv()

    async def send(self, message: str) -> None:
        if message.startswith("[4,"):
            try:
                code = str(json.loads(message)[2])
            except (ValueError, IndexError):
                code = "?"
            self.site.callerror(self.cp_id, code)
        await self.ws.send(message)


class OcppChargerDriver:
    COMMANDS = COMMANDS

    def __init__(self, settings: OcppChargerSettings, on_event: Callable[[Reading], Any], *,
                 clock: Callable[[], float] = time.time, on_refused: Callable[[str], None] | None = None) -> None:
        self.name = settings.name
        self.settings = settings
        self.on_event = on_event
        self.clock = clock
        self._on_refused = on_refused
        self._auth = PushAuth([c.credential for c in settings.chargers])
        self.transactions = TransactionStore(settings.state_file, clock=clock)
        self.sessions: dict[str, Session] = {}
        self.last_seen: dict[str, float] = {}
        self.status: dict[tuple[str, int], tuple[str, str, float]] = {}
        self.callerrors: dict[str, int] = {}   # CALLERRORs sent, by code
        self.dropped: dict[str, int] = {}      # frames that could not even be answered, by reason
        self.refused: dict[str, int] = {}      # connections refused, by reason
        self._server: Any = None
        self.port = settings.listen_port

    # --- lifecycle -----------------------------------------------------------------------------
    async def open(self) -> None:
        try:
            await self.transactions.load()
        except StorageError as exc:
            raise DriverError(f"{self.name}: {exc}") from exc
        try:
            self._server = await serve(
                self._handler, self.settings.listen_host, self.settings.listen_port, subprotocols=[SUBPROTOCOL],
                select_subprotocol=_select, process_request=self._gate, max_size=self.settings.max_message_bytes,
                ping_interval=30,
                ping_timeout=30, server_header=None, logger=logging.getLogger("drivers.ocpp_charger.ws"))
        except OSError as exc:
            raise LinkError(f"{self.name}: cannot listen on {self.settings.listen_host}:"
                            f"{self.settings.listen_port}: {exc}") from exc
        self.port = next(iter(self._server.sockets)).getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    # --- who may connect -------------------------------------------------------------------------
    def _cp_id(self, path: str) -> str | None:
        path = path.split("?", 1)[0]
        prefix = self.settings.path + "/"
        if not path.startswith(prefix) or "/" in path[len(prefix):]:
            return None
        cp_id = unquote(path[len(prefix):])
        return cp_id if self.settings.charger(cp_id) is not None else None

    def _refuse(self, connection: ServerConnection, status: int, reason: str, message: str) -> Response:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        if self._on_refused is not None:
            self._on_refused(reason)
        if sum(self.refused.values()) in (1, 10, 100, 1000):
            log.warning("%s: refused a charger connection (%s): %s", self.name, reason, message)
        response = connection.respond(status, message + "\n")
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Basic realm="quanedge-ocpp", charset="UTF-8"'
        return response

    def _gate(self, connection: ServerConnection, request: Request) -> Response | None:
        cp_id = self._cp_id(request.path)
        if cp_id is None:
            return self._refuse(connection, 404, "unknown_charger",
                                f"no charger is configured at {request.path[:100]!r}")
        headers = {k.lower(): v for k, v in request.headers.raw_items()}
        addr = connection.remote_address
        who = self._auth.authenticate(headers, f"{addr[0]}:{addr[1]}" if addr else "")
        if isinstance(who, Refusal):
            return self._refuse(connection, who.status, who.reason, who.message)
        if cp_id not in who:
            return self._refuse(connection, 401, "identity_mismatch", f"these credentials are not charger {cp_id!r}'s")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        cp_id = self._cp_id(ws.request.path) if ws.request is not None else None
        charger = self.settings.charger(cp_id) if cp_id is not None else None
        if charger is None or cp_id is None:  # _gate refused it already; only a direct call gets here
            await ws.close(1008, "unknown charger")
            return
        if ws.subprotocol != SUBPROTOCOL:
            self.refused["subprotocol"] = self.refused.get("subprotocol", 0) + 1
            if self._on_refused is not None:
                self._on_refused("subprotocol")
            await ws.close(1002, "the ocpp1.6 subprotocol is required")
            return
        old = self.sessions.get(cp_id)
        if old is not None:
            log.info("%s: charger %s connected again; closing its older connection", self.name, cp_id)
            await old._connection.ws.close(1000, "replaced by a newer connection")
        session = Session(cp_id, _Wire(ws, self, cp_id), self, charger.connectors)
        self.sessions[cp_id] = session
        self.seen(cp_id)
        refresh = asyncio.create_task(self._refresh(session), name=f"ocpp-refresh-{cp_id}")
        try:
            await session.start()
        except ConnectionClosed:
            pass
        finally:
            refresh.cancel()
            await asyncio.gather(refresh, return_exceptions=True)
            if self.sessions.get(cp_id) is session:
                del self.sessions[cp_id]

    async def _refresh(self, session: Session) -> None:
        await asyncio.sleep(REFRESH_AFTER_S)
        if session.booted or session.statuses_seen:
            return
        try:
            await session.call(call.TriggerMessage(requested_message=MessageTrigger.status_notification),
                               suppress=True)
        except (asyncio.TimeoutError, ConnectionClosed, OCPPError) as exc:
            log.info("%s: could not ask %s for its status: %r", self.name, session.id, exc)

    # --- what sessions report --------------------------------------------------------------------
    def seen(self, cp_id: str) -> None:
        self.last_seen[cp_id] = self.clock()

    def callerror(self, cp_id: str, code: str) -> None:
        self.callerrors[code] = self.callerrors.get(code, 0) + 1
        if sum(self.callerrors.values()) in (1, 10, 100, 1000):
            log.warning("%s: answered a request of %s with CALLERROR %s (%d so far)", self.name, cp_id, code,
                        sum(self.callerrors.values()))

    def junk(self, cp_id: str, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def connector_status(self, cp_id: str, connector: int, status: str, error_code: str, ts: float) -> None:
        self.status[(cp_id, connector)] = (status, error_code, ts)

    def authorize(self, id_tag: str) -> AuthorizationStatus:
        if self.settings.accept_any_id_tag or id_tag.upper() in self.settings.id_tags:
            return AuthorizationStatus.accepted
        return AuthorizationStatus.invalid

    async def store(self, readings: list[Reading]) -> None:
        """Hand readings to on_event and wait until all are stored; else InternalError (re-send)."""
        futures = []
        for r in readings:
            try:
                stored = self.on_event(r)
            except Exception as exc:
                raise InternalError(f"the box cannot take this now ({exc}); re-send later") from None
            if inspect.isawaitable(stored):
                futures.append(asyncio.ensure_future(stored))
        if not futures:
            return
        done, pending = await asyncio.wait(futures, timeout=self.settings.store_timeout_s)
        for f in pending:  # still the sink's; only make sure a late failure is not reported as unretrieved
            f.add_done_callback(lambda f: f.cancelled() or f.exception())
        if pending or any(f.cancelled() or f.exception() is not None for f in done):
            raise InternalError("the box could not store this in time; re-send later")

    # --- Driver protocol: read -------------------------------------------------------------------
    def _point(self, point: str, now: float) -> Reading:
        def r(value: float | None, unit: str = "", q: Quality = Quality.GOOD, text: str | None = None) -> Reading:
            return Reading(self.name, point, value, unit, now, q, RecordClass.ROUTINE, text)

        if point == "callerrors_total":
            return r(float(sum(self.callerrors.values())),
                     text=json.dumps(self.callerrors) if self.callerrors else None)
        if point == "refused_total":
            return r(float(sum(self.refused.values())), text=json.dumps(self.refused) if self.refused else None)
        if point == "dropped_total":
            return r(float(sum(self.dropped.values())), text=json.dumps(self.dropped) if self.dropped else None)
        if point == "transactions_open":
            return r(float(len(self.transactions.open)))
        cp_id, _, rest = point.partition(".")
        if self.settings.charger(cp_id) is not None:
            seen = self.last_seen.get(cp_id)
            ago = "never" if seen is None else f"{now - seen:.0f}s ago"
            if rest == "online":
                online = cp_id in self.sessions
                return r(1.0 if online else 0.0,
                         text=f"{'connected' if online else 'not connected'}; last message {ago}")
            if rest.startswith("c") and rest.endswith((".status", ".error")):
                connector, _, what = rest[1:].partition(".")
                known = self.status.get((cp_id, int(connector))) if connector.isdigit() else None
                if known is None:
                    return r(None, q=Quality.MISSING, text="no status reported yet")
                status, error, ts = known
                value = codec.STATUSES.index(status) if what == "status" else codec.ERROR_CODES.index(error)
                return r(float(value), text=f"{status} ({error}) at {codec.format_time(ts)}")
        return r(None, q=Quality.COMM_FAILURE, text="unknown point")

    def default_points(self) -> list[str]:
        out = []
        for c in self.settings.chargers:
            out.append(f"{c.id}.online")
            out += [f"{c.id}.c{n}.status" for n in range(c.connectors + 1)]
        return out + ["transactions_open", "callerrors_total", "dropped_total", "refused_total"]

    async def read(self, points: Sequence[str] | None = None) -> list[Reading]:
        now = self.clock()
        return [self._point(p, now) for p in (points if points is not None else self.default_points())]

    # --- Driver protocol: write (remote commands) ------------------------------------------------
    async def write(self, command: str, args: Mapping[str, Any]) -> None:
        from drivers.ocpp_charger.commands import build_call, check_answer

        if command not in COMMANDS:
            raise CommandRefused(f"{self.name}: unknown command {command!r}; known: {', '.join(COMMANDS)}")
        if command not in self.settings.allow_commands:
            raise CommandRefused(f"{self.name}: {command} is not in this device's allow_commands")
        cp_id, payload = build_call(self, command, dict(args), id_tag_max=ID_TAG_MAX, tx_max=ID_MAX)
        session = self.sessions.get(cp_id)
        if session is None:
            raise LinkError(f"{self.name}: charger {cp_id!r} is not connected; {command} not sent")
        sent = asyncio.ensure_future(session.call(payload, suppress=False))
        closed = asyncio.ensure_future(session._connection.ws.wait_closed())
        try:
            done, _ = await asyncio.wait({sent, closed}, timeout=self.settings.command_timeout_s + 1,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
        if sent not in done:
            sent.cancel()
            if closed in done:
                raise LinkError(f"{self.name}: charger {cp_id!r} disconnected before answering {command}")
            raise DeviceTimeout(f"{self.name}: charger {cp_id!r} did not answer {command} within "
                                f"{self.settings.command_timeout_s}s")
        try:
            answer = sent.result()
        except asyncio.TimeoutError:
            raise DeviceTimeout(f"{self.name}: charger {cp_id!r} did not answer {command} within "
                                f"{self.settings.command_timeout_s}s") from None
        except ConnectionClosed:
            raise LinkError(f"{self.name}: charger {cp_id!r} disconnected before answering {command}") from None
        except OCPPError as exc:
            raise CommandRefused(f"{self.name}: charger {cp_id!r} answered {command} with CALLERROR "
                                 f"{exc.code}: {exc.description}") from None
        check_answer(self.name, cp_id, command, answer)
