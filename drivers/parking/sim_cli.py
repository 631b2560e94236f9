"""`quanedge sim parking`: the parking simulator's command (options checked here; the simulator
itself, drivers/parking/sim.py, is imported only when the command runs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from core.errors import QuanedgeError
from drivers.sim_support import _check_port, _Control, _enum_fault, _fail, _int, _run, _serve

__all__ = ["command"]


def command(
    layout: Path | None = typer.Option(None, "--layout", help="TOML file with one parking device's keys "
                                          "(zones, signs, baudrate); default: a demo lot."),
    turnaround_ms: float = typer.Option(5.0, "--turnaround-ms", help="Reply delay after a request."),
    control: int | None = typer.Option(None, "--control", help="Control port (JSON lines; 0 = any free)."),
    host: str = typer.Option("127.0.0.1", help="Address the control port listens on."),
) -> None:
    """Simulated parking line on a new pty: bay detectors, lot counters, LED-485 and Alpha signs.

    Control actions: {"park": "A", "bay": 3}, {"leave": "A", "bay": 3}, {"fault_bay": "A", "bay": 3,
    "code": 255}, {"enter": "B", "count": 1}, {"exit": "B", "count": 1}, {"shows": "sign1"},
    {"power_cycle": true}, {"fault": "none|silence|garbage"}, {"status": true}.
    """
    from drivers.parking.sim import Fault, ParkingSim, load_layout

    if not 0 <= turnaround_ms <= 5000:
        _fail(f"--turnaround-ms must be 0..5000, got {turnaround_ms}")
    _check_port("--control", control)
    try:
        settings = load_layout(layout)
    except (OSError, ValueError, QuanedgeError) as exc:  # TOMLDecodeError is a ValueError; ConfigError ours
        _fail(f"--layout: {exc}")

    async def main(stop: Any) -> None:
        sim = ParkingSim(settings, turnaround_s=turnaround_ms / 1000)
        await sim.start()
        def bay(m: dict[str, Any]) -> int:
            return _int(m, "bay", 1, 125)

        def count(m: dict[str, Any]) -> int:
            return _int(m, "count", 1, 1000, 1)

        def action(do: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], dict[str, Any]]:
            def handle(m: dict[str, Any]) -> dict[str, Any]:
                do(m)
                return {}  # an action answers with an empty object once done
            return handle

        handlers = {
            "park": action(lambda m: sim.park(m["park"], bay(m))),
            "leave": action(lambda m: sim.park(m["leave"], bay(m), 0)),
            "fault_bay": action(lambda m: sim.park(m["fault_bay"], bay(m), _int(m, "code", 2, 0xFFFF))),
            "enter": action(lambda m: sim.pass_gate(m["enter"], entries=count(m))),
            "exit": action(lambda m: sim.pass_gate(m["exit"], exits=count(m))),
            "shows": lambda m: {"shows": sim.shows(m["shows"])},
            "power_cycle": action(lambda m: sim.power_cycle()),
            "fault": _enum_fault(Fault, lambda f: setattr(sim, "fault", f)),
        }
        info = {"device": "parking", "pty": sim.port,
                "line": f"{settings.baudrate} 8{settings.parity}{settings.stopbits}",
                "zones": [z.name for z in settings.zones], "signs": [s.name for s in settings.signs]}
        await _serve(_Control(handlers, sim.status), host, control, info, stop, sim.stop)

    _run(main)
