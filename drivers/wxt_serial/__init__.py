"""Vaisala WXT530 weather transmitter on its own serial line, ASCII or NMEA 0183.

    settings.py  WxtSerialSettings + parse     codec.py  ASCII composite messages (0R0)
    driver.py    WxtSerialDriver (pyserial)          nmea.py   NMEA 0183 sentences
    sim.py       a WXT530 on a pty
"""

from __future__ import annotations

from typing import Any

from drivers.kind import BuildContext, DeviceKind
from drivers.wxt_serial.settings import COMMANDS, WxtSerialSettings, parse


def build(dev: WxtSerialSettings, ctx: BuildContext) -> Any:
    from drivers.wxt_serial.driver import WxtSerialDriver

    return WxtSerialDriver(dev)


def simulators() -> dict[str, Any]:
    from drivers.wxt_serial.sim_cli import command

    return {"wxt-serial": command}


KIND = DeviceKind(
    name="wxt_serial", summary="Vaisala WXT530 on its own serial line (ASCII or NMEA)",
    parse=parse, build=build, commands=COMMANDS, serial_port=lambda dev: dev.port, simulators=simulators,
    firmware_refusal=(
        'the WXT ASCII protocol has no firmware transfer: the station is reflashed with its '
        "maker's service tool, which devices.md does not describe"))
