"""`quanedge sim access-controller`: the simulator's command (options checked here; the simulator
itself, drivers/access_controller/sim.py, is imported only when the command runs)."""

from __future__ import annotations

from typing import Any

import typer

from drivers.sim_support import _check_port, _Control, _fail, _http_url, _int, _listen, _redact, _run, _serve

__all__ = ["command"]


def command(
    port: int = typer.Option(0, "--port", help="HTTP port (0 = any free; devices use 80)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    username: str = typer.Option("admin", help="Digest username."),
    password: str = typer.Option("hik12345", help="Digest password."),
    doors: int = typer.Option(2, "--doors", help="Number of doors (1-64)."),
    card: list[str] = typer.Option(["1001"], "--card", help="Cards with access; repeat for several."),
    no_permission: list[str] = typer.Option(["2002"], "--no-permission",
                                            help="Known cards without access here; repeat for several."),
    event_url: str | None = typer.Option(None, "--event-url",
                                            help="Where events are pushed (the agent's listener)."),
    open_s: float = typer.Option(5.0, "--open-s", help="Seconds a momentary open keeps the door unlocked."),
    interval: float = typer.Option(0.0, "--interval",
                                   help="Mean seconds between card/face events (0 = only on --control)."),
    seed: int = typer.Option(0, help="Event seed (same seed, same people in the same order)."),
    control: int | None = typer.Option(None, "--control", help="Action port (JSON lines; 0 = any free)."),
) -> None:
    """Simulated access controller (Hikvision ISAPI over HTTP, digest auth): doors, cards, faces, pushed events.

    Control actions: {"swipe": "1001", "door": 1}, {"wiegand": "00101101000000001010001000", "door": 1}
    (a reader's raw 26/34-bit frame), {"face": true, "door": 1}, {"status": true},
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

        from drivers.access_controller.sim import AccessControllerSim

        rng = random.Random(seed)
        sim = AccessControllerSim(username=username, password=password, doors=doors, cards=frozenset(card),
                                  no_permission=frozenset(no_permission), event_url=event_url, open_s=open_s)

        def door_of(msg: dict) -> int:
            return _int(msg, "door", 1, doors, 1)

        async def swipe(msg: dict) -> dict:
            if not isinstance(msg["swipe"], str) or not msg["swipe"]:
                raise ValueError("'swipe' must be a card number (a non-empty string)")
            return {"event": await sim.swipe(msg["swipe"], door_of(msg))}

        async def wiegand_frame(msg: dict) -> dict:
            if not isinstance(msg["wiegand"], str):
                raise ValueError("'wiegand' must be a frame of 26 or 34 '0'/'1' characters")
            event = await sim.wiegand(msg["wiegand"], door_of(msg))
            if event is None:
                raise ValueError("frame dropped by the controller (bad length, characters or parity)")
            return {"event": event}

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
        ctl = _Control({"swipe": swipe, "wiegand": wiegand_frame, "face": face, "event_url": set_url, "repush": repush},
                       lambda: {"events": len(sim.pushed), "auth_failures": sim.auth_failures,
                                "bad_frames": sim.bad_frames,
                                "doors": {str(d): {"lock": s.lock, "state": s.state} for d, s in sim.doors.items()}})
        info = {"device": "access_controller", "url": f"http://{host}:{sim.port}", "host": host,
                "tcp_port": sim.port, "username": username, "doors": doors, "event_url": _redact(event_url),
                "seed": seed}
        await _serve(ctl, host, control, info, stop, sim.stop, background=(people,) if interval else ())

    _run(main)
