"""`quanedge sim plate-camera`: the simulator's command (options checked here; the simulator
itself, drivers/plate_camera/sim.py, is imported only when the command runs)."""

from __future__ import annotations

from typing import Any

import typer

from drivers.sim_support import _check_port, _Control, _fail, _http_url, _int, _redact, _run, _serve

__all__ = ["command"]


DEFAULT_PLATES = ["鲁A12345", "鲁A88888", "鲁A90001", "京C11111", "鲁B00000", "苏E5F678"]


def command(
    push_url: str | None = typer.Option(None, "--push-url",
                                           help="Where the camera POSTs plate results (the agent's receiver); "
                                                "http://SERIAL:SECRET@host:port/ sends the camera's secret "
                                                "(HTTP Basic)."),
    heartbeat_url: str | None = typer.Option(None, "--heartbeat-url", help="Heartbeat URL (default: --push-url)."),
    heartbeat_s: float = typer.Option(5.0, "--heartbeat-s", help="Seconds between heartbeats (0 = none)."),
    serialno: str = typer.Option("fe71e106-57263272", help="Camera serial number sent with every push."),
    interval: float = typer.Option(10.0, "--interval", help="Mean seconds between cars (0 = only on --control)."),
    plate: list[str] = typer.Option(DEFAULT_PLATES, "--plate", help="Plates the cars carry; repeat for several."),
    timeout_s: float = typer.Option(1.0, "--timeout-s", help="HTTP timeout of a push."),
    seed: int = typer.Option(0, help="Traffic seed (same seed, same cars in the same order)."),
    control: int | None = typer.Option(None, "--control", help="Action port (JSON lines; 0 = any free)."),
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

        from drivers.plate_camera.sim import PlateCameraSim

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
