"""A minimal HTTP/1.1 keep-alive client for load: thousands of simulated boxes, a few sockets.

httpx costs about a millisecond of CPU per request; a fleet simulator or load generator sharing
two cores with the server under test cannot afford that. This client writes a request, reads
the status line, headers and a Content-Length (or chunked) body, and puts the connection back
in a pool of at most `size` connections. A connection idle for `keepalive_s` (default 4 s, under
uvicorn's 5 s keep-alive timeout) is closed rather than reused, and a request that fails on a
reused connection anyway (the server closed it as the request went out) is retried once on a
fresh one; the status codes are the caller's.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = ["HttpPool", "HttpResult"]


@dataclass(frozen=True, slots=True)
class HttpResult:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class HttpPool:
    def __init__(self, base_url: str, *, size: int = 32, timeout: float = 30.0, keepalive_s: float = 4.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"only plain http://host:port URLs are supported, got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.timeout = timeout
        self.keepalive_s = keepalive_s
        self._host_header = f"{self.host}:{self.port}".encode()
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []  # + when returned
        self._slots = asyncio.Semaphore(size)
        self.requests = 0

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                      body: bytes | None = None) -> HttpResult:
        head = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + self._host_header]
        for name, value in (headers or {}).items():
            head.append(f"{name}: {value}".encode())
        if body is not None:
            head.append(b"Content-Length: %d" % len(body))
        data = b"\r\n".join(head) + b"\r\n\r\n" + (body or b"")
        async with self._slots:
            for attempt in (0, 1):
                conn = self._reuse() if attempt == 0 else None
                reused = conn is not None
                if conn is None:
                    conn = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout)
                try:
                    result, keep = await asyncio.wait_for(self._exchange(conn, data), self.timeout)
                except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    conn[1].close()
                    if reused and attempt == 0:
                        continue
                    raise
                except BaseException:
                    conn[1].close()
                    raise
                if keep:
                    self._idle.append((*conn, time.monotonic()))
                else:
                    conn[1].close()
                self.requests += 1
                return result
        raise AssertionError("unreachable")

    def _reuse(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The most recently returned idle connection not yet idle for `keepalive_s`, or None;
        older ones (the server may be closing them) are closed."""
        oldest = time.monotonic() - self.keepalive_s
        stale = [c for c in self._idle if c[2] < oldest]
        if stale:
            self._idle = [c for c in self._idle if c[2] >= oldest]
            for _, writer, _ in stale:
                writer.close()
        if not self._idle:
            return None
        reader, writer, _ = self._idle.pop()
        return reader, writer

    async def get(self, path: str, headers: dict[str, str] | None = None) -> HttpResult:
        return await self.request("GET", path, headers)

    async def send_json(self, method: str, path: str, payload: Any, headers: dict[str,
                                                                                  str] | None = None) -> HttpResult:
        return await self.request(method, path, {"Content-Type": "application/json", **(headers or {})},
                                  json.dumps(payload).encode())

    @staticmethod
    async def _exchange(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], data: bytes) -> tuple[HttpResult,
                                                                                                       bool]:
        reader, writer = conn
        writer.write(data)
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                chunks.append(chunk[:-2])
            payload = b"".join(chunks)
        else:
            length = int(headers.get("content-length", "0"))
            payload = await reader.readexactly(length) if length else b""
        return HttpResult(status, headers, payload), headers.get("connection", "").lower() != "close"

    async def close(self) -> None:
        while self._idle:
            _, writer, _ = self._idle.pop()
            writer.close()
