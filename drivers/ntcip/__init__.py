"""NTCIP 1202 actuated signal controller over SNMP (pysnmp).

    settings.py  NtcipDeviceConfig + parse    mib.py  the 1202 objects, points <-> OIDs
    driver.py    NtcipDriver                  sim.py  an SNMP agent playing a controller
"""

from __future__ import annotations

from typing import Any

from drivers.kind import BuildContext, DeviceKind
from drivers.ntcip.settings import COMMANDS, NtcipDeviceConfig, parse


def build(dev: NtcipDeviceConfig, ctx: BuildContext) -> Any:
    from drivers.ntcip.driver import NtcipDriver, NtcipSettings

    return NtcipDriver(dev.name, NtcipSettings(
        host=dev.host, port=dev.port, community=dev.community, write_community=dev.write_community,
        timeout_s=dev.timeout_s, retries=dev.retries, phases=dev.phases, detectors=dev.detectors,
        patterns=dev.patterns, pattern_time_unit=dev.pattern_time_unit, allowed_patterns=dev.allowed_patterns,
        allow_standby=dev.allow_standby, allow_free=dev.allow_free, allow_flash=dev.allow_flash))


def simulators() -> dict[str, Any]:
    from drivers.ntcip.sim_cli import command

    return {"ntcip": command}


KIND = DeviceKind(name="ntcip", summary="NTCIP 1202 signal controller over SNMP",
                  parse=parse, build=build, commands=COMMANDS, simulators=simulators)
