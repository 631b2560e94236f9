"""The telemetry body (codec) and HttpUplink: status mapping through httpx.MockTransport, plus a real
Starlette/uvicorn server and raw sockets for the body on the wire, refused connections and timeouts."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from agent.uplink.base import Uplink
from agent.uplink.codec import encode_batch
from agent.uplink.http import HttpSettings, HttpUplink
from core.errors import ConfigError, UplinkRejected, UplinkUnavailable
from core.reading import Quality, Reading, RecordClass, from_row

uvicorn = pytest.importorskip("uvicorn")  # the fleet extra; tests only
starlette_apps = pytest.importorskip("starlette.applications")
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

TOKEN = "box-token-123"


def make_batch(n: int, start: int = 1) -> list[Reading]:
    return [Reading("ws-1", f"p{i}", i * 0.5, "degC", 1_700_000_000.0 + i, seq=start + i) for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- codec -------------------------------------------------------------------------------------

# Text a reading may carry: valid Unicode (no lone surrogates), no NUL (see core.validate).
clean = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
readings = st.builds(
    Reading,
    device=st.text(clean, min_size=1, max_size=12), point=st.text(clean, min_size=1, max_size=12),
    value=st.none() | st.floats(min_value=-1e300, max_value=1e300), unit=st.text(clean, max_size=6),
    ts=st.floats(min_value=0, max_value=4e9), quality=st.sampled_from(list(Quality)),
    cls=st.sampled_from(list(RecordClass)), text=st.none() | st.text(clean, max_size=20),
    seq=st.integers(min_value=1, max_value=2**53),
)


@hsettings(max_examples=200, deadline=None)
@given(box=st.text(min_size=1, max_size=20), batch=st.lists(readings, max_size=20))
def test_body_round_trips_through_from_row(box: str, batch: list[Reading]) -> None:
    body = encode_batch(box, batch)
    body.decode("ascii")  # non-ASCII text travels \u-escaped
    decoded = json.loads(body)
    assert decoded["box_id"] == box
    assert [from_row(row) for row in decoded["readings"]] == batch


def test_body_is_compact_and_refuses_what_json_cannot_carry() -> None:
    body = encode_batch("box-1", make_batch(2))
    assert body.startswith(b'{"box_id":"box-1","readings":[[1,') and b" " not in body
    with pytest.raises(ValueError, match=r"row 1 .*Out of range float"):
        encode_batch("b", [*make_batch(1), Reading("d", "p", float("nan"), "u", 1.0, seq=2)])
    with pytest.raises(ValueError, match="without seq: row 0"):
        encode_batch("b", [Reading("d", "p", 1.0, "u", 1.0)])


# -- settings ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, key", [
    ({"server": "fleet.example.org"}, "server"),
    ({"server": "ftp://fleet.example.org"}, "server"),
    ({"server": "https://fleet.example.org/?x=1"}, "server"),
    ({"credential": "  "}, "credential"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"timeout_s": True}, "timeout_s"),
    ({"verify": ""}, "verify"),
])
def test_bad_settings_fail_at_construction(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"\[uplink\.http\.{key}\]"):
        HttpSettings(**{"server": "https://fleet.example.org", "credential": TOKEN, **kwargs})


def test_public_api_is_pinned() -> None:
    from agent.uplink import http
    assert http.__all__ == ["HttpSettings", "HttpUplink", "IngestAck", "TELEMETRY_PATH"]


def test_settings_url_repr_and_missing_ca_bundle(tmp_path: Path) -> None:
    settings = HttpSettings("https://fleet.example.org/base/", TOKEN)
    assert settings.url == "https://fleet.example.org/base/api/v1/telemetry"
    assert TOKEN not in repr(settings)
    with pytest.raises(ConfigError, match="uplink.http.verify"):
        HttpUplink(HttpSettings("https://x", TOKEN, verify=str(tmp_path / "nope.pem")), "box-1")


# -- status mapping (no sockets) ---------------------------------------------------------------

def mock_uplink(handler: Callable[[httpx.Request], httpx.Response]) -> HttpUplink:
    return HttpUplink(HttpSettings("http://fleet.test", TOKEN), "box-1", transport=httpx.MockTransport(handler))


def ack_for(request: httpx.Request) -> dict[str, Any]:
    rows = json.loads(request.content)["readings"]
    return {"accepted": len(rows) - 1, "duplicates": 1, "max_seq": max(r[0] for r in rows)}


async def test_2xx_returns_the_ack_and_sends_the_body_with_auth() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=ack_for(request))

    batch = make_batch(5)
    async with mock_uplink(handler) as up:
        assert isinstance(up, Uplink) and up.name == "http"
        assert await up.send(batch) == {"accepted": 4, "duplicates": 1, "max_seq": 5}
    (request,) = seen
    assert request.method == "POST" and str(request.url) == "http://fleet.test/api/v1/telemetry"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert request.content == encode_batch("box-1", batch)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_transient_statuses_are_unavailable(status: int) -> None:
    async with mock_uplink(lambda r: httpx.Response(status, text="busy", headers={"Retry-After": "7"})) as up:
        with pytest.raises(UplinkUnavailable, match=rf"{status}.*Retry-After: 7.*busy"):
            await up.send(make_batch(2))


@pytest.mark.parametrize("status, body, reason", [
    (401, {"detail": "unknown box credential"}, "unknown box credential"),
    (403, {"detail": "box is revoked"}, "box is revoked"),
    (413, {"detail": "batch too large"}, "batch too large"),
    (422, {"detail": [{"loc": ["body", "readings", 0], "msg": "bad row"}]}, "bad row"),
    (400, "plain text reason", "plain text reason"),
    (404, "", "Not Found"),
])
async def test_refusals_are_rejected_with_the_servers_reason(status: int, body: Any, reason: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body) if isinstance(body, dict) else httpx.Response(status, text=body)

    async with mock_uplink(handler) as up:
        with pytest.raises(UplinkRejected, match=rf"{status}.*{reason}"):
            await up.send(make_batch(2))


@pytest.mark.parametrize("response, match", [
    (httpx.Response(200, text="<html>Welcome to the hotspot</html>"), "captive portal"),
    (httpx.Response(200, json={"ok": True}), "not a telemetry ack"),
    (httpx.Response(200, json={"accepted": 1, "duplicates": 0, "max_seq": 1}), "confirmed 1 new"),
    (httpx.Response(302, headers={"Location": "https://login.example"}), "redirect"),
])
async def test_a_2xx_that_is_not_our_ack_does_not_confirm(response: httpx.Response, match: str) -> None:
    async with mock_uplink(lambda r: response) as up:
        with pytest.raises(UplinkRejected, match=match):
            await up.send(make_batch(3))


async def test_transport_errors_are_unavailable_and_bad_batches_rejected() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("peer closed connection", request=request)

    up = mock_uplink(handler)
    with pytest.raises(RuntimeError):
        await up.send(make_batch(1))
    async with up:
        with pytest.raises(UplinkUnavailable, match="RemoteProtocolError"):
            await up.send(make_batch(1))
        with pytest.raises(UplinkRejected, match="cannot be encoded"):
            await up.send([Reading("d", "p", float("inf"), "u", 1.0, seq=1)])
        assert await up.send([]) == {"accepted": 0, "duplicates": 0, "max_seq": None}
    with pytest.raises(RuntimeError):
        await up.send(make_batch(1))


# -- a real server -----------------------------------------------------------------------------

class FleetStub:
    """A tiny ingest endpoint in the fleet server's shape, run by uvicorn in a thread."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.stored: set[int] = set()
        self.fail_with: int | None = None
        app = starlette_apps.Starlette(routes=[Route("/api/v1/telemetry", self.ingest, methods=["POST"])])
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    async def ingest(self, request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return JSONResponse({"detail": "unknown box credential"}, status_code=401)
        if self.fail_with is not None:
            return JSONResponse({"detail": "database is restarting"}, status_code=self.fail_with)
        body = await request.body()
        self.bodies.append(body)
        seqs = [from_row(row).seq for row in json.loads(body)["readings"]]
        fresh = [s for s in seqs if s not in self.stored]
        self.stored.update(seqs)
        return JSONResponse({"accepted": len(fresh), "duplicates": len(seqs) - len(fresh), "max_seq": max(seqs)})


@pytest.fixture
def fleet() -> Iterator[FleetStub]:
    stub = FleetStub()
    stub.thread.start()
    deadline = time.monotonic() + 10
    while not stub.server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield stub
    stub.server.should_exit = True
    stub.thread.join(10)


async def test_real_server_confirms_dedups_and_refuses(fleet: FleetStub) -> None:
    batch = make_batch(300)
    settings = HttpSettings(f"http://127.0.0.1:{fleet.port}", TOKEN)
    async with HttpUplink(settings, "box-7") as up:
        assert await up.send(batch) == {"accepted": 300, "duplicates": 0, "max_seq": 300}
        # a resend after a lost confirmation is acknowledged as duplicates
        assert await up.send(batch[-10:] + make_batch(5, start=301)) == {
            "accepted": 5, "duplicates": 10, "max_seq": 305}
        fleet.fail_with = 503
        with pytest.raises(UplinkUnavailable, match="503.*database is restarting"):
            await up.send(make_batch(1, start=306))
    assert fleet.bodies[0] == encode_batch("box-7", batch)

    async with HttpUplink(HttpSettings(f"http://127.0.0.1:{fleet.port}", "stolen-token"), "box-7") as up:
        with pytest.raises(UplinkRejected, match="401.*unknown box credential"):
            await up.send(batch)


async def test_refused_connection_is_unavailable_at_once() -> None:
    settings = HttpSettings(f"http://127.0.0.1:{free_port()}", TOKEN, timeout_s=5)
    async with HttpUplink(settings, "box-1") as up:
        started = time.monotonic()
        with pytest.raises(UplinkUnavailable, match="ConnectError"):
            await up.send(make_batch(1))
        assert time.monotonic() - started < 1


async def test_silent_server_times_out_as_unavailable() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with HttpUplink(HttpSettings(f"http://127.0.0.1:{port}", TOKEN, timeout_s=0.3), "box-1") as up:
            started = time.monotonic()
            with pytest.raises(UplinkUnavailable, match="Timeout"):
                await up.send(make_batch(1))
            assert 0.25 < time.monotonic() - started < 2
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
