"""Modbus RTU/TCP slaves on a shared [[bus]]; the register map is a profile (data, profiles/*.toml).

    settings.py  DeviceConfig + parse      driver.py  ModbusDevice, links (pymodbus)
    profile.py   profiles as data          codec.py   registers <-> values, read planning
    timing.py    the line's timing (t1.5, t3.5, capacity): the one source of Modbus timing
    sim*.py      simulated slaves (every shipped profile) on RTU ptys and TCP; sim_cli.py their commands
"""

from __future__ import annotations

from typing import Any

from drivers.kind import BuildContext, DeviceKind
from drivers.modbus.settings import DeviceConfig, parse


def build(dev: DeviceConfig, ctx: BuildContext) -> Any:
    from drivers.modbus.driver import ModbusDevice

    return ModbusDevice(dev.name, ctx.link(dev.bus), dev.unit, dev.profile)


def simulators() -> dict[str, Any]:
    from drivers.modbus.sim_cli import modbus_command, wxt530_command

    return {"modbus": modbus_command, "wxt530": wxt530_command}


def point_names(dev: DeviceConfig) -> frozenset[str]:
    """The selection, or every point of the profile."""
    return frozenset(dev.points) or frozenset(p.name for p in dev.profile.points)


KIND = DeviceKind(
    name="modbus", summary="Modbus RTU/TCP slave on a [[bus]], register map from a profile",
    parse=parse, build=build, commands=(),  # commands come from the device's profile
    line=lambda dev: dev.bus, owns_open=False, point_names=point_names, simulators=simulators,
    firmware_refusal=(
        'Modbus defines no firmware transfer: the weather stations, rain gauges and air sensors '
        "on a bus are reflashed with their makers' own tools, which devices.md does not describe"))
