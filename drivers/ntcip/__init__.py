"""NTCIP 1202 actuated signal controller over SNMP (pysnmp).

    settings.py  NtcipSettings + parse        mib.py  the 1202 objects, points <-> OIDs
    driver.py    NtcipDriver                  sim.py  an SNMP agent playing a controller
"""

from __future__ import annotations

from typing import Any

from drivers.kind import BuildContext, DeviceKind, SignalPlan
from drivers.ntcip.settings import COMMANDS, NtcipSettings, parse


def build(dev: NtcipSettings, ctx: BuildContext) -> Any:
    from drivers.ntcip.driver import NtcipDriver

    return NtcipDriver(dev)


def simulators() -> dict[str, Any]:
    from drivers.ntcip.sim_cli import command

    return {"ntcip": command}


KIND = DeviceKind(name="ntcip", summary="NTCIP 1202 signal controller over SNMP",
                  parse=parse, build=build, commands=COMMANDS, simulators=simulators,
                  signal_plan=SignalPlan(point="coord_pattern", command="set_pattern", argument="pattern"),
    firmware_refusal=(
        'NTCIP 1202 objects cover timing and status, not firmware: a junction controller is '
        "reflashed on site with its maker's tool, and devices.md describes no remote procedure"))
