"""BodyCap as a pure ASGI unit: the app behind it never sees a refused request."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from fleet_server.api.limits import BodyCap
from fleet_server.errors import FleetError


async def _run(headers: list[tuple[bytes, bytes]], chunks: list[bytes],
               limit: int = 10) -> tuple[int, list[bytes], int]:
    seen: list[bytes] = []
    served = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal served
        served += 1
        while True:
            message = await receive()
            seen.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        await JSONResponse({"ok": True})(scope, receive, send)

    def refuse(scope: Any, exc: FleetError) -> JSONResponse:
        return JSONResponse({"error": exc.code}, status_code=413 if exc.code == "batch_too_large" else 400)

    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    read = 0

    async def receive() -> dict[str, Any]:
        nonlocal read
        read += 1
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    status: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    scope = {"type": "http", "path": "/x", "headers": headers, "method": "POST"}
    await BodyCap(app, refuse=refuse, default=limit)(scope, receive, send)
    return status[0], seen if served else [], read


async def test_declared_length_over_the_limit_is_refused_unread() -> None:
    assert await _run([(b"content-length", b"11")], [b"x" * 11]) == (413, [], 0)


async def test_malformed_or_conflicting_content_length_is_400() -> None:
    assert (await _run([(b"content-length", b"1x")], [b"x"]))[0] == 400
    assert (await _run([(b"content-length", b"1"), (b"content-length", b"2")], [b"x"]))[0] == 400


async def test_chunked_is_refused_as_soon_as_it_passes_the_limit_and_replayed_when_not() -> None:
    chunked = [(b"transfer-encoding", b"chunked")]
    assert await _run(chunked, [b"x" * 6, b"x" * 6, b"x" * 6]) == (413, [], 2)
    assert await _run(chunked, [b"x" * 5, b"y" * 5]) == (200, [b"x" * 5, b"y" * 5], 2)


async def test_within_the_limit_and_bodiless_requests_pass_untouched() -> None:
    assert await _run([(b"content-length", b"10")], [b"x" * 10]) == (200, [b"x" * 10], 1)
    assert await _run([], [b""]) == (200, [b""], 1)
