"""The `parking` device kind: bay detectors and lot counters on one RS-485 line, and the guidance
signs (LED-485 7-segment displays, Alpha protocol text signs) that show the free spaces.

    settings.py  ParkingSettings + parse           codec.py     Modbus RTU, LED-485 segments, Alpha frames
    guidance.py  free = capacity - occupied -> sign  line.py      the RS-485 line (pyserial + add_reader)
    driver.py    ParkingDriver                       sim.py       the lot on a pty; sim_cli.py its command

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


def _simulators() -> dict[str, Any]:
    from drivers.parking.sim_cli import command

    return {"parking": command}


KIND = DeviceKind(
    name="parking",
    summary="parking bay detectors and lot counters (RS-485) with free-space guidance signs (LED-485, Alpha)",
    parse=parse,
    build=_build,
    commands=COMMANDS,
    serial_port=lambda s: s.port,
    simulators=_simulators,
    firmware_refusal=(
        "bay sensors and signs are reflashed by their makers' own tools or over-the-air services; "
        'devices-city.md gives only the version a sensor reports at start-up'))
