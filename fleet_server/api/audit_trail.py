"""The audit trail: every state-changing call on the user-facing API lands in the audit log.

`AuditMiddleware` is a pure ASGI middleware placed OUTSIDE `AuthMiddleware`, so it sees every
POST / PUT / PATCH / DELETE under the user-facing paths (`auth.is_user_facing`), including the
ones refused 401 before their body was read, 403 by a role check, or 4xx / 5xx by the route.
Routes added later are audited without code of their own.

One entry per call: who (principal and role, "anonymous" without a valid token), the route's
name as action, the path called as target, the query and the JSON body the route read (bounded,
and with every secret-looking key redacted: tokens, passwords, credentials; the Authorization
header is never looked at), the client address, the time, the status, "ok" / "refused" /
"failed", and the error code of a refusal. The entry is written before the response is released
to the client, so a call the client saw answered is in the log. A log write that fails is logged
and counted (`quanedge_audit_write_failures_total`); it does not undo or fail the call.

Calls without a valid token cost an outsider nothing, and every entry is a durable write on the
store's one connection (which telemetry needs too), so they are recorded at most
`ANONYMOUS_PER_MINUTE` per source address a minute; the rest are counted
(`quanedge_audit_suppressed_total`) and the source's next recorded entry says how many were left
out (`"suppressed_before": n` in its parameters).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from anyio import to_thread
from fastapi.routing import iter_route_contexts
from prometheus_client import Counter
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleet_server.access import AuditEntry
from fleet_server.api.auth import is_user_facing, principal_of, route_path
from fleet_server.errors import FleetError

if TYPE_CHECKING:
    from fleet_server.api.deps import FleetState

__all__ = ["AuditMiddleware", "summarize"]

log = logging.getLogger(__name__)

_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ANONYMOUS_PER_MINUTE = 60   # recorded refusals without a valid token, per source address
_TRACKED_SOURCES = 10_000   # memory bound of the per-source windows
_SECRET = re.compile(r"token|secret|passw|passphrase|credential|api_?key|authoriz|private", re.IGNORECASE)
_KEEP_BODY = 64 * 1024      # request body bytes kept for the parameters (more: recorded as truncated)
_MAX_PARAMS = 2000          # characters of the stored parameters JSON
_MAX_TEXT = 200
_MAX_ITEMS = 20
_MAX_DEPTH = 4
REDACTED = "[redacted]"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def summarize(query: bytes, body: bytes | None, body_size: int, suppressed: int = 0) -> str:
    """The stored `parameters`: {"query": {...}, "body": ...}, bounded and with secrets redacted.

    `body` is None when the route never read it (a refusal before routing); a body that is not
    JSON, or larger than what was kept, is recorded by its size only. `suppressed`: anonymous
    calls from the same source left out of the log just before this one."""
    out: dict[str, Any] = {"suppressed_before": suppressed} if suppressed else {}
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    if pairs:
        out["query"] = _bounded({k: v for k, v in pairs[:_MAX_ITEMS]}, 0)
    if body is not None and body_size:
        try:
            if body_size > len(body):
                raise ValueError("truncated")
            out["body"] = _bounded(json.loads(body), 0)
        except (ValueError, RecursionError):   # not JSON, cut short, or nested beyond the parser
            out["body_bytes"] = body_size
    text = json.dumps(out, ensure_ascii=False, separators=(",", ":"))
    if len(text) > _MAX_PARAMS:
        keys = sorted(out["body"])[:_MAX_ITEMS] if isinstance(out.get("body"), dict) else []
        text = json.dumps({"truncated": True, "chars": len(text), "body_keys": keys}, ensure_ascii=False)
    return text


def _bounded(value: Any, depth: int) -> Any:
    if isinstance(value, dict):
        if depth >= _MAX_DEPTH:
            return f"{{{len(value)} keys}}"
        items = list(value.items())
        out = {str(k)[:_MAX_TEXT]: REDACTED if _SECRET.search(str(k)) else _bounded(v, depth + 1)
               for k, v in items[:_MAX_ITEMS]}
        if len(items) > _MAX_ITEMS:
            out["..."] = f"{len(items) - _MAX_ITEMS} more keys"
        return out
    if isinstance(value, list):
        if depth >= _MAX_DEPTH:
            return f"[{len(value)} items]"
        kept = [_bounded(v, depth + 1) for v in value[:_MAX_ITEMS]]
        return kept + ([f"... {len(value) - _MAX_ITEMS} more"] if len(value) > _MAX_ITEMS else [])
    if isinstance(value, str):
        text = value.encode("utf-8", "replace").decode("utf-8")   # no lone surrogates reach the store
        return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + f"... ({len(text)} chars)"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        return f"<integer of {len(str(abs(value)))} digits>"
    return value


class _Call:
    """What one audited call did: the body bytes the route read, the response status and error."""

    def __init__(self) -> None:
        self.body: bytearray | None = None
        self.body_size = 0
        self.status = 500
        self.error = ""

    def read(self, chunk: bytes) -> None:
        if self.body is None:
            self.body = bytearray()
        self.body_size += len(chunk)
        if len(self.body) < _KEEP_BODY:
            self.body += chunk[: _KEEP_BODY - len(self.body)]

    def answered(self, status: int, first_chunk: bytes) -> None:
        self.status = status
        if status >= 400:
            self.error = _error_code(first_chunk)


def _error_code(body: bytes) -> str:
    try:
        data = json.loads(body[:8192])
    except ValueError:
        return ""
    if isinstance(data, dict):
        if isinstance(data.get("error"), str):
            return str(data["error"])[:64]
        if isinstance(data.get("detail"), list):   # FastAPI's request validation answer
            return "invalid_request"
    return ""


@dataclass
class _Window:
    start: float
    recorded: int = 0
    suppressed: int = 0


class _SourceLimit:
    """At most `per_minute` recorded entries per key in each fixed one-minute window."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.windows: dict[str, _Window] = {}

    def admit(self, key: str, now: float) -> tuple[bool, int]:
        """(record it?, how many were suppressed before it, when it is recorded)."""
        window = self.windows.get(key)
        if window is None:
            if len(self.windows) >= _TRACKED_SOURCES:
                self._forget(now)
            window = self.windows[key] = _Window(now)
        elif now - window.start >= 60.0:   # a new window; the suppressed count carries over
            window.start, window.recorded = now, 0
        if window.recorded >= self.per_minute:
            window.suppressed += 1
            return False, 0
        window.recorded += 1
        suppressed, window.suppressed = window.suppressed, 0
        return True, suppressed

    def _forget(self, now: float) -> None:
        """Drop the windows that ended (or all of them, when none did)."""
        ended = [key for key, w in self.windows.items() if now - w.start >= 60.0]
        for key in ended or list(self.windows):
            del self.windows[key]


def _outcome(status: int) -> str:
    return "ok" if status < 400 else "refused" if status < 500 else "failed"


class AuditMiddleware:
    """Record every state-changing user-facing call (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, state: FleetState, clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.state = state
        self.clock = clock
        self.lost = Counter("quanedge_audit_write_failures_total",
                            "Audit entries that could not be written (the call itself went on)",
                            registry=state.metrics.registry)
        self.suppressed = Counter("quanedge_audit_suppressed_total",
                                  "Calls without a valid token left out of the audit log (per-source limit)",
                                  registry=state.metrics.registry)
        self.anonymous = _SourceLimit(ANONYMOUS_PER_MINUTE)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _CHANGING or not is_user_facing(route_path(scope)):
            await self.app(scope, receive, send)
            return
        call = _Call()
        held: list[Message] = []
        recorded = False

        async def reading() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                call.read(message.get("body", b""))
            return message

        async def answering(message: Message) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start":
                held.append(message)   # released with the first body chunk, once the entry is written
                return
            if not recorded and held:
                call.answered(held[0]["status"], message.get("body", b""))
                recorded = True
                await self._record(scope, call)
                await send(held.pop())
            await send(message)

        try:
            await self.app(scope, reading, answering)
        finally:
            if not recorded:   # the app raised (500) or ended without a response
                await self._record(scope, call)

    async def _record(self, scope: Scope, call: _Call) -> None:
        principal = principal_of(scope)
        client = scope.get("client")
        source = str(client[0]) if client else ""
        now = self.clock()
        suppressed = 0
        if principal is None:
            admitted, suppressed = self.anonymous.admit(source, now)
            if not admitted:
                self.suppressed.inc()
                return
        entry = AuditEntry(
            ts=now, principal=principal.name if principal else "anonymous",
            role=principal.role.value if principal else "", method=scope["method"],
            action=_action(scope), target=_printable(scope["path"]),
            parameters=summarize(scope.get("query_string", b""),
                                 None if call.body is None else bytes(call.body), call.body_size, suppressed),
            source=source, status=call.status, outcome=_outcome(call.status), error=call.error,
        )
        try:
            await to_thread.run_sync(self.state.store.record_audit, entry)
        except FleetError as exc:
            self.lost.inc()
            log.error("audit entry lost (%s %s by %s -> %s): %s", entry.method, entry.target, entry.principal,
                      entry.status, exc)


def _printable(path: str) -> str:
    """The path as stored: control characters and lone surrogates replaced, at most 512 characters."""
    text = _CONTROL.sub("?", path[:512])
    return text.encode("utf-8", "replace").decode("utf-8")


def _action(scope: Scope) -> str:
    """The name of the route that serves this method and path (its endpoint's name); the route of
    the path alone when no route takes the method (405); else "unknown"."""
    partial = "unknown"
    for route in iter_route_contexts(getattr(scope.get("app"), "routes", ())):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return str(getattr(route, "name", "unknown"))
        if match is Match.PARTIAL and partial == "unknown":
            partial = str(getattr(route, "name", "unknown"))
    return partial
