"""What every simulator command shares: option checks, the ready line, SIGINT/SIGTERM handling, and
the JSON-lines control port (`--control PORT`).

A simulator command starts one simulated device on its real transport, prints ONE JSON line saying
where it serves (with `control_port`), and runs until SIGINT or SIGTERM. Bad options give one line
on stderr naming the option, and exit code 2. The control port takes JSON lines, one action per
request ({"fault": "silence"}, {"status": true}, ...), and answers {"ok": true, ...} or
{"ok": false, "error": ...}.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NoReturn

import typer

Handler = Callable[[dict], Any]   # returns a dict (or an awaitable of one) merged into the reply


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _check_port(option: str, port: int | None) -> None:
    if port is not None and not 0 <= port <= 65535:
        _fail(f"{option} must be 0..65535 (0 = any free port), got {port}")


def _check_time_factor(factor: float) -> None:
    if not 0 < factor <= 1_000_000:
        _fail(f"--time-factor must be > 0 and <= 1000000 (model seconds per wall second), got {factor}")


def _clock(factor: float) -> Callable[[], float]:
    """Wall-clock time, running `factor` times faster from now on (1 = real time)."""
    import time

    if factor == 1:
        return time.time
    t0, m0 = time.time(), time.monotonic()
    return lambda: t0 + (time.monotonic() - m0) * factor


def _ready(info: dict[str, Any]) -> None:
    print(json.dumps(info), flush=True)


async def _serve(ctl: Any, host: str, control: int | None, info: dict[str, Any], stop: Any,
                 stop_sim: Callable[[], Awaitable[None]], *, start: Callable[[], Awaitable[Any]] | None = None,
                 background: tuple[Callable[[], Coroutine[Any, Any, None]], ...] = ()) -> None:
    """Open the control port, run `start`, start the `background` loops, print the ready line (with
    control_port) and run until `stop`; then, whatever happened, cancel the loops and close the
    control port and the simulator."""
    import asyncio

    tasks: list[asyncio.Task] = []
    try:
        await ctl.start(host, control)
        if start is not None:
            await start()
        tasks = [asyncio.create_task(loop(), name=loop.__name__) for loop in background]
        _ready({**info, "control_port": ctl.port})
        await stop.wait()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await ctl.stop()
        await stop_sim()


def _run(main: Callable[[Any], Awaitable[None]]) -> None:
    """asyncio.run(main(stop)) where `stop` (an asyncio.Event) is set by SIGINT or SIGTERM."""
    import asyncio
    import signal

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C while stopping
        asyncio.run(runner())


async def _listen(option: str, start: Callable[[], Awaitable[Any]]) -> Any:
    """Start a server; a bind failure is a bad option (exit 2) naming `option`."""
    try:
        return await start()
    except OSError as exc:
        _fail(f"{option}: cannot listen: {exc.strerror or exc}")


class _Control:
    """JSON-lines control port: each request names one action (a key of `handlers`)."""

    def __init__(self, handlers: dict[str, Handler], status: Callable[[], dict]) -> None:
        self.handlers = {**handlers, "status": lambda msg: status()}
        self.port: int | None = None
        self._server: Any = None
        self._writers: set[Any] = set()

    async def start(self, host: str, port: int | None) -> _Control:
        import asyncio

        if port is not None:
            self._server = await _listen("--control", lambda: asyncio.start_server(self._serve, host, port))
            self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            await self._server.wait_closed()
            self._server = None

    async def apply(self, line: bytes) -> dict:
        import inspect

        try:
            msg = json.loads(line)
            if not isinstance(msg, dict):
                raise ValueError("a request is a JSON object")
            action = next((k for k in msg if k in self.handlers), None)
            if action is None:
                raise ValueError(f"name one action of: {', '.join(sorted(self.handlers))}")
            result = self.handlers[action](msg)
            if inspect.isawaitable(result):
                result = await result
            return {"ok": True, **(result or {})}
        except (ValueError, TypeError, KeyError) as exc:
            return {"ok": False, "error": str(exc)}

    async def _serve(self, reader: Any, writer: Any) -> None:
        self._writers.add(writer)
        try:
            while line := await reader.readline():
                if line.strip():
                    writer.write(json.dumps(await self.apply(line), ensure_ascii=False).encode() + b"\n")
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


def _enum_fault(enum_cls: Any, setter: Callable[[Any], None]) -> Handler:
    def handle(msg: dict) -> dict:
        name = msg["fault"] if msg["fault"] is not None else "none"
        try:
            value = enum_cls(str(name).lower())
        except ValueError:
            raise ValueError(f"unknown fault {name!r}; known: {', '.join(f.value for f in enum_cls)}") from None
        setter(value)
        return {"fault": value.value}
    return handle


def _int(msg: dict, key: str, lo: int, hi: int, default: int | None = None) -> int:
    value = msg.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{key!r} must be an integer {lo}..{hi}, got {value!r}")
    return value


def _redact(url: str | None) -> str | None:
    """The URL without the password of its user info (a camera's push secret never goes to stdout)."""
    if url is None or "@" not in url.split("://", 1)[-1].split("/", 1)[0]:
        return url
    scheme, rest = url.split("://", 1)
    userinfo, _, host = rest.partition("@")
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


def _http_url(option: str, url: str | None) -> None:
    if url is not None and not (url.startswith(("http://", "https://")) and len(url.split("://", 1)[1]) > 0):
        _fail(f"{option} must be an http(s) URL, got {url!r}")
