"""The box's one small HTTP/1.1 listener on asyncio streams: the health and control endpoint
(agent.health), the push receivers of plate cameras and access controllers, and the simulators.
No framework: the agent stays lean.

Supports what devices and scrapers send: Content-Length bodies, keep-alive, ``Expect: 100-continue``,
HEAD (headers only). The request head comes from the network: only HTTP/1.0 or HTTP/1.1 and an
absolute path are taken; `strict=True` (the health endpoint) also wants an ASCII head and a Host
header on HTTP/1.1, which device firmware does not always send (push receivers stay lenient,
decoding the head as Latin-1, so no byte can crash them). Limits protect the box:
a head over `max_header` bytes or `max_headers` lines gets 431, bodies over `max_body` 413, chunked
uploads 501, malformed requests 400 (and the connection is closed); a client that opens a connection
and does not finish its first request head within `first_request_timeout_s` gets 408. A handler that
raises gets a 500 - a device will re-send, which is what we want when the record was not taken.

`gate(headers, peer)`, when given, is asked after the request head and BEFORE the body is read:
a Response it returns (a 401/403 to an unauthenticated sender) is sent at once and the connection
closed, so nobody unauthenticated can make the box read megabytes of body.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

__all__ = ["Request", "Response", "HttpServer", "Handler"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]      # lower-case names
    body: bytes
    peer: str = ""               # "host:port" of the sender
    peer_host: str = ""          # its address alone (IPv4 or IPv6)


@dataclass(frozen=True, slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)


Handler = Callable[[Request], Awaitable[Response]]
Gate = Callable[[dict[str, str], str], "Response | None"]


class _BadRequest(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


class _Gated(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class HttpServer:
    def __init__(self, handler: Handler, *, max_header: int = 16_384, max_body: int = 4 << 20,
                 idle_timeout_s: float = 60.0, first_request_timeout_s: float | None = None, max_headers: int = 100,
                 keep_alive: bool = True, strict: bool = False, name: str = "http", gate: Gate | None = None) -> None:
        """`keep_alive=False`: one request per connection (Connection: close on every answer);
        `strict`: an ASCII head and Host on HTTP/1.1 (see the module docstring)."""
        self.handler = handler
        self.strict = strict
        self.keep_alive = keep_alive
        self.gate = gate
        self.max_header = max_header
        self.max_headers = max_headers
        self.max_body = max_body
        self.idle_timeout_s = idle_timeout_s
        self.first_request_timeout_s = first_request_timeout_s
        self.name = name
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> HttpServer:
        self._server = await asyncio.start_server(self._serve, host, port, limit=self.max_header)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._conns):
            writer.close()  # handlers see EOF and end on their own
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=2.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await server.wait_closed()

    async def _read_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            first: bool) -> Request | None:
        timeout = self.first_request_timeout_s if first and self.first_request_timeout_s else self.idle_timeout_s
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise _BadRequest(400, "request head cut short") from None
            return None
        except asyncio.LimitOverrunError:
            raise _BadRequest(431, "request head too large") from None
        except asyncio.TimeoutError:
            if first and self.first_request_timeout_s:
                raise _BadRequest(408, "request timeout") from None
            return None  # an idle keep-alive connection: close it quietly
        try:
            lines = head.decode("ascii" if self.strict else "latin-1").split("\r\n")
        except UnicodeDecodeError:
            raise _BadRequest(400, "non-ASCII bytes in request head") from None
        parts = lines[0].split(" ")
        if len(parts) != 3:
            raise _BadRequest(400, "malformed request line")
        method, target, version = parts
        if version not in ("HTTP/1.0", "HTTP/1.1") or not method.isalpha() or not method.isupper():
            raise _BadRequest(400, f"unsupported request line {lines[0][:60]!r}")
        if not target.startswith("/"):
            raise _BadRequest(400, "request target must be an absolute path")
        if len(lines) - 3 > self.max_headers:
            raise _BadRequest(431, f"more than {self.max_headers} header lines")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip() or " " in name:
                raise _BadRequest(400, f"malformed header line {line[:60]!r}")
            headers[name.lower()] = value.strip()
        if self.strict and version == "HTTP/1.1" and "host" not in headers:
            raise _BadRequest(400, "HTTP/1.1 request without Host header")
        if "transfer-encoding" in headers:
            raise _BadRequest(501, "chunked bodies are not supported; send Content-Length")
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise _BadRequest(400, "Content-Length is not a number") from None
        if length < 0:
            raise _BadRequest(400, "negative Content-Length")
        if length > self.max_body:
            raise _BadRequest(413, f"body of {length} bytes exceeds {self.max_body}")
        peer = writer.get_extra_info("peername")
        peer_text = f"{peer[0]}:{peer[1]}" if peer else ""
        peer_host = str(peer[0]) if peer else ""
        if self.gate is not None:
            refused = self.gate(headers, peer_text)
            if refused is not None:
                raise _Gated(refused)
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            body = await asyncio.wait_for(reader.readexactly(length), self.idle_timeout_s) if length else b""
        except (asyncio.IncompleteReadError, asyncio.TimeoutError):
            raise _BadRequest(400, "body shorter than Content-Length") from None
        if version == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive":
            headers.setdefault("connection", "close")
        path, _, query = target.partition("?")
        return Request(method, path, query, headers, body, peer_text, peer_host)

    @staticmethod
    def _encode(resp: Response, close: bool, head: bool = False) -> bytes:
        try:
            reason = HTTPStatus(resp.status).phrase
        except ValueError:
            reason = "Status"
        lines = [f"HTTP/1.1 {resp.status} {reason}", f"Content-Length: {len(resp.body)}",
                 f"Content-Type: {resp.content_type}", f"Connection: {'close' if close else 'keep-alive'}"]
        lines += [f"{k}: {v}" for k, v in resp.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else resp.body)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._conns.add(writer)
        first = True
        try:
            while True:
                try:
                    req = await self._read_request(reader, writer, first)
                except _BadRequest as bad:
                    writer.write(self._encode(Response(bad.status, str(bad).encode(), "text/plain"), True))
                    await writer.drain()
                    return
                except _Gated as gated:  # refused before the body was read: answer and close
                    writer.write(self._encode(gated.response, True))
                    await writer.drain()
                    return
                if req is None:
                    return
                first = False
                try:
                    resp = await self.handler(req)
                except Exception:  # the device gets a 500 and re-sends; we keep the traceback
                    log.exception("%s: handler failed on %s %s", self.name, req.method, req.path)
                    resp = Response(500, b"internal error", "text/plain")
                close = not self.keep_alive or req.headers.get("connection", "").lower() == "close"
                writer.write(self._encode(resp, close, head=req.method == "HEAD"))
                await writer.drain()
                if close:
                    return
        except (ConnectionError, OSError):
            return
        finally:
            self._conns.discard(writer)
            self._tasks.discard(task)
            writer.close()
