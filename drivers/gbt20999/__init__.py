"""GB/T 20999-2017 signal controller over TCP (frames, reports, plan/stage/mode commands).

    settings.py  GbtDeviceConfig + parse    codec.py  frames <-> objects (escaping, CRC)
    driver.py    GbtDriver                  sim.py    a controller on TCP
"""

from __future__ import annotations

from typing import Any

from drivers.gbt20999.settings import COMMANDS, GbtDeviceConfig, parse
from drivers.kind import BuildContext, DeviceKind


def build(dev: GbtDeviceConfig, ctx: BuildContext) -> Any:
    from drivers.gbt20999.driver import GbtDriver, GbtSettings

    return GbtDriver(dev.name, GbtSettings(
        host=dev.host, port=dev.port, centre=dev.centre, controller=dev.controller_id, road=dev.road,
        timeout_s=dev.timeout_s, heartbeat_s=dev.heartbeat_s, detectors=dev.detectors, plans=dev.plans,
        allowed_plans=dev.allowed_plans, allowed_stages=dev.allowed_stages, allowed_modes=dev.allowed_modes),
        on_report=ctx.events(dev.name, drop_when_full=True))


def simulators() -> dict[str, Any]:
    from drivers.gbt20999.sim_cli import command

    return {"gbt20999": command}


KIND = DeviceKind(name="gbt20999", summary="GB/T 20999 signal controller over TCP",
                  parse=parse, build=build, commands=COMMANDS, simulators=simulators)
