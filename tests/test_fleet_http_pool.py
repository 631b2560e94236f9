"""The load generator's HTTP pool (hil_tests/fleet_http.py) against a server that closes idle
connections, as uvicorn does after its keep-alive timeout: no request is lost to that race."""

from __future__ import annotations

import asyncio

from hil_tests.fleet_http import HttpPool

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def _server(idle_close_s: float) -> tuple[asyncio.Server, list[int]]:
    """Answers every request with 200 "ok"; closes a connection idle for `idle_close_s`.
    Returns the server and a one-item list counting the connections it accepted."""
    accepted = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        try:
            while True:
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), idle_close_s)
                writer.write(RESPONSE)
                await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), accepted


def test_a_connection_the_server_closed_while_idle_costs_a_retry_not_the_request() -> None:
    async def run() -> None:
        server, accepted = await _server(idle_close_s=0.1)
        port = server.sockets[0].getsockname()[1]
        pool = HttpPool(f"http://127.0.0.1:{port}", size=4, timeout=2, keepalive_s=60)  # trusts it too long
        try:
            await asyncio.gather(pool.get("/"), pool.get("/"))   # two connections, both idle now
            assert accepted[0] == 2
            await asyncio.sleep(0.3)          # the server has closed both meanwhile
            assert (await pool.get("/")).body == b"ok"
            assert accepted[0] == 3           # the reused one failed; the retry went on a fresh one
        finally:
            await pool.close()
            server.close()

    asyncio.run(run())


def test_a_connection_idle_past_keepalive_is_not_reused() -> None:
    async def run() -> None:
        server, accepted = await _server(idle_close_s=30)
        port = server.sockets[0].getsockname()[1]
        pool = HttpPool(f"http://127.0.0.1:{port}", size=4, timeout=2, keepalive_s=0.1)
        try:
            await pool.get("/")
            await pool.get("/")
            assert accepted[0] == 1           # reused while fresh
            await asyncio.sleep(0.3)
            await pool.get("/")
            assert accepted[0] == 2           # past keepalive_s: closed, a new one opened
        finally:
            await pool.close()
            server.close()

    asyncio.run(run())
