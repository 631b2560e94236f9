"""Command functions for the simulators that are not Modbus: `quanedge sim <model>`.

Each function is a plain typer command (registered by agent/cli.py, or by the small dispatcher
at the bottom: ``python -m hil_tests.sims.cli ntcip --port 0``). Each starts one simulator over
the device's real transport, prints ONE JSON line saying where it serves, and runs until SIGINT
or SIGTERM, then stops the simulator and exits 0.

    wxt-serial         WXT530 ASCII/NMEA on a new pty            {"pty": "/dev/pts/7", "line": "19200 8N1", ...}
    ntcip              NTCIP 1202 controller, SNMP on UDP        {"udp_port": 40161, ...}
    gbt20999           GB/T 20999 controller on TCP              {"tcp_port": 40999, ...}
    plate-camera       plate camera pushing to --push-url        {"push_url": "...", "serialno": ...}
    access-controller  ISAPI access controller on HTTP (digest)  {"url": "http://127.0.0.1:40080", ...}

--control PORT (0 = any free) also opens a fault/action port: JSON lines in, one JSON reply line
out per request ({"ok": true, ...} or {"ok": false, "error": ...}); e.g. {"fault": "silence"},
{"fault": "none"}, {"plate": "鲁A12345"}, {"swipe": "1001", "door": 1}. {"status": true} shows the
simulator's counters. Which actions a simulator takes is in each command's help.

Bad options give one line on stderr naming the option, and exit code 2. Heavy imports (pysnmp,
httpx, the simulators) happen inside the commands so that importing this module stays cheap.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, Optional

import typer

__all__ = ["wxt_serial_command", "ntcip_command", "gbt20999_command", "plate_camera_command",
           "access_controller_command"]

Handler = Callable[[dict], Any]   # returns a dict (or an awaitable of one) merged into the reply


# --- shared helpers --------------------------------------------------------------------------------
def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _check_port(option: str, port: Optional[int]) -> None:
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
                 background: tuple[Callable[[], Awaitable[None]], ...] = ()) -> None:
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

    try:
        asyncio.run(runner())
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        pass


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
        self.port: Optional[int] = None
        self._server: Any = None
        self._writers: set[Any] = set()

    async def start(self, host: str, port: Optional[int]) -> "_Control":
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


def _int(msg: dict, key: str, lo: int, hi: int, default: Optional[int] = None) -> int:
    value = msg.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{key!r} must be an integer {lo}..{hi}, got {value!r}")
    return value


# --- wxt-serial ------------------------------------------------------------------------------------
def wxt_serial_command(
    mode: str = typer.Option("ascii", "--mode", help="ascii (composite 0R0 replies) or nmea (XDR/MWV sentences)."),
    address: str = typer.Option("0", "--address", help="Device address, one character 0-9/A-Z/a-z."),
    baudrate: Optional[int] = typer.Option(None, "--baudrate",
                                           help="Line speed (default: 19200 for ascii, 4800 for nmea)."),
    turnaround_ms: float = typer.Option(20.0, "--turnaround-ms", help="Reply delay after a command."),
    seed: int = typer.Option(0, help="Weather seed (same seed, same weather)."),
    time_factor: float = typer.Option(1.0, "--time-factor", help="Model seconds per wall second."),
    control: Optional[int] = typer.Option(None, "--control", help="Fault-control port (JSON lines; 0 = any free)."),
    host: str = typer.Option("127.0.0.1", help="Address the control port listens on."),
) -> None:
    """Simulated Vaisala WXT530 in ASCII or NMEA mode on a new pty (its path is printed).

    Control actions: {"fault": "none|silence|garbage|corrupt_fields|bad_checksum"}, {"status": true}.
    """
    from hil_tests.sims.wxt_serial import _SPEEDS, Fault, WxtSerialSim

    if mode not in ("ascii", "nmea"):
        _fail(f"--mode must be ascii or nmea, got {mode!r}")
    if len(address) != 1 or not address.isalnum() or not address.isascii():
        _fail(f"--address must be one character 0-9/A-Z/a-z, got {address!r}")
    if baudrate is not None and baudrate not in _SPEEDS.values():
        _fail(f"--baudrate must be one of {', '.join(map(str, sorted(_SPEEDS.values())))}, got {baudrate}")
    if not 0 <= turnaround_ms <= 5000:
        _fail(f"--turnaround-ms must be 0..5000, got {turnaround_ms}")
    _check_time_factor(time_factor)
    _check_port("--control", control)

    async def main(stop: Any) -> None:
        sim = WxtSerialSim(address=address, protocol=mode, baudrate=baudrate, clock=_clock(time_factor),
                           turnaround_s=turnaround_ms / 1000, seed=seed)
        await sim.start()
        ctl = _Control({"fault": _enum_fault(Fault, lambda f: setattr(sim, "fault", f))},
                       lambda: {"fault": sim.fault.value, "requests": len(sim.requests),
                                "polled_mode": sim.polled_mode})
        info = {"device": "wxt530", "protocol": mode, "pty": sim.port, "address": address,
                "line": f"{sim.baudrate} 8N1", "seed": seed}
        await _serve(ctl, host, control, info, stop, sim.stop)

    _run(main)


# --- ntcip -----------------------------------------------------------------------------------------
def ntcip_command(
    port: int = typer.Option(0, "--port", help="UDP port of the SNMP agent (0 = any free; devices use 161)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    community: str = typer.Option("public", help="Read community."),
    write_community: str = typer.Option("private", "--write-community", help="Write (SET) community."),
    pattern: int = typer.Option(1, "--pattern", help="Local (standby) timing pattern: 1, 2 or 3."),
    time_unit: str = typer.Option("s", "--time-unit", help="Pattern cycle/offset unit: s or ds (tenths)."),
    period_s: float = typer.Option(60.0, "--period-s", help="Detector counting period, model seconds."),
    seed: int = typer.Option(0, help="Detector seed (same seed, same counts)."),
    time_factor: float = typer.Option(1.0, "--time-factor", help="Model seconds per wall second."),
    control: Optional[int] = typer.Option(None, "--control", help="Fault-control port (JSON lines; 0 = any free)."),
) -> None:
    """Simulated NTCIP 1202 signal controller: SNMPv1/v2c agent on UDP, 8 phases, 3 patterns.

    Control actions: {"fault": "none|silence|wrong_type"}, {"status": true},
    {"detector": 4, "code": 212} (a fault code instead of the occupancy; "code": null clears it).
    """
    from hil_tests.sims.ntcip import DEFAULT_PATTERNS, NtcipControllerSim

    _check_port("--port", port)
    _check_port("--control", control)
    known = sorted(p.number for p in DEFAULT_PATTERNS)
    if pattern not in known:
        _fail(f"--pattern must be one of {', '.join(map(str, known))}, got {pattern}")
    if time_unit not in ("s", "ds"):
        _fail(f"--time-unit must be s or ds, got {time_unit!r}")
    if not 1 <= period_s <= 3600:
        _fail(f"--period-s must be 1..3600, got {period_s}")
    if not community or not write_community:
        _fail("--community and --write-community must not be empty")
    _check_time_factor(time_factor)

    async def main(stop: Any) -> None:
        sim = NtcipControllerSim(local_pattern=pattern, community=community, write_community=write_community,
                                 time_unit=time_unit, period_s=period_s, clock=_clock(time_factor), seed=seed)

        def fault(msg: dict) -> dict:
            name = msg["fault"] or "none"
            if name not in ("none", "silence", "wrong_type"):
                raise ValueError(f"unknown fault {name!r}; known: none, silence, wrong_type")
            sim.fault = name
            return {"fault": name}

        def detector(msg: dict) -> dict:
            det = _int(msg, "detector", 1, 8)
            if msg.get("code") is None:
                sim.detector_fault.pop(det, None)
            else:
                sim.detector_fault[det] = _int(msg, "code", 201, 255)
            return {"detector_fault": {str(k): v for k, v in sim.detector_fault.items()}}

        await _listen("--port", lambda: sim.start(host, port))
        ctl = _Control({"fault": fault, "detector": detector},
                       lambda: {"fault": sim.fault, "requests": sim.requests, "pattern": sim.pattern,
                                "command": sim.command, "sets": len(sim.sets)})
        info = {"device": "ntcip1202", "host": host, "udp_port": sim.port, "community": community,
                "write_community": write_community, "pattern": pattern, "time_unit": time_unit, "seed": seed}
        await _serve(ctl, host, control, info, stop, sim.stop)

    _run(main)


# --- gbt20999 --------------------------------------------------------------------------------------
def gbt20999_command(
    port: int = typer.Option(0, "--port", help="TCP port (0 = any free)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    controller: int = typer.Option(1, "--controller", help="Controller id (0-65535) in every frame."),
    road: int = typer.Option(1, "--road", help="Road/intersection id (0-255)."),
    plan: int = typer.Option(1, "--plan", help="Plan running at start: 1, 2 or 3."),
    mode: str = typer.Option("local_fixed_cycle", "--mode", help="Run mode at start, by name or number (0x21)."),
    heartbeat_s: float = typer.Option(0.0, "--heartbeat-s", help="Controller heartbeat interval (0 = none)."),
    period_s: float = typer.Option(60.0, "--period-s", help="Detector statistics period, model seconds."),
    seed: int = typer.Option(0, help="Detector seed (same seed, same counts)."),
    time_factor: float = typer.Option(1.0, "--time-factor", help="Model seconds per wall second."),
    control: Optional[int] = typer.Option(None, "--control", help="Fault-control port (JSON lines; 0 = any free)."),
) -> None:
    """Simulated GB/T 20999-2017 signal controller on TCP: stages in real time, plans, detectors.

    Control actions: {"fault": "none|silence|bad_crc|garbage"}, {"drop_connections": true}, {"status": true}.
    """
    from drivers import gbt20999 as g
    from hil_tests.sims.gbt20999 import DEFAULT_PLANS, Fault, GbtControllerSim

    _check_port("--port", port)
    _check_port("--control", control)
    if not 0 <= controller <= 65535:
        _fail(f"--controller must be 0..65535, got {controller}")
    if not 0 <= road <= 255:
        _fail(f"--road must be 0..255, got {road}")
    plans = sorted(p.number for p in DEFAULT_PLANS)
    if plan not in plans:
        _fail(f"--plan must be one of {', '.join(map(str, plans))}, got {plan}")
    by_name = {name: code for code, name in g.MODES.items()}
    try:
        mode_code = by_name[mode] if mode in by_name else int(mode, 0)
    except ValueError:
        mode_code = -1
    if mode_code not in g.MODES:
        _fail(f"--mode must be one of {', '.join(by_name)} (or its number), got {mode!r}")
    if not 0 <= heartbeat_s <= 3600:
        _fail(f"--heartbeat-s must be 0..3600 (0 = none), got {heartbeat_s}")
    if not 1 <= period_s <= 3600:
        _fail(f"--period-s must be 1..3600, got {period_s}")
    _check_time_factor(time_factor)

    async def main(stop: Any) -> None:
        sim = GbtControllerSim(controller=controller, road=road, plan=plan, mode=mode_code, period_s=period_s,
                               heartbeat_s=heartbeat_s or None, clock=_clock(time_factor), seed=seed)

        def drop(msg: dict) -> dict:
            sim.drop_connections()
            return {}

        await _listen("--port", lambda: sim.start(host, port))
        ctl = _Control({"fault": _enum_fault(Fault, lambda f: setattr(sim, "fault", f)), "drop_connections": drop},
                       lambda: {"fault": sim.fault.value, "frames_in": len(sim.frames_in), "plan": sim.plan,
                                "mode": g.MODES.get(sim.mode, sim.mode), "stage": sim.stage_at(sim.clock())})
        info = {"device": "gbt20999", "host": host, "tcp_port": sim.port, "controller": controller, "road": road,
                "plan": plan, "mode": g.MODES[mode_code], "seed": seed}
        await _serve(ctl, host, control, info, stop, sim.stop)

    _run(main)


# --- plate-camera ----------------------------------------------------------------------------------
DEFAULT_PLATES = ["鲁A12345", "鲁A88888", "鲁A90001", "京C11111", "鲁B00000", "苏E5F678"]


def _redact(url: Optional[str]) -> Optional[str]:
    """The URL without the password of its user info (a camera's push secret never goes to stdout)."""
    if url is None or "@" not in url.split("://", 1)[-1].split("/", 1)[0]:
        return url
    scheme, rest = url.split("://", 1)
    userinfo, _, host = rest.partition("@")
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


def _http_url(option: str, url: Optional[str]) -> None:
    if url is not None and not (url.startswith(("http://", "https://")) and len(url.split("://", 1)[1]) > 0):
        _fail(f"{option} must be an http(s) URL, got {url!r}")


def plate_camera_command(
    push_url: Optional[str] = typer.Option(None, "--push-url",
                                           help="Where the camera POSTs plate results (the agent's receiver); "
                                                "http://SERIAL:SECRET@host:port/ sends the camera's secret "
                                                "(HTTP Basic)."),
    heartbeat_url: Optional[str] = typer.Option(None, "--heartbeat-url", help="Heartbeat URL (default: --push-url)."),
    heartbeat_s: float = typer.Option(5.0, "--heartbeat-s", help="Seconds between heartbeats (0 = none)."),
    serialno: str = typer.Option("fe71e106-57263272", help="Camera serial number sent with every push."),
    interval: float = typer.Option(10.0, "--interval", help="Mean seconds between cars (0 = only on --control)."),
    plate: list[str] = typer.Option(DEFAULT_PLATES, "--plate", help="Plates the cars carry; repeat for several."),
    timeout_s: float = typer.Option(1.0, "--timeout-s", help="HTTP timeout of a push."),
    seed: int = typer.Option(0, help="Traffic seed (same seed, same cars in the same order)."),
    control: Optional[int] = typer.Option(None, "--control", help="Action port (JSON lines; 0 = any free)."),
    host: str = typer.Option("127.0.0.1", help="Address the control port listens on."),
) -> None:
    """Simulated plate camera (Vzenith-style HTTP push): cars arrive, results are pushed, kept offline if unanswered.

    Control actions: {"lose_replies": n}, {"push_offline": true}, {"status": true},
    {"plate": "鲁A12345", "confidence": 96} (a car now; "result": opened, refused or offline).
    """
    if push_url is None:
        _fail("--push-url is required: the URL the camera pushes plate results to")
    _http_url("--push-url", push_url)
    _http_url("--heartbeat-url", heartbeat_url)
    if not 0 <= heartbeat_s <= 3600:
        _fail(f"--heartbeat-s must be 0..3600 (0 = none), got {heartbeat_s}")
    if not 0 <= interval <= 86400:
        _fail(f"--interval must be 0..86400 seconds (0 = only on --control), got {interval}")
    if not plate or any(not p.strip() for p in plate):
        _fail("--plate must name at least one non-empty plate")
    if not 0 < timeout_s <= 60:
        _fail(f"--timeout-s must be in (0, 60], got {timeout_s}")
    if not serialno:
        _fail("--serialno must not be empty")
    _check_port("--control", control)

    async def main(stop: Any) -> None:
        import asyncio
        import random

        from hil_tests.sims.plate_camera import PlateCameraSim

        rng = random.Random(seed)
        busy = asyncio.Lock()  # one push at a time, as the camera does (offline records stay in order)
        cam = PlateCameraSim(push_url, serialno=serialno, heartbeat_url=heartbeat_url,
                             heartbeat_s=heartbeat_s or 5.0, timeout_s=timeout_s)

        async def car(number: str, confidence: int) -> str:
            async with busy:
                if cam.offline:  # the camera re-sends what it kept before pushing anything new
                    await cam.push_offline()
                result = await cam.recognise(number, confidence)
            return {True: "opened", False: "refused", None: "offline"}[result]

        async def traffic() -> None:
            while True:
                await asyncio.sleep(interval * rng.uniform(0.5, 1.5))
                await car(rng.choice(plate), rng.randint(85, 99))

        async def on_plate(msg: dict) -> dict:
            number = msg["plate"]
            if not isinstance(number, str) or not number.strip():
                raise ValueError("'plate' must be a non-empty string")
            return {"result": await car(number, _int(msg, "confidence", 0, 100, 96))}

        def lose(msg: dict) -> dict:
            cam.lose_replies = _int(msg, "lose_replies", 0, 9000)
            return {"lose_replies": cam.lose_replies}

        async def push_offline(msg: dict) -> dict:
            async with busy:
                return {"pushed": await cam.push_offline(), "offline": len(cam.offline)}

        ctl = _Control({"plate": on_plate, "lose_replies": lose, "push_offline": push_offline},
                       lambda: {"sent": cam.sent, "opened": len(cam.opened), "offline": len(cam.offline),
                                "heartbeats": cam.heartbeats_sent})
        info = {"device": "plate_camera", "push_url": _redact(push_url), "heartbeat_url": _redact(cam.heartbeat_url),
                "serialno": serialno, "seed": seed}
        await _serve(ctl, host, control, info, stop, cam.close,
                     start=cam.start_heartbeats if heartbeat_s else None, background=(traffic,) if interval else ())

    _run(main)


# --- access-controller -----------------------------------------------------------------------------
def access_controller_command(
    port: int = typer.Option(0, "--port", help="HTTP port (0 = any free; devices use 80)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    username: str = typer.Option("admin", help="Digest username."),
    password: str = typer.Option("hik12345", help="Digest password."),
    doors: int = typer.Option(2, "--doors", help="Number of doors (1-64)."),
    card: list[str] = typer.Option(["1001"], "--card", help="Cards with access; repeat for several."),
    no_permission: list[str] = typer.Option(["2002"], "--no-permission",
                                            help="Known cards without access here; repeat for several."),
    event_url: Optional[str] = typer.Option(None, "--event-url",
                                            help="Where events are pushed (the agent's listener)."),
    open_s: float = typer.Option(5.0, "--open-s", help="Seconds a momentary open keeps the door unlocked."),
    interval: float = typer.Option(0.0, "--interval",
                                   help="Mean seconds between card/face events (0 = only on --control)."),
    seed: int = typer.Option(0, help="Event seed (same seed, same people in the same order)."),
    control: Optional[int] = typer.Option(None, "--control", help="Action port (JSON lines; 0 = any free)."),
) -> None:
    """Simulated access controller (Hikvision ISAPI over HTTP, digest auth): doors, cards, faces, pushed events.

    Control actions: {"swipe": "1001", "door": 1}, {"face": true, "door": 1}, {"status": true},
    {"event_url": "http://..."}, {"repush": true} (send the last event again).
    """
    _check_port("--port", port)
    _check_port("--control", control)
    if not username:
        _fail("--username must not be empty")
    if not 1 <= doors <= 64:
        _fail(f"--doors must be 1..64, got {doors}")
    if not 0 < open_s <= 3600:
        _fail(f"--open-s must be in (0, 3600], got {open_s}")
    if not 0 <= interval <= 86400:
        _fail(f"--interval must be 0..86400 seconds (0 = only on --control), got {interval}")
    _http_url("--event-url", event_url)
    if set(card) & set(no_permission):
        _fail(f"--card and --no-permission share {sorted(set(card) & set(no_permission))}")

    async def main(stop: Any) -> None:
        import asyncio
        import random

        from hil_tests.sims.access_controller import AccessControllerSim

        rng = random.Random(seed)
        sim = AccessControllerSim(username=username, password=password, doors=doors, cards=frozenset(card),
                                  no_permission=frozenset(no_permission), event_url=event_url, open_s=open_s)

        def door_of(msg: dict) -> int:
            return _int(msg, "door", 1, doors, 1)

        async def swipe(msg: dict) -> dict:
            if not isinstance(msg["swipe"], str) or not msg["swipe"]:
                raise ValueError("'swipe' must be a card number (a non-empty string)")
            return {"event": await sim.swipe(msg["swipe"], door_of(msg))}

        async def face(msg: dict) -> dict:
            return {"event": await sim.face(bool(msg["face"]), door_of(msg))}

        def set_url(msg: dict) -> dict:
            url = msg["event_url"]
            if url is not None and not (isinstance(url, str) and url.startswith(("http://", "https://"))):
                raise ValueError(f"'event_url' must be an http(s) URL or null, got {url!r}")
            sim.event_url = url
            return {"event_url": _redact(url)}

        async def repush(msg: dict) -> dict:
            if not sim.pushed:
                raise ValueError("no event to push again yet")
            await sim.repush()
            return {}

        async def people() -> None:
            strangers = [f"9{n:03d}" for n in range(5)]
            while True:
                await asyncio.sleep(interval * rng.uniform(0.5, 1.5))
                door = rng.randint(1, doors)
                kind = rng.random()
                if kind < 0.2:
                    await sim.face(rng.random() < 0.8, door)
                else:
                    pool = card * 6 + list(no_permission) * 2 + strangers
                    await sim.swipe(rng.choice(pool), door)

        await _listen("--port", lambda: sim.start(host, port))
        ctl = _Control({"swipe": swipe, "face": face, "event_url": set_url, "repush": repush},
                       lambda: {"events": len(sim.pushed), "auth_failures": sim.auth_failures,
                                "doors": {str(d): {"lock": s.lock, "state": s.state} for d, s in sim.doors.items()}})
        info = {"device": "access_controller", "url": f"http://{host}:{sim.port}", "host": host,
                "tcp_port": sim.port, "username": username, "doors": doors, "event_url": _redact(event_url), "seed": seed}
        await _serve(ctl, host, control, info, stop, sim.stop, background=(people,) if interval else ())

    _run(main)


COMMANDS: dict[str, Callable[..., None]] = {
    "wxt-serial": wxt_serial_command,
    "ntcip": ntcip_command,
    "gbt20999": gbt20999_command,
    "plate-camera": plate_camera_command,
    "access-controller": access_controller_command,
}


def build_app() -> typer.Typer:
    app = typer.Typer(help="Device simulators on their real transports.", no_args_is_help=True,
                      add_completion=False)
    for name, fn in COMMANDS.items():
        app.command(name)(fn)
    return app


if __name__ == "__main__":
    build_app()()
