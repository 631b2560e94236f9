"""A tiny HTTP/1.1 server on asyncio streams, for devices that push to us (plate cameras, access
controllers). No framework: the agent stays lean.

Supports what those devices send: Content-Length bodies, keep-alive, ``Expect: 100-continue``.
Limits protect the box: headers over `max_header` bytes get 431, bodies over `max_body` 413,
chunked uploads 501, malformed requests 400 (and the connection is closed). A handler that raises
gets a 500 - the device will re-send, which is what we want when the record was not taken.

`gate(headers, peer)`, when given, is asked after the request head and BEFORE the body is read:
a Response it returns (a 401/403 to an unauthenticated sender) is sent at once and the connection
closed, so nobody unauthenticated can make the box read megabytes of body.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Awaitable, Callable

__all__ = ["Request", "Response", "HttpServer", "Handler"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]      # lower-case names
    body: bytes
    peer: str = ""


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
                 idle_timeout_s: float = 60.0, name: str = "http", gate: Gate | None = None) -> None:
        self.handler = handler
        self.gate = gate
        self.max_header = max_header
        self.max_body = max_body
        self.idle_timeout_s = idle_timeout_s
        self.name = name
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> "HttpServer":
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

    async def _read_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Request | None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_timeout_s)
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise _BadRequest(400, "request head cut short") from None
            return None
        except asyncio.LimitOverrunError:
            raise _BadRequest(431, "request head too large") from None
        except asyncio.TimeoutError:
            return None
        try:
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
        except ValueError:
            raise _BadRequest(400, "malformed request line") from None
        if not version.startswith("HTTP/1.") or not method.isalpha():
            raise _BadRequest(400, f"unsupported request line {lines[0][:60]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _BadRequest(400, f"malformed header line {line[:60]!r}")
            headers[name.lower()] = value.strip()
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
        return Request(method.upper(), path, query, headers, body, peer_text)

    @staticmethod
    def _encode(resp: Response, close: bool) -> bytes:
        try:
            reason = HTTPStatus(resp.status).phrase
        except ValueError:
            reason = "Status"
        head = [f"HTTP/1.1 {resp.status} {reason}", f"Content-Length: {len(resp.body)}",
                f"Content-Type: {resp.content_type}", f"Connection: {'close' if close else 'keep-alive'}"]
        head += [f"{k}: {v}" for k, v in resp.headers]
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + resp.body

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._conns.add(writer)
        try:
            while True:
                try:
                    req = await self._read_request(reader, writer)
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
                try:
                    resp = await self.handler(req)
                except Exception:  # the device gets a 500 and re-sends; we keep the traceback
                    log.exception("%s: handler failed on %s %s", self.name, req.method, req.path)
                    resp = Response(500, b"internal error", "text/plain")
                close = req.headers.get("connection", "").lower() == "close"
                writer.write(self._encode(resp, close))
                await writer.drain()
                if close:
                    return
        except (ConnectionError, OSError):
            return
        finally:
            self._conns.discard(writer)
            self._tasks.discard(task)
            writer.close()
