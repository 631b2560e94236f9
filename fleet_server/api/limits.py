"""The body cap: a pure ASGI middleware, outermost, so a request body is refused before anything
parses it or checks its credential.

Limits (bytes of request body, per route):
    POST /api/v1/telemetry   settings.max_body_bytes (a telemetry batch; default 16 MiB)
    POST /api/v1/rollouts    ROLLOUT_LIMIT = 8 MiB (its filter may list up to 100,000 box ids)
    everything else          DEFAULT_LIMIT = 64 KiB (enrolment, admin bodies, box reports)

A body whose Content-Length exceeds the limit is answered 413 without reading a byte of it (and a
client that sent `Expect: 100-continue` is never asked for it). A body without Content-Length
(chunked) is read up to the limit before the app sees it and refused as soon as it goes past, so at
most `limit` bytes of it are ever held. A malformed Content-Length is a 400. The refusal is a
FleetError (`BatchTooLarge`, `PayloadError("bad_content_length")`) rendered by the `refuse`
callable the app factory passes in, so the HTTP mapping stays in ONE place (fleet_server.app).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleet_server.errors import BatchTooLarge, FleetError, PayloadError

__all__ = ["DEFAULT_LIMIT", "ROLLOUT_LIMIT", "BodyCap"]

DEFAULT_LIMIT = 64 * 1024
ROLLOUT_LIMIT = 8 * 1024 * 1024


Refuse = Callable[[Scope, FleetError], Response]


class BodyCap:
    """ASGI middleware: `BodyCap(app, refuse=..., limits={"/api/v1/telemetry": n}, default=...)`;
    `limits` maps exact paths to their own cap; `refuse(scope, error)` renders a refusal."""

    def __init__(self, app: ASGIApp, refuse: Refuse, limits: Mapping[str, int] | None = None,
                 default: int = DEFAULT_LIMIT) -> None:
        self.app = app
        self.refuse = refuse
        self.limits = dict(limits or {})
        self.default = default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"], self.default)
        declared = _content_length(scope)
        if declared == -1:
            error: FleetError = PayloadError("bad_content_length", "Content-Length must be a non-negative integer")
            await self.refuse(scope, error)(scope, receive, send)
            return
        if declared is not None:
            if declared > limit:
                error = BatchTooLarge(f"body of {declared} bytes exceeds this route's limit of {limit} bytes")
                await self.refuse(scope, error)(scope, receive, send)
                return
            await self.app(scope, receive, send)  # the server enforces the declared length itself
            return
        if not any(k == b"transfer-encoding" for k, _ in scope["headers"]):
            await self.app(scope, receive, send)  # neither header: HTTP/1.1 has no body (a GET check-in)
            return
        # Chunked: take the body in, up to the limit, before the app sees any of it.
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break  # http.disconnect: hand it on as is
            size += len(message.get("body", b""))
            if size > limit:
                error = BatchTooLarge(f"body exceeds this route's limit of {limit} bytes")
                await self.refuse(scope, error)(scope, _replay(messages, receive), send)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(messages, receive), send)


def _content_length(scope: Scope) -> int | None:
    """The declared length; None when absent; -1 when malformed (or given twice, differently)."""
    values = {v for k, v in scope["headers"] if k == b"content-length"}
    if not values:
        return None
    if len(values) > 1:
        return -1
    text = values.pop()
    return int(text) if text.isdigit() and len(text) <= 18 else -1


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
