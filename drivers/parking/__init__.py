"""The `parking` device kind: bay detectors and lot counters on one RS-485 line, and the guidance
signs (LED-485 7-segment displays, Alpha protocol text signs) that show the free spaces.

Imports the settings only; the driver, its serial line and the simulator are imported lazily.
"""

from __future__ import annotations

from typing import Any

from drivers.kind import DeviceKind
from drivers.parking.settings import COMMANDS, ParkingSettings, parse

__all__ = ["KIND"]


def _build(settings: ParkingSettings, ctx: Any) -> Any:
    from drivers.parking.driver import ParkingDriver

    return ParkingDriver(settings)


def _simulator() -> Any:
    import typer

    from drivers.parking.sim import parking_command

    app = typer.Typer(add_completion=False)
    app.command("parking")(parking_command)
    return app


KIND = DeviceKind(
    name="parking",
    summary="parking bay detectors and lot counters (RS-485) with free-space guidance signs (LED-485, Alpha)",
    parse=parse,
    build=_build,
    commands=COMMANDS,
    serial_port=lambda s: s.port,
    simulator=_simulator,
)
