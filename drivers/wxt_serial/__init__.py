"""Vaisala WXT530 weather transmitter on its own serial line, ASCII or NMEA 0183.

    settings.py  WxtSerialDeviceConfig + parse     codec.py  ASCII composite messages (0R0)
    driver.py    WxtSerialDriver (pyserial)          nmea.py   NMEA 0183 sentences
    sim.py       a WXT530 on a pty
"""

from __future__ import annotations

from typing import Any

from drivers.kind import BuildContext, DeviceKind
from drivers.wxt_serial.settings import COMMANDS, WxtSerialDeviceConfig, parse


def build(dev: WxtSerialDeviceConfig, ctx: BuildContext) -> Any:
    from drivers.wxt_serial.driver import DEFAULT_POINTS, WxtSerialDriver, WxtSerialSettings

    return WxtSerialDriver(dev.name, WxtSerialSettings(
        port=dev.port, address=dev.address, protocol=dev.mode, baudrate=dev.baudrate, bytesize=dev.bytesize,
        parity=dev.parity, stopbits=dev.stopbits, timeout_s=dev.timeout_s, points=dev.points or DEFAULT_POINTS))


def simulators() -> dict[str, Any]:
    from drivers.wxt_serial.sim_cli import command

    return {"wxt-serial": command}


KIND = DeviceKind(
    name="wxt_serial", summary="Vaisala WXT530 on its own serial line (ASCII or NMEA)",
    parse=parse, build=build, commands=COMMANDS, serial_port=lambda dev: dev.port, simulators=simulators)
